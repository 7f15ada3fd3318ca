"""Benchmark: HumanEval's prompt boundary, token healing (the evaluate stage's default) against
bigcode-evaluation-harness's convention (the prompt right-stripped), on the same model.

    python benchmarks/humaneval_boundary.py [--model models/finetune/best] [--heal models/evaluate/humaneval.jsonl]

HumanEval prompts end in a newline; a vocabulary with a token for "newline + indentation" never saw a
bare newline before an indented line. The evaluate stage takes the prompt's last token back (token
healing: `evaluate.humaneval.prompt_boundary: heal`); the bigcode harness strips the prompt and
lets the model write the newline (`strip`). This runs the `strip` convention through the same
measure (autocoder.evaluate.humaneval, greedy, the sandbox) with params.yaml's HumanEval settings,
and compares it problem by problem with the `heal` records the evaluate stage wrote (--heal; run
`dvc repro` first). Writes benchmarks/results/humaneval_boundary.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autocoder.complete import Completer
from autocoder.evaluate.humaneval import humaneval_scores, limits
from autocoder.params import load_params
from autocoder.problems import load_problems

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/finetune/best")
    parser.add_argument("--heal", type=Path, default=ROOT / "models/evaluate/humaneval.jsonl")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    cfg, he = params.evaluate, params.evaluate.humaneval
    healed = {r["task_id"]: r["status"] == "passed" for r in map(json.loads, args.heal.read_text().splitlines())}
    completer = Completer.from_pretrained(args.model, onnx=False)
    problems = [p for p in load_problems() if p.task_id in healed]
    scores, records = humaneval_scores(
        completer, problems, limits(he), he.max_new_tokens, cfg.repetition_penalty,
        batch_size=cfg.batch_size, boundary="strip",
    )  # fmt: skip
    stripped = {r["task_id"]: r["status"] == "passed" for r in records}
    result = {
        "model": str(args.model),
        "problems": len(problems),
        "pass_at_1": {"heal": sum(healed.values()) / len(healed), "strip": scores["pass_at_1"]},
        "passed_by_both": sum(healed[t] and stripped[t] for t in stripped),
        "passed_by_heal_only": sorted(t for t in stripped if healed[t] and not stripped[t]),
        "passed_by_strip_only": sorted(t for t in stripped if stripped[t] and not healed[t]),
    }
    out = ROOT / "benchmarks/results/humaneval_boundary.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
