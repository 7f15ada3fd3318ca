"""What the model sees, defined once: training builds its examples with it, inference its prompts,
and a model folder records it, as litgpt saves a checkpoint's prompt style with it.

- Control tokens: one per language (params.control_tokens: "<python>" unless spelled otherwise), first
  of every window and of every prompt, so the model knows the language from position 0. The segment
  stage adds them to the vocabulary and records their ids (corpus.Meta); the finetune records them by
  text in the model's config.json (PromptFormat), and inference reads them from there, never params.
- Windows: a file of n tokens is cut into windows of `length` tokens every `stride` tokens, plus one
  ending at the file's end when the stride does not land there (window_start). A window is
  [control] + its tokens, + eos only where it reaches the file's real end: eos says "the file ends
  here", which a window cut mid-file must not teach. Packed windows cut the stream of whole files,
  each one such window.
- Fill-in-the-middle (Bavarian et al. 2022, StarCoder's tokens):

      PSM: [control, <fim_prefix>] prefix [<fim_suffix>] suffix [<fim_middle>] middle
      SPM: [control, <fim_prefix>, <fim_suffix>] suffix [<fim_middle>] prefix middle

  (SPM as in bigcode's Megatron-LM: prefix and middle stay one run of text). Training ends the middle
  with eos, which teaches the model to stop where the middle meets the suffix; inference prompts in
  PSM up to <fim_middle>, and the model writes the middle, then eos.
- Labels: a window's labels are its ids, but IGNORE (the loss skips it) for the control token
  (nothing before it predicts it), tokens an earlier window already scored, and padding.
- Context budget: a prompt's context gets the model's positions less max_new_tokens and the prompt's
  special tokens, the nearest tokens kept; of a fill-in-the-middle prompt's room the suffix keeps at
  most a quarter (its first tokens: the left context predicts the next tokens best, the right one
  mostly says where to stop), the prefix the rest (its last tokens). A server lets one request
  generate at most half the positions: the other half is the context's.
- Anchored windows (a server's, for its prompt cache): an editor asks at every pause in typing,
  and its client cuts the text before the cursor anew each time, so "the last N tokens" starts
  somewhere else at every keystroke and no two prompts share a prefix. An anchored window starts at
  a line start that stays put while the user types: the first line start of the context (its first
  line may be cut), or, when the text from there does not fit, the earliest anchor line it fits from.
  A context shorter than ANCHOR_MIN_CHARS that fits is kept whole: it is a file's start, not a
  client's window (Continue sends 1,500 characters and more).
  Anchors are chosen by content (a line whose text hashes to 0 mod ANCHOR_EVERY), so that the same
  lines are anchors however the client cut the text before them; the window moves by about
  ANCHOR_EVERY lines at a time (anchored_start), or by a line at a time in a room too small for that.
- Stop patterns: a completion ends at a blank line (the seed cut at "\\n\\n"), a line completion at
  the line's end.
- Prompt formats, config.json's `prompt_format`: CONTROL_IDS (what our finetune trains) is a window's
  start, [control id] + ids(context); none recorded is the seed's published checkpoints, prompted
  with the text "<python> " + context (the space included, as the seed's interact script did).

No torch and no transformers here: completing from an exported model imports this module.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<fim_prefix>", "<fim_middle>", "<fim_suffix>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)
# A PSM prompt that a client lays out itself in text (Tabby, llm-ls): prefix and suffix
SPELLED_PSM = re.compile("{}(.*){}(.*){}".format(*map(re.escape, (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))), re.DOTALL)
CONTROL_TOKEN = re.compile(r"<(\w+)>")  # params' default spelling of a language's control token
IGNORE = -100  # the label of a position the loss skips (transformers' ignore_index)

BLANK_LINE = re.compile(r"\n[ \t]*\n")  # ends a completion
END_OF_LINE = re.compile(r"\n")  # ends a line completion
NEVER = re.compile(r"(?!)")  # never matches: generation runs to eos or max_new_tokens

# config.json's record of the prompt format, and its values
PROMPT_FORMAT_KEY, CONTROL_TOKENS_KEY = "prompt_format", "control_tokens"
CONTROL_IDS, SEED_TEXT = "control_ids", "seed_text"

ANCHOR_MIN_CHARS = 1_000  # a shorter context that fits is kept whole (anchored_start)
ANCHOR_EVERY = 16  # lines: an anchored window moves by about this many lines (anchored_start)
SUFFIX_SHARE = 4  # by default a fill-in-the-middle suffix keeps at most 1/SUFFIX_SHARE of the room
FIM_SPECIALS = 4  # control, <fim_prefix>, <fim_suffix>, <fim_middle>


# ---- windows ----


def window_counts(n_tokens, length: int, stride: int):
    """How many windows files of `n_tokens` tokens have (an int or an array of them): every token is
    covered, a file shorter than `length` is one window, and unlike the seed (`range(len // stride)`
    windows, the last ones ever shorter) no window is a fragment of the window before it."""
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    last = np.maximum(n_tokens - length, 0)
    counts = last // stride + 1 + (last % stride != 0)
    return np.where(n_tokens > 0, counts, 0)


def window_start(n_tokens, k, length: int, stride: int):
    """Where window k of a file of `n_tokens` tokens starts (ints or arrays)."""
    return np.minimum(np.asarray(k, dtype=np.int64) * stride, np.maximum(np.asarray(n_tokens) - length, 0))


def window(tokens: np.ndarray, start: int, length: int, control: int, eos: int) -> np.ndarray:
    """The window of a file's `tokens` at `start`: [control] + up to `length` tokens, + eos when they
    reach the file's end."""
    body = tokens[start : start + length]
    ends = start + length >= len(tokens)
    out = np.empty(1 + len(body) + ends, dtype=np.int64)
    out[0] = control
    out[1 : 1 + len(body)] = body
    if ends:
        out[-1] = eos
    return out


