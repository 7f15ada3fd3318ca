"""Completion: the stop criterion, the seed's prompt format, `autocoder complete` and `interact`.

Completer calls here pass heal=False: they compare with the seed's way (`generate` on the prompt's
tokens as they are); token healing is tested on the shipped base model (test_base_model.py)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from autocoder import cli
from autocoder.complete import Completer, Decoding, StopCheck, cut_at, decode
from autocoder.errors import UserError
from autocoder.format import (
    BLANK_LINE,
    CONTROL_IDS,
    CONTROL_TOKENS_KEY,
    END_OF_LINE,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    PROMPT_FORMAT_KEY,
    SEED_TEXT,
)
from autocoder.hub import hub_offline
from autocoder.tokenizer import base_tokenizer, load_tokenizer
from helpers import CONTROL_TOKENS, ROOT, record_prompt_format, save_tiny_model

# Greedy paths of the bigram model: "def f" -> "(): return 1" then newlines; "class A" -> " {}" then eos.
CHAINS = [[" f", "()", ":", " return", " 1", "\n", "\n"], [" A", " {", "}", "<|endoftext|>"]]
MAX_NEW = 40


def bigram_model(tokenizer, chains: list[list[str]]) -> GPT2LMHeadModel:
    """A real GPT-2 whose greedy next token depends only on the current token: the blocks add nothing
    to the residual stream, positions are zero, and the (untied) head maps each token's final hidden
    state to its successor in `chains`. Deterministic text without training."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=64,
        n_head=2,
        n_positions=256,
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    setattr(model.config, PROMPT_FORMAT_KEY, CONTROL_IDS)
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.lm_head.weight.zero_()
        hidden = model.transformer.ln_f(model.transformer.wte.weight)
        for chain in chains:
            ids = [
                tokenizer.convert_tokens_to_ids(t) if t in tokenizer.get_added_vocab() else tokenizer.encode(t)[0]
                for t in chain
            ]
            for a, b in zip(ids, ids[1:]):
                model.lm_head.weight[b] += 1.5 * hidden[a] / hidden[a].norm()
    return model


@pytest.fixture(scope="module")
def bigram_dir(tmp_path_factory, gpt2_tokenizer):
    out = tmp_path_factory.mktemp("bigram")
    bigram_model(gpt2_tokenizer, CHAINS).save_pretrained(out)
    gpt2_tokenizer.save_pretrained(out)
    return out


def seed_way(completer: Completer, lang: str, context: str, max_new_tokens: int) -> str:
    """The seed's completion: generate without stopping, decode, cut at the first blank line."""
    prompt = torch.tensor([completer.prompt_ids(lang, context)])
    out = completer.model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=completer.tokenizer.pad_token_id,
    )
    return cut_at(BLANK_LINE, completer.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True))


def test_stop_check_fires_on_the_token_that_completes_a_blank_line(gpt2_tokenizer):
    # generated text -> generated tokens when the stop fires ("x", " =", " 1", "\n", "\n" is 5 tokens)
    rows = {"x = 1\n\ny": 5, "x = 1\n    \nz": 9, "x\ny\nz": None}  # a whitespace-only line is blank too
    check = StopCheck(gpt2_tokenizer, BLANK_LINE)
    for text, expected in rows.items():
        ids = gpt2_tokenizer.encode(text)
        # fed one generated token at a time, as the decoding loop does
        assert next((n for n in range(1, len(ids) + 1) if check(ids[:n]) == "pattern"), None) == expected
    assert check(gpt2_tokenizer.encode("x") + [gpt2_tokenizer.eos_token_id]) == "eos"


def test_greedy_completion_is_the_seed_text_and_stops_at_the_blank_line(bigram_dir):
    completer = Completer.from_pretrained(bigram_dir)
    [completion] = completer.complete("python", "def f", max_new_tokens=MAX_NEW, heal=False)
    assert completion.text == "(): return 1" == seed_way(completer, "python", "def f", MAX_NEW)
    assert completion.stop == "pattern" and completion.n_tokens == 6 < MAX_NEW
    assert -1 < completion.confidence < 0
    [java] = completer.complete("java", "class A", max_new_tokens=MAX_NEW, heal=False)
    assert (java.text, java.stop, java.n_tokens) == (" {}", "eos", 3)
    [line] = completer.complete("python", "def f", max_new_tokens=MAX_NEW, stop=END_OF_LINE, heal=False)
    assert line.text == "(): return 1" and line.n_tokens == 5


