"""The decoding loop: a plain loop over the model's forward pass with its key/value cache, not
`model.generate`. It checks the stop after each token and reads each token's log-probability (the
`--json` confidence) straight from the logits. Per token it costs about what generate costs
(benchmarks/complete.py); the saving is the tokens not generated after the stop. The forward pass is
PyTorch's, or ONNX Runtime's for a folder with an exported model.onnx (autocoder.runtime: no torch
import, a cold start in about a second); the loop itself works on numpy arrays, so that one loop
serves both.

A completion ends as soon as its stop pattern shows up in the generated text (by default a blank
line, the seed's convention), at eos, or after max_new_tokens: the check runs after every token, so
no token is generated after the completion is done (the seed generated up to 128 tokens every time
and cut the text afterwards).

Loop guard: `repetition_penalty` (CTRL's: the logits of every token already in the prompt or the
completion are divided by it when positive, multiplied when negative) and `no_repeat_ngram_size`
(no n-gram of the prompt + completion occurs twice), applied to the logits before the greedy or
sampled choice; both off (1.0 and 0), decoding is unchanged. The confidence stays the model's own
log-probability of each chosen token, before them. They and the sampling warpers (temperature, top-p)
are transformers' logits processors written again in numpy, because the ONNX path has no torch;
tests/test_complete.py checks them against transformers' generate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autocoder.complete.cache import PromptCache
from autocoder.complete.prompt import Prompt
from autocoder.errors import UserError

# what a completion generates unless told otherwise; the evaluate stage's samples default to it too
DEFAULT_MAX_NEW_TOKENS = 64
MAX_TEMPERATURE = 2.0  # as OpenAI's API allows; far flatter than any useful sampling


@dataclass
class Completion:
    text: str
    confidence: float  # mean log-probability (natural log) of the tokens generated up to the stop
    n_tokens: int  # tokens generated, the one that completed the stop (or eos) included
    stop: str  # "pattern", "eos", "length", or "cancelled" (on_step said so)
    # each generated token and its log-probability (for a server's `logprobs`)
    token_ids: list[int] = field(default_factory=list, repr=False)
    token_logprobs: list[float] = field(default_factory=list, repr=False)
    healed: str = ""  # the context's last token, taken back (token healing): the tokens re-spell it first

    def summary(self) -> dict:
        """What the CLI's --json prints."""
        return {"text": self.text, "confidence": self.confidence, "n_tokens": self.n_tokens, "stop": self.stop}


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen: greedy at temperature 0, else sampled (top-p); the loop guard."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


class StopCheck:
    """Why a completion is over after its newest token: "eos", "pattern" (the generated text now
    matches `pattern`, so the newest token completed the match) or None (not over)."""

    def __init__(self, tokenizer, pattern: re.Pattern, healed: str = ""):
        self.tokenizer, self.pattern, self.healed = tokenizer, pattern, healed

    def __call__(self, ids: list[int]) -> str | None:
        if ids[-1] == self.tokenizer.eos_token_id:
            return "eos"
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return "pattern" if self.pattern.search(text[len(self.healed) :]) else None


def generate(
    runner,
    tokenizer,
    prompts: list[Prompt],
    stops: list[re.Pattern],
    decoding: Decoding,
    rng: np.random.Generator,
    on_step: Callable[[list[str]], bool] | None = None,
    prompt_cache: PromptCache | None = None,
) -> list[Completion]:
    """Decode a batch of prompts with `runner` (autocoder.runtime), one row each; `rng` draws the
    samples (temperature > 0). Shorter prompts are left-padded
    with their own first token, which the attention mask hides and the repetition penalty already
    counts, so a padded row decodes as it would alone. Greedy rows that are done leave the batch
    (and the cache), so that the longest completion does not keep the finished ones computing.
    `prompt_cache` (one prompt only): the prompt's prefix is taken from it when a slot shares one,
    and its cache is kept there after (cache.py)."""
    width = max(len(p.ids) for p in prompts)
    pads = np.array([width - len(p.ids) for p in prompts])
    sequence = np.array([[p.ids[0]] * pad + p.ids for p, pad in zip(prompts, pads)], dtype=np.int64)
    mask = np.array([[0] * pad + [1] * len(p.ids) for p, pad in zip(prompts, pads)]) if pads.any() else None
    checks = [StopCheck(tokenizer, stop, p.healed) for p, stop in zip(prompts, stops)]
    num = len(prompts)
    generated: list[list[int]] = [[] for _ in range(num)]
    logprobs: list[list[float]] = [[] for _ in range(num)]
    reasons: list[str | None] = [None] * num
    live = np.arange(num)  # the prompts still in the batch, in its row order
    d = decoding
    cache, cached = None, 0
    if prompt_cache is not None:
        if num != 1:
            raise ValueError("generate: a prompt cache serves one prompt at a time")
        cache, cached = prompt_cache.take(prompts[0].ids)
    inputs = sequence[:, cached:]
    for step in range(d.max_new_tokens):
        logits, cache = runner.step(inputs, cache, mask)
        scores = logits.copy()  # logits stay the model's own: the confidence
        if d.repetition_penalty != 1.0:
            _penalize_repeats(scores, sequence, d.repetition_penalty)
        if d.no_repeat_ngram_size > 0:
            unpadded = [ids[pad:] for ids, pad in zip(sequence.tolist(), pads[live])]
            _ban_repeated_ngrams(scores, unpadded, d.no_repeat_ngram_size)
        if step == 0:  # the first token re-spells the healed one
            for row, p in enumerate(prompts):
                if p.allowed is not None:
                    scores[row, ~p.allowed] = -np.inf
        tokens = _sample(scores, d.temperature, d.top_p, rng) if d.temperature > 0 else scores.argmax(-1)
        token_logprobs = _log_softmax(logits)[np.arange(len(live)), tokens]
        for row, token, logprob in zip(live.tolist(), tokens.tolist(), token_logprobs.tolist()):
            if reasons[row] is None:
                generated[row].append(token)
                logprobs[row].append(logprob)
                reasons[row] = checks[row](generated[row])
        if all(reasons):
            break
        if on_step is not None and not on_step([_text(tokenizer, ids, p.healed) for ids, p in zip(generated, prompts)]):
            reasons = [reason or "cancelled" for reason in reasons]
            break
        inputs = tokens[:, None].astype(np.int64)
        sequence = np.concatenate([sequence, inputs], axis=1)
        if mask is not None:
            mask = np.concatenate([mask, np.ones((len(live), 1), dtype=mask.dtype)], axis=1)
        keep = [i for i, row in enumerate(live) if reasons[row] is None]
        if d.temperature == 0 and len(keep) < len(live):  # (sampling keeps its rows: the same draws)
            live, inputs, sequence, cache = (
                live[keep],
                inputs[keep],
                sequence[keep],
                runner.select(cache, keep),
            )
            mask = mask[keep] if mask is not None else None
    if prompt_cache is not None:
        prompt_cache.keep(sequence[0].tolist(), cache)
    return [
        _completion(tokenizer, ids, row_logprobs, reason or "length", stop, p.healed)
        for ids, row_logprobs, reason, stop, p in zip(generated, logprobs, reasons, stops, prompts)
    ]