def labels(ids: np.ndarray, scored_before: int = 0) -> np.ndarray:
    """A window's labels: its ids, less the control token and the `scored_before` tokens after it
    that an earlier window scored."""
    out = np.array(ids, dtype=np.int64)
    out[: 1 + scored_before] = IGNORE
    return out


# ---- fill-in-the-middle ----


class FimIds(NamedTuple):
    """The ids of the fill-in-the-middle tokens in a vocabulary, in the order PSM places them."""

    prefix: int
    suffix: int
    middle: int

    @classmethod
    def of(cls, tokenizer) -> FimIds | None:
        """None for a vocabulary without all three (GPT-2's): no fill-in-the-middle."""
        added = tokenizer.get_added_vocab()
        if not all(token in added for token in FIM_TOKENS):
            return None
        return cls(added[FIM_PREFIX], added[FIM_SUFFIX], added[FIM_MIDDLE])


def psm(control: int, fim: FimIds, prefix, suffix, middle=()) -> list[int]:
    return [control, fim.prefix, *prefix, fim.suffix, *suffix, fim.middle, *middle]


def spm(control: int, fim: FimIds, prefix, suffix, middle=()) -> list[int]:
    return [control, fim.prefix, fim.suffix, *suffix, fim.middle, *prefix, *middle]


# ---- prompts and their budget ----


def context_room(positions: int, max_new_tokens: int, infill: bool) -> int:
    """Tokens of context a prompt may have (prefix and suffix together when it fills in the middle)."""
    return positions - max_new_tokens - (FIM_SPECIALS if infill else 1)


def max_new_tokens_limit(positions: int) -> int:
    """The most tokens a server lets one request generate; the other half is the context's."""
    return positions // 2


def prompt(control: int, context: list[int], room: int) -> list[int]:
    """A window's start: the control token and the context's last `room` tokens."""
    return [control] + _last(context, room)


