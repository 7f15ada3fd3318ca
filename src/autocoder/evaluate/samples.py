"""Samples: the params' prompts completed greedily (`samples.md`, with whether each Python one
parses: `ast.parse(prompt + completion)`), their latency p50/p95 (`latency_ms`), and `samples`: how
many ended by themselves (a blank line or eos, not max_new_tokens), out of how many, and the share of
Python samples that parse."""

from __future__ import annotations

import ast
import time

import numpy as np
from tqdm import tqdm

from autocoder.complete import Completer, Completion
from autocoder.evaluate.measure import PROGRESS, STAGE, Inputs, Measure, Result, generation
from autocoder.format import BLANK_LINE
from autocoder.params import EvaluateParams

STOPPED_BY = {"pattern": "a blank line", "eos": "end of text", "length": "max_new_tokens"}


def parses(lang: str, prompt: str, completion: Completion) -> bool | None:
    """Whether a Python sample parses (`ast.parse(prompt + completion)`); None for other languages."""
    if lang != "python":
        return None
    try:
        ast.parse(prompt + completion.text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def sample_prompts(completer: Completer, cfg: EvaluateParams) -> tuple[list[tuple], list[float]]:
    """Greedy completions of the params' prompts ((lang, prompt, Completion, parses) each) and the
    latency in ms of `latency_repeats` timed runs of each, after one untimed run that warms the model up."""
    samples, latencies = [], []
    prompts = [(lang, prompt) for lang, some in cfg.prompts.items() for prompt in some]
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "stop": BLANK_LINE, **generation(cfg)}
    for lang, prompt in tqdm(prompts, desc=f"{STAGE}: samples", unit="prompt", **PROGRESS):
        [completion] = completer.complete(lang, prompt, **kwargs)
        samples.append((lang, prompt, completion, parses(lang, prompt, completion)))
        for _ in range(cfg.latency_repeats):
            start = time.perf_counter()
            completer.complete(lang, prompt, **kwargs)
            latencies.append((time.perf_counter() - start) * 1000)
    return samples, latencies


def samples_summary(samples: list[tuple]) -> dict:
    """How many samples ended by themselves (a blank line or eos), of how many; the share of the
    Python ones that parse (None without Python samples)."""
    python = [ok for _, _, _, ok in samples if ok is not None]
    return {
        "ended": sum(c.stop != "length" for _, _, c, _ in samples),
        "total": len(samples),
        "python_parse": float(np.mean(python)) if python else None,
    }


def samples_markdown(samples: list[tuple], model: str, cfg: EvaluateParams) -> str:
    guard = "".join(
        [
            f", repetition penalty {cfg.repetition_penalty}" if cfg.repetition_penalty != 1.0 else "",
            f", no repeated {cfg.no_repeat_ngram_size}-grams" if cfg.no_repeat_ngram_size else "",
        ]
    )
    out = [
        f"# Sample completions\n\nModel `{model}`: greedy{guard}, at most {cfg.max_new_tokens} new "
        "tokens, stopping at a blank line. Confidence = mean log-probability of the generated tokens. "
        "Python samples: whether the prompt + completion parse (`ast.parse`).\n"
    ]
    for lang, prompt, c, ok in samples:
        parsed = "" if ok is None else (", parses" if ok else ", does not parse")
        out.append(
            f"## {lang}: `{prompt}`\n\n{c.n_tokens} tokens, confidence {c.confidence:.3f}, "
            f"stopped by {STOPPED_BY[c.stop]}{parsed}\n\n````{lang}\n{prompt}{c.text}\n````\n"
        )
    return "\n".join(out)


def _run(inputs: Inputs) -> Result:
    samples, latencies = sample_prompts(inputs.completer, inputs.cfg)
    metrics = {
        "samples": samples_summary(samples),
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)) if latencies else None,
            "p95": float(np.percentile(latencies, 95)) if latencies else None,
        },
    }
    return Result(metrics, files={"samples.md": samples_markdown(samples, inputs.model, inputs.cfg)})


SAMPLES = Measure("samples", _run)
