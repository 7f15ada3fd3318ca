"""The evaluate stage's measures on any model folder: the learning curve's points and the shipped
base model "as is", on the pipeline's dev split, without registering anything.

    python benchmarks/evaluate_model.py MODEL_DIR [--name NAME] [--lines 200] [--no-infill]
                                        [--segments data/segments --split data/split] [--tokenizer DIR]

Runs the evaluate stage's own measures (autocoder.evaluate: perplexity, line_completion, infill for
a model with FIM tokens, samples) with params.yaml's evaluate settings (--lines overrides the lines
per language), on the corpus of --segments/--split, whose token ids must be the model's (a checkpoint folder without a
tokenizer takes --tokenizer, by default the corpus' own). Writes benchmarks/results/evaluate_<NAME>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from autocoder.complete import Completer
from autocoder.corpus import TOKENIZER_DIR, Corpus, split_rows
from autocoder.evaluate.lines import INFILL, LINE_COMPLETION
from autocoder.evaluate.measure import Inputs, all_metrics, measure_all
from autocoder.evaluate.perplexity import PERPLEXITY
from autocoder.evaluate.samples import SAMPLES
from autocoder.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--lines", type=int, help="dev lines per language (default: params.yaml's)")
    parser.add_argument("--no-infill", action="store_true")
    parser.add_argument("--segments", type=Path, default=ROOT / "data/segments")
    parser.add_argument("--split", type=Path, default=ROOT / "data/split")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the model's, else the corpus')")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    corpus = Corpus(args.segments)
    dev_rows = split_rows(corpus, args.split, "dev")
    tokenizer_dir = args.tokenizer or (
        args.model if (args.model / "tokenizer.json").exists() else args.segments / TOKENIZER_DIR
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, use_safetensors=True)
    completer = Completer(model, AutoTokenizer.from_pretrained(tokenizer_dir))
    lines = {} if args.lines is None else {"line_completion_lines": args.lines, "infill_lines": args.lines}
    cfg = params.evaluate.model_copy(update={**lines, "latency_repeats": 0})
    started = time.perf_counter()
    inputs = Inputs(completer, str(args.model), corpus, dev_rows, split_rows(corpus, args.split, "train"), cfg)
    measures = [PERPLEXITY, LINE_COMPLETION, *([] if args.no_infill else [INFILL]), SAMPLES]
    skipped = measure_all(measures, inputs)
    result = {**all_metrics(inputs.results), "skipped": skipped}
    del result["latency_ms"]  # latency_repeats is 0: no timed runs
    result["seconds"] = round(time.perf_counter() - started, 1)
    name = args.name or args.model.name
    out = ROOT / f"benchmarks/results/evaluate_{name}.json"
    where = {
        key: str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else path.name
        for key, path in (("model", args.model), ("segments", args.segments))
    }
    out.write_text(json.dumps({**where, **result}, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
