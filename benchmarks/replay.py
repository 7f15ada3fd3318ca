"""Completion while the user types: a replay of simulated typing over dev files, sent to a real
`autocoder serve` as an editor's completion client sends it.

In each of `--lines` dev lines (seeded, half per language, at least 20 characters), the user types the
line after its indentation one character at a time. The gaps between keystrokes are drawn from a
log-normal distribution (median 150 ms); a gap longer than the client's debounce (Continue's 350 ms)
sends a request, as Continue does: the text before the cursor (its last 1,500 characters) as `prompt`,
the text after the cursor (its first 500; the line being typed is not there yet) as `suffix`,
`stop: ["\\n"]`, `max_tokens: 32`. Requests go one after another (a real client would cancel the one in
flight when typing resumes; here each is answered, so every latency is measured). Per request: its
latency, whether the completion is exactly the rest of the line the user goes on to type, its prompt
tokens and, where the server reports them (OpenAI's `usage.prompt_tokens_details.cached_tokens`), the
tokens it did not prefill again. Reported per variant: p50 and p95 latency, exact match, the cache hit
rate (cached / prompt tokens) and the tokens prefilled per request; with `--cold`, also the serve
benchmark's single-line infill requests (benchmarks/serve.py), each on its own. A variant is a
runtime of benchmarks/serve.py (torch, onnx, onnx-int8), served with its prompt cache (the default,
4 slots) or, with "+nocache", without (`--cache-slots 0`): the same greedy outputs either way.

    python benchmarks/replay.py [--model models/finetune/best] [--variants torch,torch+nocache] [--lines 10]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
from serve import (
    PREFIX_CHARS,
    SUFFIX_CHARS,
    VARIANTS,
    dev_examples,
    dev_texts,
    start_server,
    variant_folder,
    write_results,
)

RESULTS = Path(__file__).parent / "results" / "replay.json"
DEBOUNCE_MS, MEDIAN_GAP_MS, GAP_SIGMA = 350, 150, 0.8


def typing_requests(texts: list[tuple[str, str]], n_lines: int, seed: int) -> list[dict]:
    """The requests a client sends while drawn lines of `texts` ((language, text) each) are typed,
    each with the rest of its line."""
    rng = random.Random(seed)
    by_lang: dict[str, list[tuple[str, int]]] = {}
    for lang, text in texts:
        lines = text.split("\n")
        by_lang.setdefault(lang, []).extend((text, i) for i in range(1, len(lines)) if len(lines[i].strip()) >= 20)
    requests = []
    for lang, candidates in sorted(by_lang.items()):
        for text, i in rng.sample(candidates, min(n_lines // len(by_lang), len(candidates))):
            lines = text.split("\n")
            line = lines[i]
            start = len(line) - len(line.lstrip())
            before = "\n".join(lines[:i]) + "\n"
            after = "\n" + "\n".join(lines[i + 1 :])
            for typed in range(start + 1, len(line)):
                if rng.lognormvariate(np.log(MEDIAN_GAP_MS), GAP_SIGMA) > DEBOUNCE_MS:
                    requests.append(
                        {
                            "language": lang,
                            "prompt": (before + line[:typed])[-PREFIX_CHARS:],
                            "suffix": after[:SUFFIX_CHARS],
                            "target": line[typed:],
                        }
                    )
    return requests


def ask(url: str, request: dict) -> dict:
    body = {k: request[k] for k in ("language", "prompt", "suffix")} | {"max_tokens": 32, "stop": ["\n"]}
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    answer = response.json()
    usage = answer["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    text = answer["choices"][0]["text"]
    return {
        "ms": elapsed,
        "exact": text.strip() == request["target"].strip(),
        "text": text,
        "prompt": usage["prompt_tokens"],
        "cached": cached,
    }


def summary(answers: list[dict]) -> dict:
    ms = [a["ms"] for a in answers]
    prompt, cached = sum(a["prompt"] for a in answers), sum(a["cached"] for a in answers)
    return {
        "requests": len(answers),
        "p50_ms": round(float(np.percentile(ms, 50))),
        "p95_ms": round(float(np.percentile(ms, 95))),
        "exact_match": round(float(np.mean([a["exact"] for a in answers])), 3),
        "cache_hit_rate": round(cached / prompt, 3) if prompt else 0.0,
        "prefilled_tokens_per_request": round((prompt - cached) / len(answers), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/finetune/best")
    parser.add_argument("--variants", default="torch", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--lines", type=int, default=10, help="lines typed, half per language")
    parser.add_argument("--cold", type=int, default=0, help="also this many single-line infill requests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    typing = typing_requests(dev_texts(), args.lines, args.seed)
    cold = [{**ex, "target": ex["target"].strip()} for ex in dev_examples(args.cold, args.seed)] if args.cold else []
    variants, texts = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants.split(","):
            runtime, _, option = variant.partition("+")
            if runtime not in VARIANTS or option not in ("", "nocache"):
                parser.error(f"--variants: unknown {variant!r}")
            folder = variant_folder(Path(args.model), runtime, Path(scratch) / variant)
            extra = ("--cache-slots", "0") if option == "nocache" else ()
            server, url = start_server(folder, queue_size=4, extra=extra)
            try:
                ask(url, typing[0])  # warm-up
                answers = [ask(url, r) for r in typing]
                variants[variant] = {"typing": summary(answers)}
                texts[variant] = [a["text"] for a in answers]
                if cold:
                    variants[variant]["cold"] = summary([ask(url, r) for r in cold])
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait()
            for name, r in variants[variant].items():
                print(
                    f"{variant:10} {name:7} p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, exact match "
                    f"{r['exact_match']:.1%}, cache hits {r['cache_hit_rate']:.0%}, "
                    f"{r['prefilled_tokens_per_request']} tokens prefilled per request ({r['requests']} requests)"
                )
    # every speed-up keeps the greedy outputs: the same texts in every variant
    same = len({tuple(t) for t in texts.values()}) <= 1
    print(f"the same completions in every variant: {same}")
    record = {
        "model": args.model,
        "same_completions_in_every_variant": same,
        "lines": args.lines,
        "debounce_ms": DEBOUNCE_MS,
        "variants": variants,
    }
    write_results(RESULTS, record)


if __name__ == "__main__":
    main()
