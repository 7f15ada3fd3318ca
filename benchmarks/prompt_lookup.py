"""Prompt-lookup decoding against plain greedy decoding, on the requests an editor sends.

Prompt lookup (transformers' `prompt_lookup_num_tokens`) drafts the next tokens by copying what
followed the last few generated tokens where they occur earlier in the prompt, and checks the draft
in one forward pass: code repeats itself, so a line often continues as a line above it did. Both
variants run transformers' `generate` greedily on the same prompts (the Completer's own ids, FIM
layout included: the typing replay's requests, benchmarks/replay.py), to the same stop (max_new_tokens
or eos; the server's "\\n" stop is applied to the text afterwards); the outputs must be identical.
Reported: each variant's p50 and total time, the speed-up, and whether every output matched.

    python benchmarks/prompt_lookup.py [--model models/finetune/best] [--lines 10] [--lookup 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from replay import typing_requests
from serve import write_results

from autocoder.complete import Completer

RESULTS = Path(__file__).parent / "results" / "prompt_lookup.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/finetune/best")
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    completer = Completer.from_pretrained(args.model, onnx=False)
    model = completer.model
    prompts = [
        completer.prepare(r["language"], r["prompt"], args.max_new_tokens, suffix=r["suffix"], heal=False).ids
        for r in typing_requests(args.lines, args.seed)
    ]
    eos = completer.tokenizer.eos_token_id
    times: dict[str, list[float]] = {"greedy": [], "prompt_lookup": []}
    outputs: dict[str, list[list[int]]] = {"greedy": [], "prompt_lookup": []}
    lookup = {"greedy": {}, "prompt_lookup": {"prompt_lookup_num_tokens": args.lookup}}
    with torch.inference_mode():
        for ids in prompts:
            inputs = torch.tensor([ids])
            for variant, extra in lookup.items():  # side by side, request by request: the same load on both
                started = time.perf_counter()
                out = model.generate(
                    inputs,
                    attention_mask=torch.ones_like(inputs),
                    do_sample=False,
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=completer.tokenizer.pad_token_id,
                    **extra,
                )
                times[variant].append(time.perf_counter() - started)
                outputs[variant].append(out[0, len(ids) :].tolist())
    same = sum(a == b for a, b in zip(outputs["greedy"], outputs["prompt_lookup"]))
    record = {
        "model": args.model,
        "requests": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "prompt_lookup_num_tokens": args.lookup,
        "identical_outputs": same,
        "variants": {
            v: {"p50_ms": round(float(np.median(t)) * 1000), "total_s": round(sum(t), 1)} for v, t in times.items()
        },
        "speedup_total": round(sum(times["greedy"]) / sum(times["prompt_lookup"]), 2),
        "torch_threads": torch.get_num_threads(),
    }
    write_results(RESULTS, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
