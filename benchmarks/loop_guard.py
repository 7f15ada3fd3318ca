"""The loop guard, on and off: line completion and the seed's prompts under each setting.

    python benchmarks/loop_guard.py [--model DIR] [--lines 200]

Runs the evaluate stage's own measures (autocoder.evaluate: the same seeded dev lines, the same
scoring) on the pipeline's dev split, with the model of models/finetune/best by default, for each
setting of `evaluate.repetition_penalty` and `evaluate.no_repeat_ngram_size` below; the default in
params.yaml is chosen from these numbers (docs/benchmarks.md, "Loop guard"). Writes
benchmarks/results/loop_guard.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autocoder.complete import Completer
from autocoder.corpus import Corpus, split_rows
from autocoder.evaluate.lines import LINE_COMPLETION
from autocoder.evaluate.measure import Inputs, all_metrics, measure_all
from autocoder.evaluate.samples import SAMPLES
from autocoder.params import load_params

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/loop_guard.json"
SETTINGS = {
    "off": {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0},
    "penalty 1.1": {"repetition_penalty": 1.1, "no_repeat_ngram_size": 0},
    "penalty 1.2": {"repetition_penalty": 1.2, "no_repeat_ngram_size": 0},
    "no repeated 8-grams": {"repetition_penalty": 1.0, "no_repeat_ngram_size": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/finetune/best")
    parser.add_argument("--lines", type=int, default=200, help="dev lines per language and measure")
    args = parser.parse_args()
    params = load_params()
    corpus = Corpus(params.segment.out_dir)
    dev_rows = split_rows(corpus, params.split.out_dir, "dev")
    completer = Completer.from_pretrained(args.model)
    report = {"model": args.model, "lines_per_language": args.lines, "settings": {}}
    for name, guard in SETTINGS.items():
        update = {**guard, "line_completion_lines": args.lines, "latency_repeats": 0}
        inputs = Inputs(
            completer, args.model, corpus, dev_rows, dev_rows[:0], params.evaluate.model_copy(update=update)
        )
        measure_all([LINE_COMPLETION, SAMPLES], inputs)
        result = all_metrics(inputs.results)
        del result["latency_ms"]  # latency_repeats is 0: no timed runs
        report["settings"][name] = {**guard, **result}
        print(name, json.dumps(result), flush=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