def psm_prompt(
    control: int, fim: FimIds, prefix: list[int], suffix: list[int], room: int, max_suffix_tokens: int | None = None
) -> list[int]:
    """The PSM prompt up to <fim_middle>, prefix and suffix cut to `room` tokens together: the suffix
    keeps at most max_suffix_tokens (default room // SUFFIX_SHARE) of its first tokens, the prefix
    the rest of the room, its last tokens."""
    suffix = suffix[: room // SUFFIX_SHARE if max_suffix_tokens is None else min(max_suffix_tokens, room)]
    return psm(control, fim, _last(prefix, room - len(suffix)), suffix)


def anchored_start(text: str, fits: Callable[[int], bool]) -> int | None:
    """Where an anchored window of `text` starts (the module docstring): the first line start, else
    the earliest anchor from which `fits(start)` (the text from there fits the room), else the
    earliest line start that fits (a room smaller than the anchors' spacing), else None.
    `fits` is monotone (a later start fits whenever an earlier one does): a binary search."""
    if len(text) < ANCHOR_MIN_CHARS and fits(0):
        return 0
    first = text.find("\n") + 1
    if fits(first):
        return first
    starts, anchors, offset = [], [], 0
    for line in text.split("\n"):  # an anchor is a line start chosen by the line's text
        if offset > first:
            starts.append(offset)
            if zlib.crc32(line.encode()) % ANCHOR_EVERY == 0:
                anchors.append(offset)
        offset += len(line) + 1
    # a room too small for the anchors' spacing: the earliest line start that fits (a line at a time)
    return _earliest(anchors, fits) or _earliest(starts, fits)


def _earliest(starts: list[int], fits: Callable[[int], bool]) -> int | None:
    """The first of `starts` that fits (fits is monotone: a binary search), or None."""
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(starts[mid]):
            hi = mid
        else:
            lo = mid + 1
    return starts[lo] if lo < len(starts) else None


def _last(ids: list[int], n: int) -> list[int]:
    return ids[-n:] if n > 0 else []


# ---- the record in a model folder ----


@dataclass(frozen=True)
class PromptFormat:
    """How a model is prompted: the format and its languages' control tokens, by text (a copy of the
    vocabulary resolves them) and recorded, not guessed: a pretrained vocabulary has "<name>" tokens
    of its own (SmolLM2's <filename>, <jupyter_code>), which are no languages."""

    name: str  # CONTROL_IDS or SEED_TEXT
    control_tokens: dict[str, str]  # language -> control token

    @classmethod
    def trained(cls, tokenizer, control_token_ids: dict[str, int]) -> PromptFormat:
        """The format the finetune trains: the data's control tokens (corpus.Meta's ids)."""
        return cls(CONTROL_IDS, {lang: tokenizer.convert_ids_to_tokens(i) for lang, i in control_token_ids.items()})

    def save(self, config) -> None:
        """Into a model's config: save_pretrained writes it to config.json, the ONNX export copies it."""
        setattr(config, PROMPT_FORMAT_KEY, self.name)
        setattr(config, CONTROL_TOKENS_KEY, dict(self.control_tokens))

    @classmethod
    def read(cls, config, tokenizer) -> PromptFormat:
        """The format a model's config records. A folder saved before it was recorded: the seed's
        format when it names none, and as control tokens its added tokens spelled as params spell one
        by default, "<name>", that are no eos, pad or fill-in-the-middle tokens."""
        name = getattr(config, PROMPT_FORMAT_KEY, None) or SEED_TEXT
        controls = getattr(config, CONTROL_TOKENS_KEY, None)
        if controls is None:
            specials = {*tokenizer.special_tokens_map.values(), *FIM_TOKENS}
            controls = {
                match[1]: token
                for token in tokenizer.get_added_vocab()
                if (match := CONTROL_TOKEN.fullmatch(token)) and token not in specials
            }
        return cls(name, dict(controls))

    def control_ids(self, tokenizer) -> dict[str, int]:
        """language -> id, for the control tokens the vocabulary has."""
        added = tokenizer.get_added_vocab()
        return {lang: added[token] for lang, token in self.control_tokens.items() if token in added}

    def fim_ids(self, tokenizer) -> FimIds | None:
        """The FIM tokens' ids, None when this model cannot fill in the middle (the seed's format
        never trained it)."""
        return FimIds.of(tokenizer) if self.name == CONTROL_IDS else None

    def context_text(self, context: str) -> str:
        """The text encoded after the control token: the seed's prompt had a space there."""
        return context if self.name == CONTROL_IDS else " " + context
