"""What the model sees (autocoder.format), one test per rule: training's examples and inference's
prompts are built by the same rules, and a saved model folder reproduces its prompt format."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from autocoder.complete import Completer
from autocoder.corpus import TOKENIZER_DIR, Corpus, split_rows
from autocoder.evaluate.lines import repeats
from autocoder.evaluate.perplexity import dev_perplexity
from autocoder.examples import FimTransform, PackedWindows
from autocoder.format import (
    BLANK_LINE,
    CONTROL_IDS,
    END_OF_LINE,
    IGNORE,
    NEVER,
    PROMPT_FORMAT_KEY,
    SEED_TEXT,
    SPELLED_PSM,
    FimIds,
    PromptFormat,
    context_room,
    labels,
    max_new_tokens_limit,
    psm,
    psm_prompt,
    spm,
    window,
    window_counts,
    window_start,
)
from autocoder.gate import repeats_line_above
from autocoder.params import EvaluateParams, FinetuneParams, ScratchModel, load_params
from autocoder.scoring import DevWindows
from autocoder.train.inputs import build_model, scratch_config
from helpers import ROOT

CONTROL, EOS = 7, 0


def test_a_folder_without_a_recorded_format_is_read_by_the_default_spelling(gpt2_tokenizer):
    params = load_params(ROOT / "params.yaml")
    assert params.control_tokens() == {name: f"<{name}>" for name in params.languages}  # the default
    # a folder saved before the format was recorded (the seed's checkpoints): its added "<name>"
    # tokens that are no eos, pad or FIM tokens, and the seed's text prompt
    legacy = PromptFormat.read(SimpleNamespace(), gpt2_tokenizer)
    assert legacy == PromptFormat(SEED_TEXT, {"python": "<python>", "java": "<java>"})
    assert legacy.fim_ids(gpt2_tokenizer) is None  # the seed's format never trained fill-in-the-middle


def test_a_window_ends_in_eos_only_at_the_files_end(tiny_corpus):
    tokens = np.arange(100, 110)
    assert window(tokens, 0, 4, CONTROL, EOS).tolist() == [CONTROL, 100, 101, 102, 103]  # cut mid-file
    assert window(tokens, 6, 4, CONTROL, EOS).tolist() == [CONTROL, 106, 107, 108, 109, EOS]
    assert window(tokens, 0, 20, CONTROL, EOS).tolist() == [CONTROL, *tokens, EOS]  # a short file: one window
    starts = window_start(10, np.arange(window_counts(10, 4, 3)), 4, 3)
    assert starts.tolist() == [0, 3, 6]  # every 3 tokens, the last one ending at the file's end
    # Sliding and packed windows: an eos stands only where a file ends.
    corpus = Corpus(tiny_corpus[0])
    rows = np.arange(len(corpus))
    file_ends = int(corpus.files["n_tokens"].astype(bool).sum())
    sliding = corpus.windows(rows, 64, 32)
    assert sum(int((sliding[i] == corpus.meta.eos_id).sum()) for i in range(len(sliding))) == file_ends
    stream = PackedWindows(corpus, rows, 64, seed=0).stream
    ends = np.flatnonzero(stream == corpus.meta.eos_id)
    assert len(ends) == file_ends and ends[-1] == len(stream) - 1  # each followed by the next file's control
    assert np.isin(stream[ends[:-1] + 1], list(corpus.meta.control_token_ids.values())).all()


def test_psm_and_spm_layouts():
    fim = FimIds(prefix=10, suffix=11, middle=12)
    assert psm(CONTROL, fim, [1, 2], [3], [4, EOS]) == [CONTROL, 10, 1, 2, 11, 3, 12, 4, EOS]
    assert spm(CONTROL, fim, [1, 2], [3], [4, EOS]) == [CONTROL, 10, 11, 3, 12, 1, 2, 4, EOS]
    assert psm(CONTROL, fim, [1, 2], [3]) == [CONTROL, 10, 1, 2, 11, 3, 12]  # a prompt: the model writes the middle
    spelled = SPELLED_PSM.fullmatch("<fim_prefix>def f(<fim_suffix>)\n<fim_middle>")
    assert spelled.groups() == ("def f(", ")\n")


def test_the_fim_layout_training_builds_is_the_one_inference_prompts_with(tiny_corpus, fim_model_dir):
    completer = Completer.from_pretrained(fim_model_dir)
    tokenizer, fim = completer.tokenizer, completer.fim_ids
    corpus = Corpus(tiny_corpus[0])
    windows = corpus.windows(np.arange(len(corpus)), 96, 96)
    transform = FimTransform(tokenizer, rate=1.0, spm_rate=0.0)  # inference prompts in PSM
    checked = 0
    for i in range(0, len(windows), 3):
        if corpus.meta.eos_id in windows[i]:  # eos is no text a user types: its window is not a prompt's
            continue
        example = transform(windows[i], np.random.default_rng(i))[0].tolist()
        if fim.middle not in example:  # the re-encoded text did not fit: the window as it was
            continue
        at_suffix, at_middle = example.index(fim.suffix), example.index(fim.middle)
        end = example.index(tokenizer.eos_token_id, at_middle)
        prefix, middle = (decode(tokenizer, example[a:b]) for a, b in [(2, at_suffix), (at_middle + 1, end)])
        text = decode(tokenizer, windows[i][1:].tolist())
        assert text.startswith(prefix + middle)
        lang, suffix = windows.language(i), text[len(prefix + middle) :]
        # of the suffix, the first tokens training kept to fit the window
        kept = {"max_suffix_tokens": at_middle - at_suffix - 1, "heal": False}
        prompt = completer.prepare(lang, prefix, max_new_tokens=8, suffix=suffix, **kept).ids
        assert prompt == example[: at_middle + 1]
        assert example[0] == completer.languages[lang]
        checked += 1
    assert checked >= 20


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def test_labels_skip_the_control_token_tokens_scored_before_and_padding(tiny_corpus, gpt2_tokenizer):
    ids = np.arange(10, 16)
    assert labels(ids).tolist() == [IGNORE, 11, 12, 13, 14, 15]
    assert labels(ids, scored_before=2).tolist() == [IGNORE] * 3 + [13, 14, 15]
    # A file's last dev window overlaps the one before it: the overlap is context, not scored again.
    corpus = Corpus(tiny_corpus[0])
    row = int(np.argmax(corpus.files["n_tokens"] > 100))
    n = int(corpus.files["n_tokens"][row])
    dev = DevWindows(corpus.windows(np.array([row]), 64, 64), None, gpt2_tokenizer)
    scored = np.concatenate([dev[i][0][dev[i][1] != IGNORE] for i in range(len(dev))])
    assert scored.tolist() == [*corpus.file_tokens(row).tolist(), corpus.meta.eos_id] and len(scored) == n + 1


def test_the_context_budget():
    assert context_room(256, 8, infill=False) == 256 - 8 - 1  # the control token
    assert context_room(256, 8, infill=True) == 256 - 8 - 4  # and <fim_prefix>, <fim_suffix>, <fim_middle>
    assert max_new_tokens_limit(256) == 128  # a server keeps half the positions for the context
    fim = FimIds(10, 11, 12)
    prefix, suffix = list(range(100, 150)), list(range(200, 250))
    # of 20 tokens of room the suffix keeps its first 5 (a quarter), the prefix its last 15
    assert psm_prompt(CONTROL, fim, prefix, suffix, 20) == psm(CONTROL, fim, prefix[-15:], suffix[:5])
    assert psm_prompt(CONTROL, fim, prefix, suffix, 20, max_suffix_tokens=20) == psm(CONTROL, fim, [], suffix[:20])


def test_the_stop_patterns():
    assert BLANK_LINE.search("x = 1\n    \ny") and not BLANK_LINE.search("x = 1\ny")
    assert END_OF_LINE.search("x = 1\n") and not END_OF_LINE.search("x = 1")
    assert not NEVER.search("\n\n")


def test_repeating_the_line_above_is_one_rule_for_the_gate_and_evaluate(gpt2_tokenizer):
    assert repeats_line_above("    x = 1", "x = 1\r") and not repeats_line_above("", "")
    assert repeats(gpt2_tokenizer, "    x = 1", "x = 1\r")


def test_a_saved_model_folder_reproduces_its_prompt_format(tmp_path, tiny_corpus):
    corpus = Corpus(tiny_corpus[0])
    tokenizer = AutoTokenizer.from_pretrained(corpus.dir / TOKENIZER_DIR)
    ft = FinetuneParams(model="scratch")
    config = scratch_config(ScratchModel(n_layer=1, n_embd=32, n_head=2, n_positions=128), tokenizer)
    model = build_model(ft, config, tokenizer, corpus.meta.control_token_ids)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model/config.json").read_text())[PROMPT_FORMAT_KEY] == CONTROL_IDS
    completer = Completer.from_pretrained(tmp_path / "model")
    assert completer.format == PromptFormat.trained(tokenizer, corpus.meta.control_token_ids)
    assert completer.languages == corpus.meta.control_token_ids
    # Prompted with a file's text, the model sees what training showed it of that file.
    row = int(np.argmax(corpus.files["language"] == "java"))
    tokens = corpus.file_tokens(row)
    text = tokenizer.decode(tokens.tolist(), clean_up_tokenization_spaces=False)
    trained = window(tokens, 0, len(tokens), corpus.meta.control_token_ids["java"], corpus.meta.eos_id)
    assert completer.prompt_ids("java", text) == trained[:-1].tolist()  # all but the eos


@pytest.mark.slow
def test_finetune_and_evaluate_score_dev_files_alike(tiny_corpus, fim_model_dir, gpt2_tokenizer):
    from autocoder.train.loop import evaluate as finetune_dev_score

    corpus = Corpus(tiny_corpus[0])
    dev = split_rows(corpus, tiny_corpus[1], "dev")
    completer = Completer.from_pretrained(fim_model_dir)
    measured, _ = dev_perplexity(completer, corpus, dev, EvaluateParams(perplexity_max_bytes=None))
    windows = corpus.windows(dev, stride=corpus.meta.segment_len)
    dev_set = DevWindows(windows, None, gpt2_tokenizer)
    one_process = SimpleNamespace(  # what the finetune's accelerator answers in a single process
        unwrap_model=lambda model, keep_torch_compile: model,
        process_index=0,
        num_processes=1,
        device=completer.device,
        reduce=lambda totals, op: totals,
    )
    score = finetune_dev_score(one_process, completer.model, dev_set, 4, gpt2_tokenizer.pad_token_id)
    assert score.tokens == measured["dev_tokens"] and score.n_bytes == measured["dev_bytes"]
    assert score.perplexity == pytest.approx(measured["dev_perplexity"], rel=1e-5)
    assert score.bits_per_byte == pytest.approx(measured["dev_bits_per_byte"], rel=1e-5)
