"""What fill-in-the-middle training costs left-to-right completion: dev bits per byte after the same
number of training tokens with finetune.fim_rate 0 and with params.yaml's rate.

    python benchmarks/fim_cost.py [--steps 600] [--rates 0 0.5]

Each rate trains params.yaml's scratch model (finetune.scratch, from the same seed, the same packed
windows in the same order) on the pipeline's data/segments + data/split for --steps optimizer
steps, in a process of its own, with the finetune stage itself; the dev loss is the stage's own
(left-to-right: dev windows are never FIM examples), on finetune.eval_max_windows dev windows.
Writes benchmarks/results/fim_cost.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/fim_cost.json"


def train(rate: float, steps: int) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["segment"]["out_dir"] = str(ROOT / raw["segment"].get("out_dir", "data/segments"))
    raw["split"]["out_dir"] = str(ROOT / raw["split"].get("out_dir", "data/split"))
    raw["finetune"].update(
        model="scratch",
        fim_rate=rate,
        max_steps=steps,
        eval_every=steps,
        checkpoint_every=steps + 1,
        log_every=max(1, steps // 10),
        early_stopping_patience=None,
    )
    with tempfile.TemporaryDirectory() as work:
        Path(work, "params.yaml").write_text(yaml.safe_dump(raw))
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        subprocess.run(
            [sys.executable, "-m", "autocoder.cli", "finetune"],
            cwd=work,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rows = list(csv.DictReader(Path(work, "plots/finetune.csv").open()))
    last = rows[-1]
    return {
        "fim_rate": rate,
        "tokens": int(last["tokens"]),
        "dev_loss": float(last["dev_loss"]),
        "dev_bits_per_byte": float(last["dev_bits_per_byte"]),
        "train_minutes": float(last["train_minutes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.5])
    args = parser.parse_args()
    runs = []
    for rate in args.rates:
        runs.append(train(rate, args.steps))
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["dev_bits_per_byte"]
    report = {
        "steps": args.steps,
        "runs": runs,
        "bits_per_byte_cost_vs_first": {str(r["fim_rate"]): round(r["dev_bits_per_byte"] - base, 4) for r in runs},
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["bits_per_byte_cost_vs_first"]))


if __name__ == "__main__":
    main()
