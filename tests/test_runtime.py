"""ONNX Runtime completion (autocoder.runtime): an exported model completes as its PyTorch original
does, without importing torch; a stale export is not used, and a truncated one is one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from autocoder.complete import Completer
from autocoder.format import END_OF_LINE
from autocoder.params import ScratchModel
from autocoder.runtime import ONNX_FILE, OnnxRunner, OnnxTokenizer, TorchRunner, export_onnx
from autocoder.train.inputs import scratch_config
from helpers import ROOT, save_tiny_model

BASE = ROOT / "models/autocoder-base"  # its tokenizer: control and FIM tokens
PREFIX = "def total_of(items):\n    total = 0\n    for item in items:\n"
SUFFIX = "\n    return total\n"


def _tiny_llama(out):
    """A tiny random Llama (grouped-query attention) with the shipped base's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    torch.manual_seed(0)
    config = scratch_config(ScratchModel(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, n_positions=128), tokenizer)
    config.prompt_format = "control_ids"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def exported(request, tmp_path_factory):
    """A tiny model folder of each architecture, exported."""
    folder = tmp_path_factory.mktemp(request.param) / "model"
    if request.param == "llama":
        _tiny_llama(folder)
    else:
        save_tiny_model(folder, AutoTokenizer.from_pretrained(BASE))
    export_onnx(folder)
    return folder


@pytest.mark.slow
def test_an_exported_model_completes_as_pytorch_does(exported):
    fast = Completer.from_pretrained(exported)
    slow = Completer.from_pretrained(exported, onnx=False)
    assert isinstance(fast.runner, OnnxRunner) and fast.model is None
    assert isinstance(slow.runner, TorchRunner)
    assert fast.languages == slow.languages and fast.fim_ids == slow.fim_ids
    cases = [
        {"lang": "python", "context": PREFIX, "max_new_tokens": 24},
        {"lang": "java", "context": "public static int max(", "max_new_tokens": 24, "stop": END_OF_LINE},
        {"lang": "python", "context": PREFIX, "suffix": SUFFIX, "max_new_tokens": 16},
        {"lang": "python", "context": "import ", "max_new_tokens": 24, "repetition_penalty": 1.3},
        {"lang": "java", "context": "class A {", "max_new_tokens": 24, "no_repeat_ngram_size": 2},
    ]
    for case in cases:
        if "suffix" in case and not fast.can_infill:  # the GPT-2 one is prompted as the seed's models
            continue
        [a], [b] = fast.complete(**case), slow.complete(**case)
        assert (a.text, a.n_tokens, a.stop, a.token_ids) == (b.text, b.n_tokens, b.stop, b.token_ids), case
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    sampled = fast.complete("python", "def f", max_new_tokens=6, temperature=0.8, top_p=0.9, num=3)
    assert len(sampled) == 3 and all(c.n_tokens >= 1 for c in sampled)


@pytest.mark.slow
def test_the_onnx_tokenizer_answers_as_transformers_does(exported):
    ours, theirs = OnnxTokenizer(exported), AutoTokenizer.from_pretrained(exported)
    text = PREFIX + "    <python> héllo\t\t  x = 1  # ünïcode\n"
    ids = theirs.encode(text)
    assert ours.encode(text) == ids and len(ours) == len(theirs)
    assert ours.decode(ids + [theirs.eos_token_id], skip_special_tokens=True) == theirs.decode(
        ids + [theirs.eos_token_id], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    assert ours.get_added_vocab() == theirs.get_added_vocab()
    assert (ours.eos_token_id, ours.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
    assert set(ours.all_special_tokens) >= {theirs.eos_token, theirs.pad_token}


@pytest.mark.slow
def test_completing_from_an_export_imports_no_torch(exported):
    script = (
        "import sys\nfrom autocoder import cli\n"
        f"cli.main(['complete', '--model', {str(exported)!r}, '--lang', 'python', 'def f', '--max-new-tokens', '4'])\n"
        "print('imported:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("imported: []"), out.stdout


@pytest.mark.slow
def test_a_stale_export_is_not_used(tmp_path, capfd):
    folder = _tiny_llama(tmp_path / "model")
    export_onnx(folder)
    assert isinstance(Completer.from_pretrained(folder).runner, OnnxRunner)
    model = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # tied: the embeddings change too
    model.save_pretrained(folder)  # new weights, the old model.onnx stays
    capfd.readouterr()
    completer = Completer.from_pretrained(folder)
    assert isinstance(completer.runner, TorchRunner) and (folder / ONNX_FILE).exists()
    err = capfd.readouterr().err
    assert "was exported from other weights" in err and f"autocoder export --model {folder}" in err


@pytest.mark.slow
def test_a_truncated_export_is_one_line_naming_it(exported, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    onnx_file = folder / ONNX_FILE
    os.truncate(onnx_file, onnx_file.stat().st_size // 2)
    done = subprocess.run(
        [sys.executable, "-m", "autocoder.cli", "complete", "--model", str(folder), "--lang", "python", "def f"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("autocoder complete: ") and str(onnx_file) in line, line
