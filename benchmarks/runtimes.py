"""The runtimes that could serve the completion model, side by side on the same tokens: prefill and
decoding speed, and whether each writes what PyTorch writes.

The requests are the serve benchmark's single-line infill requests (benchmarks/serve.py: about
1,500 characters before a dev line and 500 after it), each turned into its prompt ids as
`autocoder serve` builds them (the anchored window, PSM, no token healing, so that every runtime is
given exactly the same ids). Each runtime then prefills the prompt cold and decodes greedily until
a token holds a newline, eos, or 32 tokens. Per runtime: the request latency (p50, p95), prefill
tokens/s, decoding ms per token, and how many completions are the same as PyTorch's.

- `torch`: the Completer's PyTorch runner (fp32 here: this CPU has no native bf16).
- `onnx`, `onnx-int8`: the exported model.onnx, as is and with its matrices quantized to int8
  (ONNX Runtime's dynamic quantization), as benchmarks/serve.py makes them.
- `llama.cpp-f32`, `llama.cpp-q8_0`: the same weights converted to GGUF by llama.cpp's own
  convert_hf_to_gguf.py, run by llama-cpp-python, the maintained binding. llama.cpp is not a
  dependency of the project: `--llama-python` names the Python of an environment that has
  `llama-cpp-python` (built from its sdist, which also holds the converter, `--llama-src`), and the
  llama.cpp runtimes run in a subprocess of it (this file, `--worker`).

Prefill is also given as a share of the CPU's matrix-multiply throughput: the FLOPs of the prompt's
tokens through the layers' linear maps (2 per weight per token) and its attention, over the prefill
time, against an fp32 matmul of the layers' shapes timed here (torch, every core).

    python benchmarks/runtimes.py [--model models/finetune/best] [--requests 20]
        [--variants torch,onnx,onnx-int8,llama.cpp-f32,llama.cpp-q8_0] [--llama-python PY --llama-src DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "runtimes.json"
MAX_NEW_TOKENS = 32
VARIANTS = ("torch", "onnx", "onnx-int8", "llama.cpp-f32", "llama.cpp-q8_0")


def decode(step, prompt: list[int], stop_ids: set[int]) -> dict:
    """Greedy decoding through `step(ids, cache) -> (logits, cache)`, the prefill timed apart."""
    started = time.perf_counter()
    logits, cache = step(np.array([prompt]), None)
    prefill = time.perf_counter() - started
    out = []
    while True:
        token = int(np.argmax(logits[0]))
        out.append(token)
        if token in stop_ids or len(out) == MAX_NEW_TOKENS:
            break
        logits, cache = step(np.array([[token]]), cache)
    total = time.perf_counter() - started
    return {"ids": out, "prefill_s": prefill, "decode_s": total - prefill, "total_s": total}


def worker(gguf: str, requests_file: str) -> None:
    """In the llama.cpp environment: every prompt of `requests_file`, decoded as `decode` does."""
    import llama_cpp

    job = json.loads(Path(requests_file).read_text())
    llm = llama_cpp.Llama(
        gguf, n_ctx=job["n_ctx"], n_threads=job["threads"], n_batch=512, logits_all=False, verbose=False
    )

    def step(ids: np.ndarray, cache):
        if cache is None:
            llm.reset()  # a cold prefill: nothing reused from the previous prompt
        llm.eval(ids[0].tolist())
        # the last position's logits, as llama.cpp left them (Llama.scores keeps them only with logits_all)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(1, llm.n_vocab())).copy(), True

    decode(step, job["prompts"][0], set(job["stop_ids"]))  # warm-up
    print(json.dumps([decode(step, p, set(job["stop_ids"])) for p in job["prompts"]]))


def matmul_gflops(hidden: int, intermediate: int, tokens: int, threads: int) -> float:
    """fp32 matmul throughput of the MLP's shape ([tokens, hidden] x [hidden, intermediate]), best of 5."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(tokens, hidden), torch.randn(hidden, intermediate)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * tokens * hidden * intermediate / best / 1e9


