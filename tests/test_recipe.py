"""The from-scratch recipe: the learned code tokenizer, packed windows, fill-in-the-middle, the Llama
scratch model and bf16 on the CPU."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from autocoder.corpus import Corpus
from autocoder.examples import FimTransform, PackedWindows
from autocoder.format import FIM_TOKENS, IGNORE
from autocoder.params import ScratchModel, SplitParams
from autocoder.segment import SourceFile, train_texts
from autocoder.split import file_position
from autocoder.tokenizer import EOS_TOKEN, PAD_TOKEN, has_fim_tokens, learn_bpe, with_control_tokens
from autocoder.train.inputs import scratch_config
from autocoder.train.launch import cpu_has_bf16, resolve_mixed_precision
from helpers import CONTROL_TOKENS, STDLIB, write_corpus

CODE = [(STDLIB / name).read_text() for name in ("bisect.py", "heapq.py", "textwrap.py", "shlex.py", "glob.py")]


@pytest.fixture(scope="module")
def code_tokenizer():
    return with_control_tokens(learn_bpe(CODE, 600), CONTROL_TOKENS)


def test_learned_tokenizer_is_deterministic_and_loads_through_auto_tokenizer(tmp_path, code_tokenizer):
    again = with_control_tokens(learn_bpe(CODE, 600), CONTROL_TOKENS)
    code_tokenizer.save_pretrained(tmp_path / "a")
    again.save_pretrained(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded = AutoTokenizer.from_pretrained(tmp_path / "a")
    text = "def f(x):\n        return x  # <python>\n"
    assert loaded.encode(text) == code_tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert (
        with_control_tokens(learn_bpe(CODE[:3], 600), CONTROL_TOKENS).backend_tokenizer.to_str()
        != code_tokenizer.backend_tokenizer.to_str()
    )


def test_learned_tokenizer_special_tokens_and_ids(code_tokenizer):
    ids = code_tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN, *FIM_TOKENS, *CONTROL_TOKENS])
    assert ids == [0, 1, 2, 3, 4, 600, 601]
    assert code_tokenizer.eos_token_id == 0 and code_tokenizer.pad_token_id == 1
    assert has_fim_tokens(code_tokenizer)
    # Special tokens are one id each in text; no plain text encodes to them.
    assert code_tokenizer.encode("<fim_prefix>x<fim_suffix>") == [2, *code_tokenizer.encode("x"), 4]
    assert not set(code_tokenizer.encode(CODE[0])) & set(ids)


def test_indentation_and_space_runs_are_few_tokens(code_tokenizer):
    for indent in (4, 8):
        ids = code_tokenizer.encode("\n" + " " * indent + "return")
        assert len(ids) <= 2, [code_tokenizer.decode([i]) for i in ids]
    gpt2_like_cost = len("    " * 2)  # one token per space for a tokenizer that never merges spaces
    assert len(code_tokenizer.encode("        ")) < gpt2_like_cost


def test_segment_learns_from_train_files_only(tmp_path):
    sp = SplitParams(dev_ratio=0.5, seed=3)
    files = []
    for i, text in enumerate(CODE):
        (tmp_path / f"{i}.py").write_text(text)
        files.append(SourceFile("src", f"{i}.py", "python", len(text.encode()), str(tmp_path / f"{i}.py")))

    class P:  # the two sections train_texts reads
        split = sp
        segment = type("S", (), {"max_line_chars": 1000})

    learned = list(train_texts(files, P))
    expected = [t for t in CODE if file_position(hashlib.sha256(t.encode()).hexdigest(), 3) >= 0.5]
    assert learned == expected and 0 < len(expected) < len(CODE)


@pytest.fixture
def packed_corpus(tmp_path, code_tokenizer):
    files = {f"py/{i}.py": ("python", text) for i, text in enumerate(CODE)}
    files["java/A.java"] = ("java", "class A {\n    int x = 1;\n}\n")
    segments, split = write_corpus(tmp_path / "data", code_tokenizer, files, dev=set())
    return Corpus(segments)


def test_packed_windows_show_every_token_once_with_the_language_first(packed_corpus):
    corpus = packed_corpus
    rows = np.arange(len(corpus))
    windows = PackedWindows(corpus, rows, length=64, seed=0)
    bodies = [windows[i][1:] for i in range(len(windows))]
    assert all(len(windows[i]) == 64 for i in range(len(windows)))
    stream = np.concatenate(bodies)
    eos, controls = corpus.meta.eos_id, set(corpus.meta.control_token_ids.values())
    docs = np.split(stream, np.flatnonzero(stream == eos) + 1)
    seen = sorted(tuple(doc[1:-1]) for doc in docs if len(doc) and doc[-1] == eos)
    # Every whole file but the cut-off tail is there once, each as control + tokens + eos.
    all_files = sorted(tuple(corpus.file_tokens(r)) for r in rows)
    assert set(seen) <= set(all_files) and len(seen) >= len(all_files) - 1
    for i in range(len(windows)):  # position 0: the language of the file the window starts in
        assert windows[i][0] in controls
    assert len(stream) == len(windows) * 63 <= sum(len(f) + 2 for f in all_files)


def test_fim_rate_zero_is_the_identity(packed_corpus, code_tokenizer):
    window = PackedWindows(packed_corpus, np.arange(len(packed_corpus)), 128, 0)[1]
    ids, labels = FimTransform(code_tokenizer, 0.0, 0.5)(window, np.random.default_rng(0))
    assert ids is window and labels is window


@pytest.mark.parametrize("spm_rate, order", [(0.0, "psm"), (1.0, "spm")])
def test_fim_rebuilds_the_windows_text_in_both_orders(packed_corpus, code_tokenizer, spm_rate, order):
    tok = code_tokenizer
    pre, mid, suf = tok.convert_tokens_to_ids(FIM_TOKENS[0:1] + FIM_TOKENS[1:2] + FIM_TOKENS[2:3])
    windows = PackedWindows(packed_corpus, np.arange(len(packed_corpus)), 128, 0)
    fim = FimTransform(tok, 1.0, spm_rate)
    checked = 0
    for i in range(len(windows)):
        window = windows[i]
        ids, labels = fim(window, np.random.default_rng(i))
        assert len(ids) == len(labels) == len(window) and ids[0] == window[0]
        if ids is window:  # re-encoding overflowed a too-short suffix: left as it was
            continue
        body = ids[1:][labels[1:] != IGNORE].tolist()
        assert body[-1] == tok.eos_token_id
        if order == "psm":
            assert body[0] == pre
            p_end, s_end = body.index(suf), body.index(mid)
            prefix, suffix, middle = body[1:p_end], body[p_end + 1 : s_end], body[s_end + 1 : -1]
        else:
            assert body[:2] == [pre, suf]
            s_end = body.index(mid)
            suffix, prefix_middle = body[2:s_end], body[s_end + 1 : -1]
            prefix, middle = prefix_middle, []
        text = tok.decode(window[1:].tolist(), clean_up_tokenization_spaces=False)
        rebuilt = tok.decode(prefix + middle, clean_up_tokenization_spaces=False)
        suffix_text = tok.decode(suffix, clean_up_tokenization_spaces=False)
        assert text.startswith(rebuilt)
        overflowed = len(ids[labels != IGNORE]) == len(window)
        if not overflowed:  # nothing cut: prefix + middle + suffix is the window's text
            assert rebuilt + suffix_text == text
        else:  # the suffix lost tokens at its end only
            assert fim.encode(text[len(rebuilt) :])[: len(suffix)] == suffix
        checked += 1
    assert checked >= len(windows) // 2


def test_fim_examples_are_seeded(packed_corpus, code_tokenizer):
    window = PackedWindows(packed_corpus, np.arange(len(packed_corpus)), 128, 0)[2]
    fim = FimTransform(code_tokenizer, 0.5, 0.5)
    draws = [fim(window, np.random.default_rng([7, 0, 2]))[0].tolist() for _ in range(2)]
    assert draws[0] == draws[1]


def test_llama_scratch_model_from_params(code_tokenizer, tmp_path):
    config = scratch_config(ScratchModel(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, n_positions=128), code_tokenizer)
    assert isinstance(config, LlamaConfig) and config.tie_word_embeddings
    assert config.intermediate_size == 192 and config.num_key_value_heads == 2
    model = AutoModelForCausalLM.from_config(config)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert model.get_input_embeddings().num_embeddings == len(code_tokenizer)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    ids = torch.tensor([code_tokenizer.encode("def f(x):")])
    assert torch.allclose(loaded(ids).logits, model(ids).logits)
    gpt2 = scratch_config(ScratchModel(architecture="gpt2", n_layer=1, n_embd=32, n_head=2), code_tokenizer)
    assert gpt2.model_type == "gpt2" and gpt2.n_positions == 256


def test_bf16_chosen_on_a_cpu_that_has_it(tmp_path):
    have = tmp_path / "bf16"
    have.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    lack = tmp_path / "none"
    lack.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_has_bf16(str(have)) and not cpu_has_bf16(str(lack)) and not cpu_has_bf16(str(tmp_path / "missing"))
    assert resolve_mixed_precision("no") == "no"  # forced fp32
    if not torch.cuda.is_available():
        assert resolve_mixed_precision("auto") == ("bf16" if cpu_has_bf16() else "no")


def test_this_machines_cpu_is_detected():
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