def test_without_a_blank_line_it_runs_to_max_new_tokens_like_the_seed(tiny_model_dir):
    completer = Completer.from_pretrained(tiny_model_dir)
    [completion] = completer.complete("java", "class Main {", max_new_tokens=12, heal=False)
    assert completion.stop == "length" and completion.n_tokens == 12
    assert completion.text == seed_way(completer, "java", "class Main {", 12)
    assert math.isfinite(completion.confidence)


def test_seed_checkpoints_get_the_seed_prompt(tiny_model_dir, bigram_dir, gpt2_tokenizer):
    # tiny_model_dir is shaped like the seed's published models: <python>, <java>, <pad>, no prompt_format.
    seed = Completer.from_pretrained(tiny_model_dir)
    assert seed.format.name == SEED_TEXT and set(seed.languages) == {"python", "java"}
    assert seed.prompt_ids("python", "def f") == gpt2_tokenizer.encode("<python> def f")
    ours = Completer.from_pretrained(bigram_dir)
    assert ours.format.name == CONTROL_IDS
    assert ours.prompt_ids("python", "def f") == [
        gpt2_tokenizer.convert_tokens_to_ids("<python>")
    ] + gpt2_tokenizer.encode("def f")


def test_sampling_and_argument_errors(bigram_dir):
    completer = Completer.from_pretrained(bigram_dir)
    completions = completer.complete("python", "def f", max_new_tokens=8, temperature=0.8, top_p=0.9, num=3, heal=False)
    assert len(completions) == 3 and all(math.isfinite(c.confidence) for c in completions)
    # a nucleus smaller than the top token's probability leaves only that token: the greedy text
    nucleus = completer.complete(
        "python", "def f", max_new_tokens=MAX_NEW, temperature=1.0, top_p=1e-6, num=2, heal=False
    )
    assert [c.text for c in nucleus] == ["(): return 1"] * 2
    with pytest.raises(UserError, match="num"):
        completer.complete("python", "def f", num=2, heal=False)
    with pytest.raises(UserError, match="'cobol'.*python, java"):
        completer.complete("cobol", "def f", heal=False)
    with pytest.raises(UserError, match="max_new_tokens"):
        completer.complete("python", "def f", max_new_tokens=400, heal=False)  # the model has 256 positions


def test_long_context_keeps_the_nearest_tokens(bigram_dir):
    completer = Completer.from_pretrained(bigram_dir)
    [completion] = completer.complete("python", "x = 0\n" * 300 + "def f", max_new_tokens=MAX_NEW, heal=False)
    assert completion.text == "(): return 1"


NEVER = re.compile(r"(?!)")  # a stop pattern that never matches: completions run to max_new_tokens


class RecordingStopCheck(StopCheck):
    """StopCheck that keeps the generated ids it saw last (all of them: it sees them after every token)."""

    seen: list[int] = []

    def __call__(self, ids: list[int]) -> str | None:
        RecordingStopCheck.seen = list(ids)
        return super().__call__(ids)


def bigrams(ids: list[int]) -> list[tuple[int, int]]:
    return list(zip(ids, ids[1:]))


def test_no_repeat_ngram_size_keeps_a_looping_model_from_repeating_a_bigram(gpt2_tokenizer, monkeypatch):
    monkeypatch.setattr(decode, "StopCheck", RecordingStopCheck)
    completer = Completer(bigram_model(gpt2_tokenizer, [[" a", " b", " c", " a"]]), gpt2_tokenizer)  # a loop
    prompt = completer.prompt_ids("python", " a")
    [looping] = completer.complete("python", " a", max_new_tokens=12, stop=NEVER, heal=False)
    assert looping.text == " b c a" * 4 and len(set(bigrams(RecordingStopCheck.seen))) == 3
    [guarded] = completer.complete("python", " a", max_new_tokens=12, stop=NEVER, no_repeat_ngram_size=2, heal=False)
    ids = prompt + RecordingStopCheck.seen
    assert guarded.n_tokens == len(RecordingStopCheck.seen) == 12
    assert len(set(bigrams(ids))) == len(bigrams(ids))  # no bigram twice, the prompt's included
    assert guarded.text.startswith(" b c a") and guarded.text != looping.text  # broken where (a, b) would repeat