def prefill_gflop(model, n: int) -> float:
    """The FLOPs of prefilling n tokens: 2 per weight of the layers' linear maps per token, the
    attention's scores and sums (causal: about n^2 / 2 per head dimension, twice), one output row."""
    config = model.config
    linear = sum(p.numel() for name, p in model.model.layers.named_parameters() if p.ndim == 2)
    attention = 2 * 2 * config.num_hidden_layers * config.hidden_size * n * n / 2
    return (2 * linear * n + attention + 2 * config.hidden_size * config.vocab_size) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/finetune/best")
    parser.add_argument("--requests", type=int, default=20, help="half per language")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--llama-python", help="the Python of an environment with llama-cpp-python")
    parser.add_argument("--llama-src", type=Path, help="llama.cpp's source (convert_hf_to_gguf.py)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("GGUF", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    if any(v.startswith("llama.cpp") for v in variants) and not (args.llama_python and args.llama_src):
        parser.error("the llama.cpp variants need --llama-python and --llama-src")

    import torch
    from serve import dev_examples, variant_folder, write_results

    from autocoder.complete import Completer
    from autocoder.runtime import OnnxRunner

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    completer = Completer.from_pretrained(model_dir, onnx=False)
    tokenizer, model = completer.tokenizer, completer.model
    examples = dev_examples(args.requests, args.seed)
    prompts = [
        completer.prepare(
            ex["language"], ex["prompt"], MAX_NEW_TOKENS, suffix=ex["suffix"], heal=False, anchor=True
        ).ids
        for ex in examples
    ]
    stop_ids = {tokenizer.eos_token_id} | {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in variants:
            if variant == "torch":
                step = completer.runner.step
                decode(step, prompts[0], stop_ids)  # warm-up
                runs = [decode(step, p, stop_ids) for p in prompts]
            elif variant.startswith("onnx"):
                runner = OnnxRunner(variant_folder(model_dir, variant, Path(scratch) / variant))
                decode(runner.step, prompts[0], stop_ids)
                runs = [decode(runner.step, p, stop_ids) for p in prompts]
            else:
                runs = llama_cpp_runs(args, model_dir, variant, prompts, stop_ids, Path(scratch))
            outputs[variant] = [r["ids"] for r in runs]
            results[variant] = summary(runs, prompts, model, outputs.get("torch"))
            print(variant, json.dumps(results[variant]), flush=True)

    flops = [prefill_gflop(model, len(p)) for p in prompts]
    gflops = matmul_gflops(model.config.hidden_size, model.config.intermediate_size, 512, args.threads)
    for r in results.values():
        r["prefill_gflops"] = round(sum(flops) / r.pop("prefill_s"), 1)  # every prompt's FLOPs over their time
        r["prefill_share_of_matmul"] = round(r["prefill_gflops"] / gflops, 3)
    record = {
        "model": args.model,
        "requests": len(prompts),
        "prompt_tokens_mean": round(float(np.mean([len(p) for p in prompts])), 1),
        "max_new_tokens": MAX_NEW_TOKENS,
        "threads": args.threads,
        "fp32_matmul_gflops": round(gflops, 1),
        "prefill_gflop_per_prompt": round(float(np.mean(flops)), 2),
        "variants": results,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "variants"}))
    write_results(RESULTS, record)


def summary(runs: list[dict], prompts: list[list[int]], model, reference: list[list[int]] | None) -> dict:
    total = [r["total_s"] * 1000 for r in runs]
    decoded = sum(len(r["ids"]) - 1 for r in runs)  # the first token comes with the prefill
    result = {
        "p50_ms": round(float(np.percentile(total, 50))),
        "p95_ms": round(float(np.percentile(total, 95))),
        "prefill_ms_p50": round(float(np.percentile([r["prefill_s"] * 1000 for r in runs], 50))),
        "prefill_tokens_per_s": round(sum(map(len, prompts)) / sum(r["prefill_s"] for r in runs)),
        "decode_ms_per_token": round(sum(r["decode_s"] for r in runs) * 1000 / max(decoded, 1), 1),
        "prefill_s": sum(r["prefill_s"] for r in runs),
    }
    if reference is not None:
        result["same_as_torch"] = sum(r["ids"] == ref for r, ref in zip(runs, reference))
    return result


def llama_cpp_runs(args, model_dir: Path, variant: str, prompts, stop_ids, scratch: Path) -> list[dict]:
    """The weights as GGUF (llama.cpp's converter), decoded by llama-cpp-python in its own environment."""
    outtype = variant.split("-")[1]
    gguf = scratch / f"model-{outtype}.gguf"
    subprocess.run(
        [args.llama_python, str(args.llama_src / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", outtype,
         "--outfile", str(gguf)],
        check=True, capture_output=True,
    )  # fmt: skip
    job = scratch / "requests.json"
    n_ctx = max(map(len, prompts)) + MAX_NEW_TOKENS + 8
    job.write_text(
        json.dumps({"prompts": prompts, "stop_ids": sorted(stop_ids), "n_ctx": n_ctx, "threads": args.threads})
    )
    done = subprocess.run(
        [args.llama_python, __file__, "--worker", str(gguf), str(job)], capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"{variant}: the llama.cpp worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
