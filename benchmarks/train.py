"""Benchmark: training throughput of the finetune stage's loop against the seed's trainer.

    python benchmarks/train.py [--steps 40] [--threads 2] [--repeats 2] [--segments DIR --split DIR]

Every variant trains params.yaml's scratch model (finetune.scratch: the Llama-style decoder) from the
same initial weights, on the same corpus, for the same number of optimizer steps of
finetune.batch_size windows, each in a child process of its own on the machine's cores (--threads:
torch threads of one process):

- seed: the seed's trainer as its blog describes it, written as a plain loop: its sliding windows
  (254 tokens every 10, control token and eos: 256) padded to 256 tokens, fp32, AdamW with linear
  warmup and decay, eager attention (the only one transformers had in 2020), one process;
- ours: the finetune stage itself (autocoder.train.run) with params.yaml's recipe: packed
  max_length windows (no padding), fill-in-the-middle, bf16 autocast where the CPU has it,
  torch.compile, SDPA attention, one process;
- ours-eager: the same without torch.compile; ours-fp32: also without bf16 (what each one buys);
- ours-2proc: ours-eager with finetune.num_processes 2 (accelerate launch, DDP over gloo, one
  thread each) and half the batch per process;
- ours-2machines: the same as two machines on 127.0.0.1, one process each
  (configs/accelerate/two-machines.yaml; machine 1 is a second launch beside the first).

tokens/s counts real tokens, not padding. The stage's own figures leave evaluations and checkpoints
out; for ours they also leave out the first log window (torch.compile compiles during the first
steps: a one-off cost of about a minute, reported as `first_window_seconds`). Each variant's best of
--repeats is kept (the machine may be shared: the load average before each measurement is
recorded). The corpus is data/segments + data/split when they exist, else the Python standard
library's top-level modules segmented with params.yaml's segment section. Results go to
benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/train.json"
SEED_LENGTH = 256  # the seed padded every example to 256 tokens
SEED_SEGMENT_LEN, SEED_STRIDE = 254, 10  # the seed's windows


def base_params(segments: Path, split: Path, steps: int) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["segment"]["out_dir"], raw["split"]["out_dir"] = str(segments), str(split)
    raw["finetune"].update(
        model="scratch",
        max_steps=steps,
        eval_every=steps,
        eval_max_windows=8,
        checkpoint_every=steps + 1,
        log_every=max(1, steps // 4),
    )
    return raw


def build_corpus(out: Path) -> tuple[Path, Path]:
    """Segments + split of the standard library's top-level modules, as the segment and split stages
    would write them (every file trains but a few, which are the dev set)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from autocoder.corpus import SPLIT_FILE, TOKENIZER_DIR, CorpusWriter, Meta
    from autocoder.params import Params
    from autocoder.tokenizer import LEARN, learn_bpe, load_tokenizer, with_control_tokens

    params = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    texts = [path.read_text(errors="replace") for path in sorted(Path(os.__file__).parent.glob("*.py"))]
    controls = list(params.control_tokens().values())
    if params.segment.tokenizer == LEARN:
        tokenizer = with_control_tokens(learn_bpe(texts, params.segment.vocab_size), controls)
    else:
        tokenizer = load_tokenizer(params.segment.tokenizer, controls)
    segments, split = out / "segments", out / "split"
    writer = CorpusWriter(segments, "uint16")
    ids = []
    for path, text in zip(sorted(Path(os.__file__).parent.glob("*.py")), texts):
        ids.append(
            writer.add(
                "stdlib",
                path.name,
                "python",
                hashlib.sha256(text.encode()).hexdigest(),
                len(text.encode()),
                tokenizer(text)["input_ids"],
            )
        )
    tokens = params.control_tokens()
    control_ids = dict(zip(tokens, tokenizer.convert_tokens_to_ids(list(tokens.values()))))
    writer.close(
        Meta(
            params.segment.tokenizer,
            params.segment.segment_len,
            params.segment.stride,
            "uint16",
            control_ids,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            len(tokenizer),
        )
    )
    tokenizer.save_pretrained(segments / TOKENIZER_DIR)
    split.mkdir(parents=True)
    pq.write_table(
        pa.table({"file_id": ids, "split": ["dev" if i % 20 == 0 else "train" for i in ids]}), split / SPLIT_FILE
    )
    return segments, split