def hf_way(completer: Completer, lang: str, context: str, max_new_tokens: int, **guard) -> str:
    """transformers' greedy generate with the same prompt and logits processors."""
    prompt = torch.tensor([completer.prompt_ids(lang, context)])
    out = completer.model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=completer.tokenizer.pad_token_id,
        **guard,
    )
    return completer.tokenizer.decode(
        out[0, prompt.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def test_loop_guard_decodes_as_transformers_generate_and_off_is_plain_greedy(tiny_model_dir):
    completer = Completer.from_pretrained(tiny_model_dir)
    plain = completer.complete("java", "class Main {", max_new_tokens=16, stop=NEVER, heal=False)
    off = completer.complete(
        "java",
        "class Main {",
        max_new_tokens=16,
        stop=NEVER,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        heal=False,
    )
    assert off == plain and plain[0].text == hf_way(completer, "java", "class Main {", 16)
    guard = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}
    [guarded] = completer.complete("java", "class Main {", max_new_tokens=16, stop=NEVER, **guard, heal=False)
    assert guarded.text == hf_way(completer, "java", "class Main {", 16, **guard) != plain[0].text
    assert guarded.n_tokens == 16 and math.isfinite(guarded.confidence)
    for bad, what in [
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ]:
        with pytest.raises(UserError, match=what):
            completer.complete("java", "class Main {", **bad, heal=False)


def test_a_suffix_makes_the_psm_prompt_of_fim_training(fim_model_dir, monkeypatch):
    completer = Completer.from_pretrained(fim_model_dir)
    tok = completer.tokenizer
    control, fim_prefix, fim_middle, fim_suffix = tok.convert_tokens_to_ids(
        ["<python>", FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]
    )
    assert completer.can_infill and completer.fim_ids == (fim_prefix, fim_suffix, fim_middle)
    assert set(completer.languages) == {"python", "java"}  # the FIM tokens are no languages
    prompts = []
    forward = completer.model.forward
    monkeypatch.setattr(
        completer.model, "forward", lambda **kw: prompts.append(kw["input_ids"].tolist()) or forward(**kw)
    )

    def prompt_of(prefix: str, suffix: str, **kwargs) -> list[int]:
        prompts.clear()
        [completion] = completer.complete(
            "python", prefix, suffix=suffix, max_new_tokens=4, stop=END_OF_LINE, **kwargs, heal=False
        )
        assert completion.stop in {"pattern", "eos", "length"}
        return prompts[0][0]

    prefix, suffix = "def f(x):\n    y = ", "\n    return y\n"
    assert prompt_of(prefix, suffix) == (
        [control, fim_prefix] + tok.encode(prefix) + [fim_suffix] + tok.encode(suffix) + [fim_middle]
    )
    # Long sides: of 40 tokens of room the suffix keeps its first 10 (a quarter), the prefix its last 30.
    long_prefix, long_suffix = "x = 1\n" * 50, "y = 2\n" * 50
    p_ids, s_ids = tok.encode(long_prefix), tok.encode(long_suffix)
    assert prompt_of(long_prefix, long_suffix, max_context_tokens=40) == (
        [control, fim_prefix] + p_ids[-30:] + [fim_suffix] + s_ids[:10] + [fim_middle]
    )
    # A short suffix leaves the rest of the room to the prefix; max_suffix_tokens moves the split.
    assert prompt_of(long_prefix, suffix, max_context_tokens=40) == (
        [control, fim_prefix]
        + p_ids[-(40 - len(tok.encode(suffix))) :]
        + [fim_suffix]
        + tok.encode(suffix)
        + [fim_middle]
    )
    assert prompt_of(long_prefix, long_suffix, max_context_tokens=40, max_suffix_tokens=25) == (
        [control, fim_prefix] + p_ids[-15:] + [fim_suffix] + s_ids[:25] + [fim_middle]
    )
    # Without max_context_tokens the room is the model's positions less max_new_tokens and 4 special tokens.
    assert len(prompt_of(long_prefix * 3, long_suffix * 3)) == 256 - 4


@pytest.mark.slow
def test_batched_completions_are_the_one_by_one_completions(fim_model_dir):
    completer = Completer.from_pretrained(fim_model_dir)
    contexts = [
        "def f(a, b):\n    return",
        "import os\n",
        "x = 1",
        "class A:\n    def __init__(self):\n        self.x =",
    ]
    requests = [{"lang": "python", "context": c, "stop": END_OF_LINE} for c in contexts]
    requests += [{"lang": "java", "context": "int f(int a) {\n", "suffix": "\n}\n", "stop": END_OF_LINE}]
    requests += [{"lang": "python", "context": "def g():\n    ", "heal": False, "max_context_tokens": 3}]
    for guard in [{}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}]:
        decoding = Decoding(max_new_tokens=12, **guard)
        alone = [completer.complete(max_new_tokens=12, **r, **guard)[0] for r in requests]
        for batch_size in (2, len(requests)):
            batched = completer.complete_many(requests, batch_size, decoding)
            assert [(c.token_ids, c.text, c.stop, c.healed) for c in batched] == [
                (c.token_ids, c.text, c.stop, c.healed) for c in alone
            ]
            assert [c.confidence for c in batched] == pytest.approx([c.confidence for c in alone], abs=1e-4)