def _text(tokenizer, ids: list[int], healed: str) -> str:
    """The text of generated ids, without the healed token's text the context already has."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[len(healed) :]


def _completion(
    tokenizer, ids: list[int], logprobs: list[float], reason: str, stop: re.Pattern, healed: str
) -> Completion:
    return Completion(
        cut_at(stop, _text(tokenizer, ids, healed)),
        sum(logprobs) / len(logprobs),
        len(ids),
        reason,
        ids,
        logprobs,
        healed,
    )


def _sample(scores: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row from the softmax of scores / temperature, cut to the top-p nucleus: the
    most likely tokens whose probabilities before them add up to less than top_p (the most likely
    always stays), as transformers' TopPLogitsWarper keeps them."""
    # In float64 (a temperature of 1e-50 is 0 in float32) and shifted to a maximum of 0 before the
    # division, so that a temperature near 0 gives the others -inf (an overflow, harmless: greedy), not NaN
    shifted = scores.astype(np.float64) - scores.max(-1, keepdims=True)
    with np.errstate(over="ignore"):
        probs = np.exp(_log_softmax(shifted / temperature))
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=-1)
    ranked[(np.cumsum(ranked, axis=-1) - ranked) >= top_p] = 0.0
    thresholds = rng.random((len(ranked), 1)) * ranked.sum(-1, keepdims=True)
    picks = (np.cumsum(ranked, axis=-1) >= thresholds).argmax(-1)
    return order[np.arange(len(order)), picks]


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _penalize_repeats(scores: np.ndarray, sequence: np.ndarray, penalty: float) -> None:
    """CTRL's repetition penalty, in place: every token of the row's sequence has its score divided
    by `penalty` where positive, multiplied where negative."""
    for row, ids in enumerate(sequence):
        seen = np.unique(ids)
        s = scores[row, seen]
        scores[row, seen] = np.where(s < 0, s * penalty, s / penalty)


def _ban_repeated_ngrams(scores: np.ndarray, sequences: list[list[int]], n: int) -> None:
    """In place: no token may complete an n-gram that the row's sequence already has."""
    for row, ids in enumerate(sequences):
        if len(ids) + 1 < n:
            continue
        tail = tuple(ids[len(ids) - n + 1 :])
        banned = {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == tail}
        scores[row, list(banned)] = -np.inf


def cut_at(pattern: re.Pattern, text: str) -> str:
    """`text` up to the first match of `pattern` (all of it when there is none)."""
    match = pattern.search(text)
    return text[: match.start()] if match else text


def check_generation_args(max_new_tokens: int, temperature: float, top_p: float, num: int) -> None:
    if max_new_tokens <= 0:
        raise UserError(f"max_new_tokens: {max_new_tokens} must be positive")
    if not 0 <= temperature <= MAX_TEMPERATURE:  # also refuses NaN
        raise UserError(f"temperature: {temperature} must be between 0 (greedy) and {MAX_TEMPERATURE}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p: {top_p} must be in (0, 1]")
    if num < 1:
        raise UserError(f"num: {num} must be at least 1")
    if num > 1 and temperature == 0:
        raise UserError(f"num: {num} completions need sampling: give a temperature > 0 (greedy has one answer)")


def check_loop_guard(repetition_penalty: float, no_repeat_ngram_size: int) -> None:
    if not repetition_penalty > 0:  # also rejects NaN
        raise UserError(f"repetition_penalty: {repetition_penalty} must be > 0 (1.0 = off)")
    if no_repeat_ngram_size < 0:
        raise UserError(f"no_repeat_ngram_size: {no_repeat_ngram_size} must be >= 0 (0 = off)")
