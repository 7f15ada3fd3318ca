"""`autocoder serve` end to end, as an editor uses it: single-line fill-in-the-middle requests.

Each request is a dev line removed from its file (the pipeline's split, seeded draws of non-blank
lines): about 1,500 characters of the file before the line as `prompt`, about 500 after it as
`suffix`, `stop: ["\\n"]`, POSTed to /v1/completions over HTTP. Measured: end-to-end latency (p50,
p95) sequentially, and with 8 concurrent clients (a fixed number of requests, every one answered,
none failed), and the share of lines completed exactly (so that a faster server can be checked to
write the same code; the gate is off, so that every completion counts). The server is a real
`autocoder serve` process on 127.0.0.1; it is warmed up with a few requests first. Each variant
serves the same weights: from the exported model.onnx (ONNX Runtime), from PyTorch, and from
model.onnx quantized to int8. Writes benchmarks/results/serve.json.

    python benchmarks/serve.py [--model models/finetune/best] [--variants onnx,torch,onnx-int8]
                               [--requests 60] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
from transformers import AutoTokenizer

from autocoder.corpus import Corpus, split_rows
from autocoder.runtime import ONNX_FILE, export_onnx

SEGMENTS, SPLIT = Path("data/segments"), Path("data/split")
PREFIX_CHARS, SUFFIX_CHARS = 1500, 500
RESULTS = Path(__file__).parent / "results" / "serve.json"
VARIANTS = ("onnx", "torch", "onnx-int8")


def dev_texts() -> list[tuple[str, str]]:
    """(language, text) of every dev file of the pipeline's split."""
    corpus = Corpus(SEGMENTS)
    tokenizer = AutoTokenizer.from_pretrained(SEGMENTS / "tokenizer")
    return [
        (
            str(corpus.files["language"][row]),
            tokenizer.decode(corpus.file_tokens(int(row)).tolist(), clean_up_tokenization_spaces=False),
        )
        for row in split_rows(corpus, SPLIT, "dev")
    ]


def dev_examples(n: int, seed: int) -> list[dict]:
    """`n` requests (half per language): a dev line, the text before it and the text after it."""
    rng = random.Random(seed)
    by_lang: dict[str, list[tuple[str, int]]] = {}
    for lang, text in dev_texts():
        lines = text.split("\n")
        by_lang.setdefault(lang, []).extend((text, i) for i in range(1, len(lines)) if lines[i].strip())
    examples = []
    for lang, candidates in sorted(by_lang.items()):
        for text, i in rng.sample(candidates, min(n // len(by_lang), len(candidates))):
            lines = text.split("\n")
            before, after = "\n".join(lines[:i]) + "\n", "\n" + "\n".join(lines[i + 1 :])
            examples.append(
                {"language": lang, "prompt": before[-PREFIX_CHARS:], "suffix": after[:SUFFIX_CHARS], "target": lines[i]}
            )
    return examples


def ask(url: str, example: dict) -> tuple[float, str]:
    body = {k: example[k] for k in ("language", "prompt", "suffix")} | {"max_tokens": 48, "stop": ["\n"]}
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response.json()["choices"][0]["text"]


def summary(latencies: list[float], texts: list[str], examples: list[dict]) -> dict:
    exact = [text.strip() == ex["target"].strip() for text, ex in zip(texts, examples)]
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "exact_match": float(np.mean(exact)),
    }


def start_server(model: Path, queue_size: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """A real `autocoder serve --model model --no-gate` (every completion's text, for its exact
    match), up once /health answers; its process (in its own session) and URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "autocoder"), "serve", "--model", str(model), "--port", str(port)]
    cmd += ["--queue-size", str(queue_size), "--no-gate", *extra]
    server = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"{url}/health", timeout=5)
            return server, url
        except httpx.TransportError:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)


def measure(model: Path, examples: list[dict], clients: int) -> dict:
    """Sequential and concurrent figures of a real `autocoder serve --model model`."""
    server, url = start_server(model, 4 * clients)
    try:
        for example in examples[:3]:  # warm-up
            ask(url, example)

        sequential = [ask(url, ex) for ex in examples]
        results = {"sequential": summary([t for t, _ in sequential], [x for _, x in sequential], examples)}

        answers: list[tuple[float, str] | None] = [None] * len(examples)
        order = iter(range(len(examples)))
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                answers[i] = ask(url, examples[i])

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        assert all(a is not None for a in answers), "a concurrent request failed"
        results[f"concurrent_{clients}"] = summary([a[0] for a in answers], [a[1] for a in answers], examples) | {
            "requests_per_s": len(examples) / wall
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
    return results


def variant_folder(model: Path, variant: str, scratch: Path) -> Path:
    """The model folder served for a variant: "onnx" the exported model.onnx (exported here if the
    folder has none), "torch" the same weights without it (PyTorch), "onnx-int8" model.onnx with its
    matrix weights quantized to int8 (ONNX Runtime's dynamic quantization)."""
    folder = scratch / variant
    shutil.copytree(model, folder)
    if variant == "torch":
        (folder / ONNX_FILE).unlink(missing_ok=True)
        return folder
    if not (folder / ONNX_FILE).exists():
        export_onnx(folder)
    if variant == "onnx-int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source = folder / "fp32.onnx"
        (folder / ONNX_FILE).rename(source)
        quantize_dynamic(source, folder / ONNX_FILE, weight_type=QuantType.QInt8)
        quantized = onnx.load(folder / ONNX_FILE)  # the runtime reads the exported metadata
        onnx.helper.set_model_props(quantized, {p.key: p.value for p in onnx.load(source).metadata_props})
        onnx.save(quantized, folder / ONNX_FILE)
        source.unlink()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/finetune/best")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    examples = dev_examples(args.requests, args.seed)
    variants = {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                parser.error(f"--variants: unknown {variant!r}")
            variants[variant] = measure(
                variant_folder(Path(args.model), variant, Path(scratch)), examples, args.clients
            )
            for name, r in variants[variant].items():
                print(
                    f"{variant:10} {name:14} p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
                    f"exact match {r['exact_match']:.1%} ({r['requests']} requests)"
                )
    record = {
        "model": args.model,
        "prefix_chars": PREFIX_CHARS,
        "suffix_chars": SUFFIX_CHARS,
        "languages": sorted({ex["language"] for ex in examples}),
        "variants": variants,
    }
    write_results(RESULTS, record)


def write_results(path: Path, record: dict) -> None:
    """The record as JSON at `path`, with the machine it was measured on."""
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_after": os.getloadavg()[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "machine": machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
