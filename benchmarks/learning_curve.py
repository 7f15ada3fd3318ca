"""Dev bits per byte against training minutes and tokens: the learning curve of the 5M base's model
card (models/autocoder-base/README.md).

    python benchmarks/learning_curve.py NAME=RUN_DIR[@TOKENS_PER_S] [NAME=RUN_DIR ...]
                                        [NAME=EVALUATION.json@MINUTES:TOKENS ...]

RUN_DIR is a project folder after `dvc repro` (its plots/finetune.csv, and metrics/metrics.json
when evaluate ran). For each run it writes benchmarks/results/learning_curve_<NAME>.csv: one row per
dev evaluation of the training (train_minutes, tokens, dev_bits_per_byte on that run's own dev
windows, "finetune dev windows"); rows measured by the evaluate stage's own code (dev bits/byte
over the scored dev files, line completion exact match per language): the run's
metrics/metrics.json at its last step, and benchmarks/results/evaluate_<NAME>-step<N>.json
(benchmarks/evaluate_model.py on the checkpoint of step N) at step N. `dvc plots show` draws the
files (dvc.yaml, plots `learning_curve_minutes` and `learning_curve_tokens`). @TOKENS_PER_S: for a
run that shared the CPU with other jobs (its own clock then says little), train_minutes are its
tokens at this rate, as measured for the same model and recipe on an idle machine. Also writes
benchmarks/results/learning_curve_line_exact_match.csv: those evaluated rows of all the runs given,
one table (plot `learning_curve_line_exact_match`). NAME=EVALUATION.json@MINUTES:TOKENS adds to that
table a model trained outside one run folder (the shipped base, trained in phases on other corpora):
benchmarks/evaluate_model.py's result for it, at its training minutes and tokens in all.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
COLUMNS = [
    "train_minutes",
    "tokens",
    "dev_bits_per_byte",
    "line_exact_match_python",
    "line_exact_match_java",
    "measured_by",
]


def evaluated(row: dict, metrics: dict, how: str) -> dict:
    lines = metrics["line_completion"]
    return {
        "train_minutes": row["train_minutes"],
        "tokens": row["tokens"],
        "dev_bits_per_byte": round(metrics["dev_bits_per_byte"], 4),
        **{f"line_exact_match_{lang}": round(lines[lang]["exact_match"], 4) for lang in lines},
        "measured_by": how,
    }


def curve(name: str, run_dir: Path, tokens_per_s: float | None) -> list[dict]:
    rows = list(csv.DictReader((run_dir / "plots/finetune.csv").open()))
    if tokens_per_s:
        rows = [{**r, "train_minutes": f"{int(r['tokens']) / tokens_per_s / 60:.4g}"} for r in rows]
    by_step = {int(r["step"]): r for r in rows}
    out = [
        {
            "train_minutes": r["train_minutes"],
            "tokens": r["tokens"],
            "dev_bits_per_byte": r["dev_bits_per_byte"],
            "measured_by": "finetune dev windows",
        }
        for r in rows
        if r["dev_bits_per_byte"]
    ]
    for path in sorted(RESULTS.glob(f"evaluate_{name}-step*.json"), key=lambda p: int(p.stem.rsplit("step", 1)[1])):
        step = int(path.stem.rsplit("step", 1)[1])
        out.append(evaluated(by_step[step], json.loads(path.read_text()), f"evaluate_model.py, step {step}"))
    metrics_file = run_dir / "metrics/metrics.json"
    if metrics_file.exists():
        out.append(evaluated(rows[-1], json.loads(metrics_file.read_text()), "evaluate stage"))
    return sorted(out, key=lambda r: float(r["train_minutes"]))


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR[@TOKENS_PER_S]", help="(the module docstring)")
    args = parser.parse_args()
    if not all("=" in arg for arg in args.runs):
        parser.error("each run is NAME=RUN_DIR[@TOKENS_PER_S] or NAME=EVALUATION.json@MINUTES:TOKENS")
    RESULTS.mkdir(parents=True, exist_ok=True)
    measured = []  # the rows of every run measured by the evaluate stage's code: line exact match
    for arg in args.runs:
        name, run_dir = arg.split("=", 1)
        run_dir, _, rate = run_dir.partition("@")
        if run_dir.endswith(".json"):
            minutes, tokens = rate.split(":")
            trained = {"train_minutes": minutes, "tokens": tokens}
            measured.append(
                {"run": name, **evaluated(trained, json.loads(Path(run_dir).read_text()), Path(run_dir).name)}
            )
            continue
        rows = curve(name, Path(run_dir), float(rate) if rate else None)
        write_csv(RESULTS / f"learning_curve_{name}.csv", COLUMNS, rows)
        measured += [{"run": name, **r} for r in rows if r["measured_by"] != "finetune dev windows"]
    write_csv(RESULTS / "learning_curve_line_exact_match.csv", ["run", *COLUMNS], measured)


if __name__ == "__main__":
    main()
