"""Training and dev examples, streamed from the corpus: memory stays flat in the dataset size.

Tokens are a memory map and the window index is O(files) (corpus.Windows); the epoch's shuffled
order is a keyed permutation computed per index, so no array of all windows is ever built either.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from autocoder.corpus import Corpus, Windows
from autocoder.examples import IGNORE, FimTransform


class Permutation:
    """A seeded pseudo-random permutation of range(n) in O(1) memory.

    A 4-round Feistel network over the smallest even bit width covering n is a bijection; values
    that land outside range(n) are walked through it again until they land inside (cycle walking).
    """

    def __init__(self, n: int, key: bytes):
        self.n = n
        self.half = (max(n - 1, 1).bit_length() + 1) // 2
        self.mask = (1 << self.half) - 1
        self.keys = [hashlib.blake2b(key + bytes([r]), digest_size=16).digest() for r in range(4)]

    def _round(self, x: int, key: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(x.to_bytes(8, "little"), key=key, digest_size=8).digest(), "little")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        x = i
        while True:
            left, right = x >> self.half, x & self.mask
            for key in self.keys:
                left, right = right, left ^ (self._round(right, key) & self.mask)
            x = (left << self.half) | right
            if x < self.n:
                return x


class TrainWindows(Dataset):
    """The train windows (sliding corpus.Windows or examples.PackedWindows) in a seeded order that
    changes every epoch (set_epoch, called by accelerate's data loader). An example is (input ids,
    labels): the ids themselves, or a FIM example drawn with a generator seeded by (seed, epoch,
    window), so a resumed run sees the examples an uninterrupted one would."""

    def __init__(self, windows, seed: int, fim: FimTransform | None = None):
        self.windows, self.seed, self.fim = windows, seed, fim
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = Permutation(len(self.windows), f"{self.seed}/{epoch}".encode())

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        w = self.order[i]
        ids = self.windows[w]
        if self.fim is None:
            return ids, ids
        return self.fim(ids, np.random.default_rng([self.seed, self.epoch, w]))


class DevWindows(Dataset):
    """Non-overlapping dev windows (stride = segment_len), at most `limit` of them, evenly spread.

    A file's last window ends at the file's end, so it may overlap the window before it: those
    tokens serve as context but are not scored again (their labels are IGNORE).
    """

    def __init__(self, windows: Windows, limit: int | None, tokenizer=None):
        assert windows.stride == windows.segment_len
        self.windows = windows
        n = len(windows)
        self.picked = np.unique(np.linspace(0, n - 1, min(limit or n, n)).round().astype(np.int64))
        self.tokens_per_byte = self._tokens_per_byte(tokenizer) if tokenizer is not None else math.nan

    def _tokens_per_byte(self, tokenizer) -> float:
        """Scored tokens per UTF-8 byte of their text: turns the dev loss into bits per byte, which
        compares models across tokenizers."""
        n_tokens = n_bytes = 0
        for i in range(len(self)):
            ids, labels = self[i]
            scored = ids[labels != IGNORE][1:]  # the control token is never scored
            n_tokens += len(scored)
            n_bytes += len(tokenizer.decode(scored.tolist(), clean_up_tokenization_spaces=False).encode())
        return n_tokens / max(n_bytes, 1)

    def __len__(self) -> int:
        return len(self.picked)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        w = int(self.picked[i])
        j, start, _ = self.windows.locate(w)
        ids = self.windows[w]
        labels = ids.copy()
        scored_before = (w - int(self.windows.cum[j])) * self.windows.stride  # where this window would start
        labels[1 : 1 + scored_before - start] = IGNORE  # position 0 is the control token, never a label
        return ids, labels


def collate(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict:
    """Pad to the longest example of the batch (not a fixed length); padding is masked and unscored.

    `n_tokens` (a plain int: the batch's real tokens) is for throughput; pop it before the model call.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.from_numpy(ids)
        labels[row, : len(lab)] = torch.from_numpy(lab)
        attention_mask[row, : len(ids)] = 1
    n_tokens = sum(int((ids != pad_id).sum()) for ids, _ in examples)  # FIM examples may end in padding
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "n_tokens": n_tokens}


def dev_split_hash(corpus: Corpus, dev_rows) -> str:
    """Identifies a dev set (its files' contents and the window length): models compare dev
    perplexity only when this (and the tokenizer) match. Finetune records it, evaluate checks it."""
    sha256s = [str(corpus.files["sha256"][row]) for row in dev_rows]
    text = "\n".join(sorted(sha256s)) + f"\nsegment_len={corpus.meta.segment_len}\n"
    return hashlib.sha256(text.encode()).hexdigest()
