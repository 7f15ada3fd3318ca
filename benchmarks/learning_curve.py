"""The learning curve in the README: dev bits per byte against training minutes and tokens.

    python benchmarks/learning_curve.py NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a project folder after `dvc repro` (its plots/finetune.csv, and metrics/metrics.json
when evaluate ran). For each run it writes benchmarks/results/learning_curve_<NAME>.csv: one row per
dev evaluation of the training (train_minutes, tokens, dev_bits_per_byte on that run's own dev
windows), and, when the run was evaluated, a last row with the evaluate stage's figures (dev
bits/byte over the whole scored dev set, line completion exact match per language) at the run's
final minute. `dvc plots show` draws the files (dvc.yaml, plot `learning_curve`).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
COLUMNS = ["train_minutes", "tokens", "dev_bits_per_byte", "line_exact_match_python", "line_exact_match_java",
           "measured_by"]


def curve(run_dir: Path) -> list[dict]:
    rows = [r for r in csv.DictReader((run_dir / "plots/finetune.csv").open()) if r["dev_bits_per_byte"]]
    out = [{"train_minutes": r["train_minutes"], "tokens": r["tokens"], "dev_bits_per_byte": r["dev_bits_per_byte"],
            "measured_by": "finetune dev windows"} for r in rows]
    metrics_file = run_dir / "metrics/metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        lines = metrics["line_completion"]
        out.append({"train_minutes": rows[-1]["train_minutes"], "tokens": rows[-1]["tokens"],
                    "dev_bits_per_byte": round(metrics["dev_bits_per_byte"], 4),
                    **{f"line_exact_match_{lang}": round(lines[lang]["exact_match"], 4) for lang in lines},
                    "measured_by": "evaluate stage"})
    return out


def main() -> None:
    if len(sys.argv) < 2 or any("=" not in arg for arg in sys.argv[1:]):
        sys.exit(__doc__)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for arg in sys.argv[1:]:
        name, run_dir = arg.split("=", 1)
        path = RESULTS / f"learning_curve_{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(curve(Path(run_dir)))
        print(f"{path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