def test_the_control_tokens_come_from_the_model_folder_not_from_its_other_tokens(tmp_path):
    # A pretrained vocabulary has "<name>" tokens that are no languages (SmolLM2's <filename>,
    # <jupyter_code>); the finetune writes the control tokens into config.json, and the folder alone says.
    tokenizer = load_tokenizer("gpt2", CONTROL_TOKENS)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<filename>", "<jupyter_code>"]}, replace_extra_special_tokens=False
    )
    folder = save_tiny_model(tmp_path / "model", tokenizer)
    config = json.loads((folder / "config.json").read_text())
    guessed = Completer.from_pretrained(folder)
    assert "filename" in guessed.languages  # a folder without the record: the old guess, fooled
    config |= {PROMPT_FORMAT_KEY: CONTROL_IDS, CONTROL_TOKENS_KEY: {"python": "<python>", "java": "<java>"}}
    (folder / "config.json").write_text(json.dumps(config))
    completer = Completer.from_pretrained(folder)
    assert completer.format.name == CONTROL_IDS and set(completer.languages) == {"python", "java"}
    assert completer.prompt_ids("java", "int")[0] == tokenizer.convert_tokens_to_ids("<java>")


def test_a_model_without_fim_tokens_refuses_a_suffix_in_one_line(tmp_path, tiny_model_dir):
    gpt2 = base_tokenizer("gpt2")  # GPT-2's own vocabulary with the control tokens and no FIM tokens
    gpt2.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS, "pad_token": "<pad>"})
    for completer in [
        Completer.from_pretrained(record_prompt_format(save_tiny_model(tmp_path / "no-fim", gpt2))),
        Completer.from_pretrained(tiny_model_dir),
    ]:  # the seed's prompt format cannot infill
        assert not completer.can_infill
        with pytest.raises(UserError) as error:
            completer.complete("python", "def f(", suffix="):\n    pass\n", heal=False)
        message = str(error.value)
        assert "\n" not in message and "has no fill-in-the-middle tokens" in message
        assert FIM_PREFIX in message and "complete without a suffix" in message
        assert str(completer.name) in message


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autocoder.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=kwargs.pop("cwd"),
        **kwargs,
    )


