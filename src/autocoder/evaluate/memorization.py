"""Memorization: how much of the files it was trained on the model reproduces word for word, against
files it never saw (the seed's "to what extent the model memorizes examples rigidly").

For `files` seeded files of each side (train, dev) with at least prefix_tokens + new_tokens tokens,
a seeded place in the file; the model is given the prefix_tokens before it (after the language's
control token, as in training) and generates new_tokens greedily, with no stop pattern and no loop
guard (a repetition penalty would push the model off a file's own repeated lines). Per side:
`exact`, the share of continuations equal to the file's own next new_tokens tokens, and
`mean_prefix_tokens`, the mean number of leading tokens that match. A gap between train and dev is
memorization; what dev shares is code any model would guess (closing braces, `self.`).
"""

from __future__ import annotations

import numpy as np

from autocoder.complete import Completer, Decoding
from autocoder.complete.cache import common_prefix
from autocoder.corpus import Corpus
from autocoder.evaluate.measure import STAGE, Inputs, Measure, Result
from autocoder.format import NEVER
from autocoder.params import MemorizationParams


def memorization(
    completer: Completer,
    corpus: Corpus,
    rows: dict[str, np.ndarray],
    cfg: MemorizationParams,
    seed: int,
    batch_size: int = 1,
) -> dict:
    """{side: {"files", "exact", "mean_prefix_tokens"}} for each side of `rows` (side -> file rows)."""
    need = cfg.prefix_tokens + cfg.new_tokens
    scores = {}
    for side, side_rows in rows.items():
        rng = np.random.default_rng([seed, len(scores)])
        long_enough = [int(r) for r in side_rows if corpus.files["n_tokens"][r] >= need]
        chosen = rng.permutation(long_enough)[: cfg.files]
        requests, truths = [], []
        for row in chosen:
            tokens = corpus.file_tokens(int(row))
            start = int(rng.integers(0, len(tokens) - need + 1))
            prefix = tokens[start : start + cfg.prefix_tokens].tolist()
            truths.append(tokens[start + cfg.prefix_tokens : start + need].tolist())
            requests.append(
                {
                    "lang": str(corpus.files["language"][row]),
                    "context": completer.tokenizer.decode(prefix, clean_up_tokenization_spaces=False),
                    "stop": NEVER,
                    "heal": False,  # the prefix ends where the file's tokens do: nothing to heal
                }
            )
        completions = completer.complete_many(requests, batch_size, Decoding(max_new_tokens=cfg.new_tokens))
        matched = [common_prefix(c.token_ids, truth) for c, truth in zip(completions, truths)]
        scores[side] = {
            "files": len(matched),
            "exact": float(np.mean([m == cfg.new_tokens for m in matched])) if matched else 0.0,
            "mean_prefix_tokens": float(np.mean(matched)) if matched else 0.0,
        }
    return scores


def _run(inputs: Inputs) -> Result:
    cfg = inputs.cfg
    print(f"{STAGE}: memorization of {cfg.memorization.files} train and dev files")
    sides = {"train": inputs.train_rows, "dev": inputs.dev_rows}
    scores = memorization(inputs.completer, inputs.corpus, sides, cfg.memorization, cfg.seed, cfg.batch_size)
    return Result({"memorization": scores})


MEMORIZATION = Measure(
    "memorization", _run, off=lambda cfg: "evaluate.memorization.files is 0" if not cfg.memorization.files else None
)
