"""Training examples, streamed from the corpus: memory stays flat in the dataset size.

Tokens are a memory map and the window index is O(files) (corpus.Windows); the epoch's shuffled
order is a keyed permutation computed per index, so no array of all windows is ever built either.
"""

from __future__ import annotations

import hashlib

import numpy as np
from torch.utils.data import Dataset

from autocoder.examples import FimTransform


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