@pytest.mark.slow
def test_complete_command_in_a_subprocess(bigram_dir, tmp_path):
    done = _cli("complete", "--model", str(bigram_dir), "--lang", "python", "def f", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "(): return 1\n"


@pytest.mark.slow
def test_a_command_line_byte_that_is_not_utf8_is_completed_as_u_fffd(bigram_dir, tmp_path):
    """Python reads the byte as a lone surrogate ("\\udcff"): the Completer encodes it as U+FFFD."""
    args = [sys.executable, "-m", "autocoder.cli", "complete", "--model", str(bigram_dir), "--lang", "python"]
    done = subprocess.run([*args, b"def f\xff("], capture_output=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr.count(b"\n") <= 1, done.stderr
    completer = Completer.from_pretrained(bigram_dir)
    [expected] = completer.complete("python", "def f\ufffd(")
    assert done.stdout.decode() == expected.text + "\n"


def test_a_temperature_near_zero_is_greedy_not_nan(bigram_dir):
    completer = Completer.from_pretrained(bigram_dir)
    # (without healing: the tokens that may re-spell "f" tie in this bigram model, and a tie is a draw)
    [greedy] = completer.complete("python", "def f", max_new_tokens=8, heal=False)
    [cold] = completer.complete("python", "def f", max_new_tokens=8, temperature=1e-50, heal=False)
    assert cold.text == greedy.text and math.isfinite(cold.confidence)


def test_complete_command_json_and_errors(bigram_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: --model is enough
    cli.main(
        [
            "complete",
            "--model",
            str(bigram_dir),
            "--lang",
            "python",
            "--json",
            "--num",
            "2",
            "--temperature",
            "0.7",
            "def f",
        ]
    )
    completions = json.loads(capsys.readouterr().out)["completions"]
    assert len(completions) == 2 and all(math.isfinite(c["confidence"]) and c["n_tokens"] > 0 for c in completions)
    for args, what in [
        (["--lang", "cobol"], "cobol"),
        (["--lang", "python", "--top-p", "0"], "top_p"),
        (["--lang", "python", "--temperature", "nan"], "temperature"),
        (["--lang", "python", "--temperature", "inf"], "temperature"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["complete", "--model", str(bigram_dir), *args, "x"])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and "\n" not in err and what in err


@pytest.mark.slow
def test_interact_reads_stdin_and_keeps_history(bigram_dir, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    done = _cli(
        "interact",
        "--model",
        str(bigram_dir),
        "--lang",
        "python",
        cwd=tmp_path,
        env=env,
        input="def f\nchange_lang\njava\nclass A\nexit\n",
    )
    assert done.returncode == 0, done.stderr
    assert "def f(): return 1\n" in done.stdout and "class A {}\n" in done.stdout
    assert "def f" in (tmp_path / ".autocoder_history").read_text()


@pytest.mark.slow
def test_default_model_without_a_champion_is_one_clear_line(tmp_path, mlflow_db, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(ROOT / "params.yaml", "params.yaml")  # its store: sqlite:///mlruns.db, here
    with pytest.raises(SystemExit) as exit_:
        cli.main(["complete", "--lang", "python", "def f"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "models:/autocoder@champion" in err and "--model" in err


def test_only_safetensors_weights_load(tmp_path, tiny_model_dir, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: never loaded
    with pytest.raises(UserError, match="safetensors"):
        Completer.from_pretrained(tmp_path)


def _refused(folder, tmp_path, **kwargs) -> str:
    """The one line `autocoder complete --model folder` exits with (code 2), nothing on stdout."""
    done = _cli("complete", "--model", str(folder), "--lang", "python", "def f(", cwd=tmp_path, **kwargs)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    return line


@pytest.mark.slow
@pytest.mark.parametrize("auto_map", [True, False], ids=["auto_map", "unknown-model-type"])
def test_a_model_folder_with_code_of_its_own_is_refused_and_its_code_never_runs(tmp_path, gpt2_tokenizer, auto_map):
    """transformers asked on stdout whether to run such a folder's Python, and "y" ran it."""
    folder, marker = tmp_path / "evil", tmp_path / "code-ran"
    gpt2_tokenizer.save_pretrained(folder)
    config = {"model_type": "evil"}
    if auto_map:
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    line = _refused(folder, tmp_path, input="y\n", env=env)
    assert str(folder) in line and ("auto_map" if auto_map else "'evil'") in line, line
    assert not marker.exists()


@pytest.mark.slow
def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path, tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    line = _refused(tiny_model_dir, tmp_path)
    assert line.startswith("autocoder complete: ") and str(weights) in line, line


def _one_line_error(capsys, *args: str) -> str:
    """The message `autocoder complete` exits with (code 2), checked to be one line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["complete", "--lang", "python", *args, "def f"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err and "\n" not in err, err
    return err


def test_a_missing_model_folder_is_said_to_be_missing_not_a_bad_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: --model is enough
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, shown in [
        (str(tmp_path / "nonexistent"), str(tmp_path / "nonexistent")),
        ("./models/best", "models/best"),
        ("../best", "../best"),
        ("runs/7/best", "runs/7/best"),
    ]:
        err = _one_line_error(capsys, "--model", name)
        assert err == f"autocoder complete: model folder {shown} does not exist", err
    (tmp_path / "weights.safetensors").write_bytes(b"")
    assert "weights.safetensors is a file, not a folder" in _one_line_error(capsys, "--model", "weights.safetensors")


def test_a_hub_id_that_cannot_be_loaded_says_it_is_a_hub_id(tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_offline.cache_clear()  # asked again, now that the Hub is off
    request.addfinalizer(hub_offline.cache_clear)
    for name in ["no-such-org/no-such-model", "no-such-model"]:
        err = _one_line_error(capsys, "--model", name)
        assert f"model {name!r}: not a local folder, and cannot load it as a Hub id" in err, err
        assert "unreachable" in err and "does not exist" not in err


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    weights_only = tmp_path / "weights-only"
    shutil.copytree(
        tiny_model_dir,
        weights_only,
        ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "merges*", "special_tokens*"),
    )
    assert (weights_only / "model.safetensors").exists() and not (weights_only / "tokenizer.json").exists()
    err = _one_line_error(capsys, "--model", str(weights_only))
    assert err == (
        f"autocoder complete: model folder {weights_only} has no tokenizer files (tokenizer.json, "
        "tokenizer_config.json or a vocab file); save the model's tokenizer into it "
        "(tokenizer.save_pretrained)"
    ), err
    (tmp_path / "empty").mkdir()
    assert "empty has no tokenizer files" in _one_line_error(capsys, "--model", "empty")


def _wait_until_reading(pid: int, timeout: float = 30) -> None:
    """Until the process waits for the terminal, as it does when a user types: readline writes its
    prompt before it starts waiting, and a SIGINT that lands between the two is only seen at the
    next key (CPython's readline checks signals when its wait is interrupted): no person types
    within those microseconds, a test would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as wchan:
            waiting = wchan.read()
        if any(call in waiting for call in ("poll", "select", "tty_read")):
            return
        time.sleep(0.01)


def _interact_at_a_terminal(model_dir, home, keys: bytes) -> tuple[int, str]:
    """Run `autocoder interact` on a pseudo-terminal as a user at a terminal does: wait for its prompt,
    press `keys` (the terminal turns Ctrl-C into SIGINT, Ctrl-D into the end of input); return the exit
    code and all it wrote."""
    import pty
    import select

    argv = [sys.executable, "-m", "autocoder.cli", "interact", "--model", str(model_dir), "--lang", "python"]
    env = {**os.environ, "HOME": str(home), "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling terminal
        os.chdir(home)
        os.execve(sys.executable, argv, env)
    output, pressed = b"", False
    deadline = time.monotonic() + 600  # torch and the model load first: slow on a busy machine
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not pressed and b"python>>> " in output:
                _wait_until_reading(pid)
                os.write(fd, keys)
                pressed, deadline = True, time.monotonic() + 300
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert pressed, output.decode(errors="replace")
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("key, code", [(b"\x03", 130), (b"\x04", 0)], ids=["ctrl-c", "ctrl-d"])
def test_interact_leaves_on_ctrl_c_and_ctrl_d_without_a_traceback(bigram_dir, tmp_path, key, code):
    exit_code, output = _interact_at_a_terminal(bigram_dir, tmp_path, key)
    assert exit_code == code, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output and "EOFError" not in output, output
    assert output.endswith("\n"), output  # the shell's prompt starts on a line of its own
    assert (tmp_path / ".autocoder_history").exists()


def test_cli_help_shows_defaults(capsys):
    """Every option of `autocoder complete` says what it does, with its default where it has one."""
    with pytest.raises(SystemExit):
        cli.main(["complete", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--max-new-tokens MAX_NEW_TOKENS most tokens generated" in text
    assert "(default: params.yaml's evaluate.max_new_tokens, as the model was evaluated)" in text
    assert "--top-p TOP_P nucleus sampling" in text and "(default: 1.0)" in text
    assert "0 = greedy (default: 0.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