def measure_ours(raw: dict, work: Path) -> dict:
    from autocoder.params import Params
    from autocoder.train import run

    os.chdir(work)
    run(Params.model_validate(raw))
    return stage_throughput()


def measure_two_machines(raw: dict, work: Path) -> dict:
    """Two machines on 127.0.0.1 (configs/accelerate/two-machines.yaml), one process and one thread
    each: machine 1 is launched beside this process, which is machine 0."""
    import socket

    from autocoder.params import Params
    from autocoder.train import run

    os.chdir(work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = yaml.safe_load((ROOT / "configs/accelerate/two-machines.yaml").read_text())
    Path("two-machines.yaml").write_text(
        yaml.safe_dump({**config, "main_process_ip": "127.0.0.1", "main_process_port": port})
    )
    raw = {**raw, "finetune": {**raw["finetune"], "accelerate_config": "two-machines.yaml"}}
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    os.environ["OMP_NUM_THREADS"] = "1"
    launch = [sys.executable, "-m", "autocoder.train.launch", "--num_processes", "2"]
    machine1 = subprocess.Popen(
        [*launch, "--machine_rank", "1", "-m", "autocoder.cli", "finetune"], stdout=sys.stderr, stderr=sys.stderr
    )
    run(Params.model_validate(raw))
    if machine1.wait():
        raise SystemExit(f"machine 1 failed ({machine1.returncode})")
    return stage_throughput()


def stage_throughput() -> dict:
    # plots/finetune.csv: one row per log window, with the tokens and training minutes so far.
    rows = list(csv.DictReader(Path("plots/finetune.csv").open()))
    first, last = rows[0], rows[-1]
    return {
        "tokens": int(last["tokens"]) - int(first["tokens"]),
        "seconds": (float(last["train_minutes"]) - float(first["train_minutes"])) * 60,
        "first_window_seconds": float(first["train_minutes"]) * 60,
    }


def measure_seed(raw: dict, work: Path) -> dict:
    """The seed's trainer: batches padded to 256 tokens, fp32, eager attention, AdamW + linear schedule."""
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    from autocoder.format import IGNORE
    from autocoder.params import Params
    from autocoder.train.data import TrainWindows
    from autocoder.train.inputs import check_inputs

    params = Params.model_validate(raw)
    ft, inputs = params.finetune, check_inputs(params)
    pad_id = inputs.tokenizer.pad_token_id

    def pad_to_256(examples):
        input_ids = torch.full((len(examples), SEED_LENGTH), pad_id)
        for row, (ids, _) in enumerate(examples):
            input_ids[row, : len(ids)] = torch.from_numpy(ids)
        mask = (input_ids != pad_id).long()
        return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, IGNORE)}

    set_seed(ft.seed)
    model = AutoModelForCausalLM.from_config(inputs.model_config, attn_implementation="eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=ft.learning_rate, weight_decay=ft.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(ft.warmup_ratio * ft.max_steps), ft.max_steps)
    windows = inputs.corpus.windows(inputs.train_rows, SEED_SEGMENT_LEN, SEED_STRIDE)
    loader = DataLoader(TrainWindows(windows, ft.seed), batch_size=ft.batch_size, collate_fn=pad_to_256)
    model.train()
    tokens, started = 0, time.perf_counter()
    for _, batch in zip(range(ft.max_steps), loader):
        tokens += int(batch["attention_mask"].sum())
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ft.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


# name -> (measurement, finetune params it changes); every variant has the seed's global batch.
VARIANTS = {
    "seed": (measure_seed, {}),
    "ours": (measure_ours, {}),
    "ours-eager": (measure_ours, {"compile": False}),
    "ours-fp32": (measure_ours, {"compile": False, "mixed_precision": "no"}),
    # DDP over gloo, 1 thread each
    "ours-2proc": (measure_ours, {"compile": False, "num_processes": 2, "batch_size": "half"}),
    # two machines on loopback, one process (1 thread) each: DDP over gloo through TCP rendezvous
    "ours-2machines": (measure_two_machines, {"compile": False, "num_processes": 2, "batch_size": "half"}),
}


def variant_params(raw: dict, which: str) -> dict:
    changes = {k: raw["finetune"]["batch_size"] // 2 if v == "half" else v for k, v in VARIANTS[which][1].items()}
    return {**raw, "finetune": {**raw["finetune"], **changes}}


def child(which: str, raw: dict, threads: int) -> dict:
    """Run one measurement in a fresh process (its own threads, no state shared with the others)."""
    with tempfile.TemporaryDirectory() as work:
        Path(work, "raw.json").write_text(json.dumps(variant_params(raw, which)))
        load = os.getloadavg()[0]
        out = subprocess.run(
            [sys.executable, __file__, "--child", which, "--threads", str(threads), work],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
    return {**result, "tokens_per_s": result["tokens"] / result["seconds"], "load_average_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a one-process run (= cores)")
    parser.add_argument("--repeats", type=int, default=2, help="measure each variant this many times; keep the best")
    parser.add_argument("--segments", type=Path, default=ROOT / "data/segments")
    parser.add_argument("--split", type=Path, default=ROOT / "data/split")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("work", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        raw = json.loads(Path(args.work, "raw.json").read_text())
        print(json.dumps(VARIANTS[args.child][0](raw, Path(args.work))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        if (args.segments / "meta.json").exists() and args.split.exists():
            segments, split = args.segments.resolve(), args.split.resolve()
            corpus = str(segments.relative_to(ROOT) if segments.is_relative_to(ROOT) else segments)
        else:
            segments, split = build_corpus(Path(tmp))
            corpus = "the Python standard library's top-level modules"
        raw = base_params(segments, split, args.steps)
        runs: dict[str, list[dict]] = {which: [] for which in args.variants}
        for repeat in range(args.repeats):
            order = args.variants if repeat % 2 == 0 else args.variants[::-1]  # no order bias
            for which in order:
                runs[which].append({**child(which, raw, args.threads), "corpus": corpus})
                print(f"{which}: {runs[which][-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)

    # --variants: a subset replaces those variants' figures in the results and keeps the others'
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() and set(args.variants) != set(VARIANTS) else {}
    runs = {**previous.get("runs", {}), **runs}
    best = {which: max(results, key=lambda r: r["tokens_per_s"]) for which, results in runs.items()}
    ft = raw["finetune"]
    computed = args.steps * ft["batch_size"] * SEED_LENGTH
    report = {
        "corpus": corpus,
        "model": {"scratch": ft["scratch"]},
        "global_batch": ft["batch_size"],
        "recipe": {k: ft[k] for k in ("windows", "max_length", "fim_rate", "mixed_precision", "compile")},
        "steps": args.steps,
        "threads": args.threads,
        "runs": runs,
        "tokens_per_s": {k: round(v["tokens_per_s"], 1) for k, v in best.items()},
    }
    if "seed" in best:
        report["speedup_over_seed"] = {
            k: round(v["tokens_per_s"] / best["seed"]["tokens_per_s"], 2) for k, v in best.items()
        }
        # the share of the seed's computed positions that were padding
        report["seed_padding_share"] = round(1 - best["seed"]["tokens"] / computed, 4)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'loop':<11} {'tokens/s':>9} {'vs seed':>8} {'real tokens':>12} {'seconds':>8} {'load avg':>9}")
    for which, r in best.items():
        speedup = report.get("speedup_over_seed", {}).get(which, math.nan)
        print(
            f"{which:<11} {r['tokens_per_s']:>9.0f} {speedup:>7.2f}x {r['tokens']:>12} "
            f"{r['seconds']:>8.1f} {r['load_average_before']:>9.1f}"
        )
    print(
        f"best of {args.repeats}; {args.steps} steps of {ft['batch_size']} windows; the seed's batches were "
        f"{report.get('seed_padding_share', math.nan):.1%} padding; {corpus}; {RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
