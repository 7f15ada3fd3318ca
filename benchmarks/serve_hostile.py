"""`autocoder serve` under load with hostile requests mixed in: does every well-formed request get
its answer, and does /health stay fast throughout?

16 clients send 10 requests each, concurrently, to a real `autocoder serve` process on 127.0.0.1
(the gate on, as it serves by default). Eight of each client's ten are well-formed completions
(prompt and suffix, streamed or not); two are hostile, from the payloads a probe of the server
used:
- long_stop: a streamed request whose one stop string is 1,000,000 characters (matching it after
  every token blocked the event loop: 12 s for 3 tokens);
- huge_body: 20 MB of JSON in a field the server ignores (read and parsed whole, it grew the server);
- surrogate: a prompt with JSON's lone surrogate \\ud800 (a 500, or a stream cut without [DONE]);
- temperature: /completion with temperature 1e308 (NaN sampling, an empty 200);
- special_text: a prompt that types "<|endoftext|>" (encoded as the token itself);
- many_stops: five stop strings (OpenAI allows four).
Meanwhile a poller asks GET /health every 50 ms. Reported: the well-formed requests answered 200
(and whether a gated stream's text is the unstreamed one), each hostile kind's status codes,
/health's p50 / p99 / max latency, and the server's peak memory (VmHWM). Writes
benchmarks/results/serve_hostile.json.

    python benchmarks/serve_hostile.py [--model models/autocoder-base] [--clients 16] [--requests 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx2 as httpx
import numpy as np

RESULTS = Path(__file__).parent / "results" / "serve_hostile.json"
PREFIX = "def total_of(items):\n    total = 0\n    for item in items:\n"
SUFFIX = "\n    return total\n"
JSON = {"Content-Type": "application/json"}
HOSTILE: dict[str, tuple[str, bytes]] = {
    "long_stop": (
        "/v1/completions",
        json.dumps({"prompt": "def f(", "max_tokens": 3, "stream": True, "stop": ["x" * 1_000_000]}).encode(),
    ),
    "huge_body": ("/v1/completions", b'{"prompt": "def f(", "user": "' + b"x" * 20_000_000 + b'"}'),
    "surrogate": ("/v1/completions", b'{"prompt": "def f\\ud800(", "max_tokens": 8}'),
    "temperature": ("/completion", b'{"prompt": "def f(", "temperature": 1e308}'),
    "special_text": ("/v1/completions", b'{"prompt": "<|endoftext|>", "max_tokens": 8}'),
    "many_stops": ("/v1/completions", b'{"prompt": "def f(", "stop": ["a", "b", "c", "d", "e"]}'),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _poll_health(url: str, done, samples) -> None:
    """GET /health every 50 ms until `done`; the latencies (ms) go to `samples` at the end."""
    latencies = []
    with httpx.Client(timeout=60) as http:
        while not done.is_set():
            start = time.perf_counter()
            try:
                http.get(f"{url}/health")
                latencies.append((time.perf_counter() - start) * 1000)
            except httpx.TransportError:
                latencies.append(float("inf"))
            time.sleep(0.05)
    samples.put(latencies)


def _well_formed(i: int) -> tuple[str, dict]:
    body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 16} if i % 2 else {"prompt": PREFIX, "max_tokens": 16}
    return "/v1/completions", {**body, "stream": i % 4 == 3}


def _text(response: httpx.Response, streamed: bool) -> str:
    if not streamed:
        return response.json()["choices"][0]["text"]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["text"] for e in events if "choices" in e)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/autocoder-base")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10, help="per client; every fifth is hostile")
    args = ap.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "autocoder.cli", "serve", "--model", args.model, "--port", str(port)]
    cmd += ["--queue-size", str(args.clients * 2)]  # the load, not the queue's 503s, is measured
    server = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not come up"
                time.sleep(0.3)
        expected = {}  # each well-formed request's unstreamed answer, asked before the load
        for i in range(4):
            path, body = _well_formed(i)
            expected[i % 2] = httpx.post(f"{url}{path}", json={**body, "stream": False}, timeout=120).json()

        done, samples = multiprocessing.Event(), multiprocessing.Queue()
        # its own process: in this one, the clients' threads would delay it for the GIL
        poller = multiprocessing.Process(target=_poll_health, args=(url, done, samples))
        outcomes: dict[str, Counter] = defaultdict(Counter)
        lock = threading.Lock()
        kinds = list(HOSTILE)

        def client(c: int) -> None:
            with httpx.Client(timeout=600) as http:
                for i in range(args.requests):
                    if i % 5 == 4:
                        kind = kinds[(c + i // 5 * len(kinds) // 2) % len(kinds)]
                        path, body = HOSTILE[kind]
                        try:
                            code = str(http.post(f"{url}{path}", content=body, headers=JSON).status_code)
                        except httpx.TransportError as e:
                            code = type(e).__name__
                        with lock:
                            outcomes[kind][code] += 1
                        continue
                    path, body = _well_formed(i)
                    response = http.post(f"{url}{path}", json=body)
                    same = (
                        response.status_code == 200
                        and _text(response, body["stream"]) == (expected[i % 2]["choices"][0]["text"])
                    )
                    with lock:
                        outcomes["well_formed"][str(response.status_code)] += 1
                        outcomes["well_formed"]["same_text_as_alone"] += same

        poller.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        done.set()
        health_ms = samples.get(timeout=60)
        poller.join()
        peak = _peak_memory_mb(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    ms = np.array(health_ms)
    result = {
        "model": args.model,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "wall_s": round(wall, 1),
        "outcomes": {kind: dict(counts) for kind, counts in sorted(outcomes.items())},
        "health_ms": {
            "n": len(ms),
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1),
            "over_100": int((ms > 100).sum()),
        },
        "server_peak_memory_mb": round(peak, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
