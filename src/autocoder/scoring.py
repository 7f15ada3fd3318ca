"""The dev scorer, one for the finetune (which keeps the checkpoint it scores best) and the evaluate
stage (dev perplexity and bits per byte, the registry's champion rule).

Each scored file is cut into non-overlapping windows of `length` tokens (autocoder.format's windows
at stride = length: [control] + tokens, eos after the file's last token), and every token of the
file is predicted once, its eos too. A file's last window ends at the file's end, so it may overlap
the window before it: those tokens serve as context, unscored (format.labels). The score is the summed
negative log-likelihood of the scored tokens; per token it is the dev loss (perplexity: its exp), per
UTF-8 byte of their text (eos has none) the bits per byte, which compare models across tokenizers.
The finetune scores `eval_max_windows` windows spread over all dev files; the evaluate stage whole
files, up to `perplexity_max_bytes`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from autocoder.corpus import Corpus, Windows
from autocoder.format import IGNORE, labels


class DevWindows(Dataset):
    """The dev windows of `windows` (stride = segment_len) as (ids, labels), at most `limit` of
    them, evenly spread (None: all)."""

    def __init__(self, windows: Windows, limit: int | None, tokenizer):
        assert windows.stride == windows.segment_len
        self.windows = windows
        n = len(windows)
        self.picked = np.unique(np.linspace(0, n - 1, min(limit or n, n)).round().astype(np.int64))
        self.n_bytes = 0  # of the scored tokens' text
        for i in range(len(self)):
            ids, scored = self[i]
            text = tokenizer.decode(
                ids[scored != IGNORE].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            self.n_bytes += len(text.encode())

    def __len__(self) -> int:
        return len(self.picked)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        w = int(self.picked[i])
        j, start, _ = self.windows.locate(w)
        ids = self.windows[w]
        scored_until = (w - int(self.windows.cum[j])) * self.windows.stride  # where this window would start
        return ids, labels(ids, scored_until - start)


@dataclass(frozen=True)
class DevScore:
    nll: float  # summed negative log-likelihood of the scored tokens, in nats
    tokens: int
    n_bytes: int

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.n_bytes


@torch.no_grad()
def summed_nll(
    model,
    examples: Dataset,
    batch_size: int,
    pad_id: int,
    device,
    progress: Callable[[Iterable], Iterable] = iter,
) -> torch.Tensor:
    """(summed negative log-likelihood in nats, scored tokens) of `examples` ((ids, labels) pairs), as
    float64 on `device`; the model in eval mode."""
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in progress(DataLoader(examples, batch_size=batch_size, collate_fn=partial(collate, pad_id=pad_id))):
        targets = batch["labels"][:, 1:].to(device)  # position t predicts token t + 1
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        totals[0] += F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        totals[1] += (targets != IGNORE).sum()
    return totals


def collate(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict:
    """Pad to the longest example of the batch (not a fixed length); padding is masked and unscored.

    `n_tokens` (a plain int: the batch's real tokens) is for throughput; pop it before the model call.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    label_ids = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.from_numpy(ids)
        label_ids[row, : len(lab)] = torch.from_numpy(lab)
        attention_mask[row, : len(ids)] = 1
    n_tokens = sum(int((ids != pad_id).sum()) for ids, _ in examples)  # FIM examples may end in padding
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids, "n_tokens": n_tokens}


def dev_split_hash(corpus: Corpus, dev_rows) -> str:
    """Identifies a dev set (its files' contents and the window length): models compare dev
    perplexity only when this (and the tokenizer) match. Finetune records it, evaluate checks it."""
    sha256s = [str(corpus.files["sha256"][row]) for row in dev_rows]
    text = "\n".join(sorted(sha256s)) + f"\nsegment_len={corpus.meta.segment_len}\n"
    return hashlib.sha256(text.encode()).hexdigest()
