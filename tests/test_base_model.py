"""The base model shipped in the repository: safetensors only, its tokenizer, and that it completes."""

from __future__ import annotations

import codeop
import json

from transformers import AutoConfig

from autocoder.complete import Completer
from autocoder.format import CONTROL_IDS, FIM_TOKENS
from helpers import ROOT, profile

BASE = ROOT / "models/autocoder-base"
MAX_BYTES = 30 * 2**20


def test_shipped_base_is_safetensors_with_its_tokenizer_and_card():
    files = {p.name: p.stat().st_size for p in BASE.iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    assert sum(files.values()) <= MAX_BYTES
    config = AutoConfig.from_pretrained(BASE)
    assert config.model_type == "llama" and getattr(config, "prompt_format", None) == CONTROL_IDS
    base = profile("autocoder-base")  # the default before the pretrained model
    assert base.finetune.model == base.segment.tokenizer == "models/autocoder-base"
    assert base.pretrained.kind == "none"


def test_shipped_base_completes_and_infills():
    completer = Completer.from_pretrained(BASE)  # safetensors only (use_safetensors=True)
    assert set(completer.languages) == {"python", "java"}
    assert all(token in completer.tokenizer.get_added_vocab() for token in FIM_TOKENS)
    [completion] = completer.complete("python", "def factorial(n):", max_new_tokens=64)
    assert completion.text.strip() and completion.stop in ("pattern", "eos")  # it ends by itself
    # Valid Python as far as it goes: a whole function, or one whose docstring the blank line cut
    # (whether the seed's prompts parse whole is the evaluate stage's samples.python_parse).
    codeop.compile_command("def factorial(n):" + completion.text, symbol="exec")
    [middle] = completer.complete(
        "python", "def add(a, b):\n    return ", suffix="\n\n\nprint(add(1, 2))\n", max_new_tokens=16
    )
    assert middle.text.strip()


def test_cli_fills_in_the_middle_with_the_shipped_base(capsys, tmp_path):
    """The CLI reads the suffix file and completes as the Completer does with that suffix; what the
    suffix changes shows that it reached the prompt."""
    from autocoder.cli import main

    prefix, after = "def total_of(items):\n    total = 0\n    for item in items:\n", "\n    return total\n"
    suffix = tmp_path / "after.py"
    suffix.write_text(after)
    main(
        [
            "complete",
            "--model",
            str(BASE),
            "--lang",
            "python",
            "--suffix-file",
            str(suffix),
            "--json",
            "--max-new-tokens",
            "24",
            "--repetition-penalty",
            "1.0",
            prefix,
        ]
    )
    [completion] = json.loads(capsys.readouterr().out)["completions"]
    completer = Completer.from_pretrained(BASE)
    [infilled] = completer.complete("python", prefix, suffix=after, max_new_tokens=24)
    [left_only] = completer.complete("python", prefix, max_new_tokens=24)
    assert completion["text"].strip() and completion["text"] == infilled.text != left_only.text


def test_token_healing_completes_the_line_after_a_line_break():
    """A context that ends at a line break ends with a bare newline token, which the code tokenizer
    never produces before indented code (it merges the newline with the indentation): unhealed, the
    model starts anywhere but at the indentation; healed, it writes the indented next line."""
    from autocoder.format import END_OF_LINE

    completer = Completer.from_pretrained(BASE)
    context = "def total_of(items):\n    total = 0\n    for item in items:\n"
    [healed] = completer.complete("python", context, max_new_tokens=24, stop=END_OF_LINE)
    [unhealed] = completer.complete("python", context, max_new_tokens=24, stop=END_OF_LINE, heal=False)
    assert healed.text.startswith("        ") and healed.text.strip()
    assert not unhealed.text.startswith("        ")
