"""Dev perplexity and bits per byte: the dev scorer the finetune picks its checkpoint with
(autocoder.scoring: every token of the scored dev files predicted once, and each file's eos, in
non-overlapping windows of segment_len tokens after the language's control token). Files go in a
seeded order until `perplexity_max_bytes` (bytes, not tokens: models of any tokenizer score the same
files); the perplexity is token-weighted. Bits per byte = the total negative log-likelihood in bits /
the UTF-8 bytes of the scored text: comparable across tokenizers, and the registry's champion rule."""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from autocoder.complete import Completer
from autocoder.corpus import Corpus
from autocoder.errors import UserError
from autocoder.evaluate.measure import PROGRESS, STAGE, Inputs, Measure, Result, file_text
from autocoder.params import EvaluateParams
from autocoder.scoring import DevScore, DevWindows, summed_nll


@torch.inference_mode()
def dev_perplexity(completer: Completer, corpus: Corpus, rows: np.ndarray, cfg: EvaluateParams) -> tuple[dict, str]:
    """The dev scorer's scores of whole dev files, and a hash of the scored files' contents (what the
    registry compares over)."""
    picked, n_bytes = [], 0
    for row in np.random.default_rng(cfg.seed).permutation(rows):
        picked.append(int(row))
        n_bytes += len(file_text(completer, corpus, int(row)).encode())
        if cfg.perplexity_max_bytes and n_bytes >= cfg.perplexity_max_bytes:
            break
    length = min(corpus.meta.segment_len, completer.config.max_position_embeddings - 2)  # control token, eos
    dev_set = DevWindows(corpus.windows(np.array(picked), length, length), None, completer.tokenizer)
    if len(dev_set) == 0:
        raise UserError("split.out_dir: the dev files have no tokens to score")
    progress = partial(tqdm, desc=f"{STAGE}: dev perplexity", unit="batch", **PROGRESS)
    pad_id = completer.tokenizer.pad_token_id
    nll, tokens = summed_nll(completer.model, dev_set, cfg.batch_size, pad_id, completer.device, progress).tolist()
    score = DevScore(nll, int(tokens), dev_set.n_bytes)
    scored = sorted(str(corpus.files["sha256"][row]) for row in picked)
    return {
        "dev_perplexity": score.perplexity,
        "dev_bits_per_byte": score.bits_per_byte,
        "dev_tokens": score.tokens,
        "dev_bytes": score.n_bytes,
        "dev_files": len(picked),
    }, hashlib.sha256("\n".join(scored).encode()).hexdigest()


def _run(inputs: Inputs) -> Result:
    print(f"{STAGE}: scoring dev perplexity")
    scores, scored_files = dev_perplexity(inputs.completer, inputs.corpus, inputs.dev_rows, inputs.cfg)
    print(
        f"{STAGE}: dev perplexity {scores['dev_perplexity']:.4g}, "
        f"{scores['dev_bits_per_byte']:.4g} bits/byte over {scores['dev_tokens']} tokens"
    )
    return Result(scores, detail=scored_files)


PERPLEXITY = Measure("perplexity", _run)
