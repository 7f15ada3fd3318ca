"""What the model sees in training: packed windows, and the fill-in-the-middle transform.

Packed windows (finetune.windows: packed): the train files, in a seeded order, one after another,
each as its language's control token + its tokens + eos, cut into non-overlapping windows of
`length` tokens. Every token is seen once per epoch and no position is padding. Each window starts
with the control token of the file its first token comes from, so the model always knows the
language from position 0, as at inference ([control] + context).

Fill-in-the-middle, at the context level: after a window is cut, its text (after the control token)
is split at two character positions into prefix, middle and suffix, re-encoded, and laid out in
PSM or SPM order (autocoder.format), the middle ended by eos. The example keeps the window's length:
the suffix is cut at its end when the re-encoding is longer (the window is left as it is if the
suffix cannot absorb it), padding (unscored) fills it when shorter.
"""

from __future__ import annotations

import re

import numpy as np

from autocoder.corpus import Corpus
from autocoder.format import FIM_SPECIALS, IGNORE, FimIds, psm, spm, window


class PackedWindows:
    """Non-overlapping windows of `length` tokens over the packed train files (module docstring)."""

    def __init__(self, corpus: Corpus, rows: np.ndarray, length: int, seed: int):
        meta = corpus.meta
        order = np.random.default_rng(seed).permutation(np.asarray(rows, dtype=np.int64))
        n_tokens = corpus.files["n_tokens"][order].astype(np.int64) + 2  # control token, eos
        self.stream = np.empty(int(n_tokens.sum()), dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(n_tokens)[:-1]])
        controls = np.array([meta.control_token_ids[str(lang)] for lang in corpus.files["language"][order]])
        for row, start, size, control in zip(order, starts, n_tokens, controls):
            tokens = corpus.file_tokens(int(row))  # a whole file is the one window of all its tokens
            self.stream[start : start + size] = window(tokens, 0, len(tokens), control, meta.eos_id)
        # The control token of the file each stream position belongs to.
        self.control_at = np.repeat(controls, n_tokens)
        self.body = length - 1  # tokens of the stream per window, after its control token
        self.length = length

    def __len__(self) -> int:
        return max(len(self.stream) // self.body, 1 if len(self.stream) else 0)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.body
        return np.concatenate([[self.control_at[start]], self.stream[start : start + self.body]])


class FimTransform:
    """Turns a window ([control] + tokens) into a FIM example (module docstring) with probability
    `rate`; the random draws come from the generator passed in, so a seeded caller gets the same
    examples on every run and on resume."""

    def __init__(self, tokenizer, rate: float, spm_rate: float):
        self.tokenizer, self.rate, self.spm_rate = tokenizer, rate, spm_rate
        self.fim = FimIds.of(tokenizer)
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        # Special tokens inside a window (eos and control tokens between packed files) are kept whole:
        # no span boundary falls inside their text.
        specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
        self.special_re = re.compile("|".join(map(re.escape, specials)))

    def __call__(self, window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, labels) of the same length as `window`."""
        if self.rate == 0 or rng.random() >= self.rate:
            return window, window
        text = self.tokenizer.decode(window[1:].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        cut = sorted(self.snap(text, int(x)) for x in rng.integers(0, len(text) + 1, size=2))
        prefix, middle, suffix = (
            self.encode(piece) for piece in (text[: cut[0]], text[cut[0] : cut[1]], text[cut[1] :])
        )
        layout = spm if rng.random() < self.spm_rate else psm
        overflow = len(prefix) + len(middle) + len(suffix) + FIM_SPECIALS + 1 - len(window)  # + 1: eos
        if overflow > 0:
            if overflow > len(suffix):
                return window, window
            suffix = suffix[: len(suffix) - overflow]
        example = np.array(layout(int(window[0]), self.fim, prefix, suffix, [*middle, self.eos_id]), dtype=np.int64)
        pad = len(window) - len(example)  # padding, unscored
        return (
            np.concatenate([example, np.full(pad, self.pad_id, dtype=np.int64)]),
            np.concatenate([example, np.full(pad, IGNORE, dtype=np.int64)]),
        )

    def snap(self, text: str, position: int) -> int:
        """`position`, moved to the start of the special token's text it falls inside, if any."""
        for match in self.special_re.finditer(text):
            if match.start() < position < match.end():
                return match.start()
        return position

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []
