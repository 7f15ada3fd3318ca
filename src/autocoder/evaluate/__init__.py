"""The evaluate stage: measure the finetuned model on held-out dev files, log it to the finetune's
MLflow run, register it, and make it the champion if it is the best comparable model.

The stage is "measure, write, register". Each measure is one module of this package, with its own
docstring (what it measures, how, and its params) and one interface (measure.Measure):
- perplexity.py: dev perplexity and bits per byte, the dev scorer the finetune uses;
- lines.py: line completion and single-line infilling of dev lines;
- confidence.py: the confidence gate fitted on those lines, stored with the registered model;
- samples.py: the params' prompts, their latency, whether the Python ones parse;
- humaneval.py: HumanEval in the sandbox (sandbox.py), pass@k, contamination; HumanEval infilling;
- javac.py: Java method bodies completed and compiled;
- robustness.py: HumanEval and line completion under meaning-preserving perturbations;
- memorization.py: greedy continuations of train files against dev files.
Every generation uses the loop guard of the params (`repetition_penalty`, `no_repeat_ngram_size`),
except memorization's (pure greedy, its module says why). A measure that cannot run here (no
bubblewrap, no JDK, no FIM tokens) is skipped with a printed line and listed, with why, in
metrics.json's `skipped`; one the params turn off (a count of 0) is only printed.

Outputs: `<out_dir>/samples.md` and `<out_dir>/<measure>.jsonl` (every example of line_completion,
infill, humaneval, humaneval_infilling and javac), `metrics/metrics.json`, the plots
`plots/confidence.csv`, `plots/humaneval_pass_at_k.csv` and `plots/robustness.csv`; the same metrics
(prefixed `eval/`) and files go to the finetune's run.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from transformers import AutoTokenizer

from autocoder import registry, serving
from autocoder.atomic import atomic_dir, write_json, write_text
from autocoder.complete import Completer
from autocoder.corpus import TOKENIZER_DIR, Corpus, split_rows
from autocoder.errors import UserError
from autocoder.evaluate.confidence import COLUMNS as CONFIDENCE_COLUMNS
from autocoder.evaluate.confidence import CONFIDENCE_GATE
from autocoder.evaluate.humaneval import HUMANEVAL, HUMANEVAL_INFILLING, PASS_AT_K_COLUMNS
from autocoder.evaluate.javac import JAVAC
from autocoder.evaluate.lines import INFILL, LINE_COMPLETION
from autocoder.evaluate.measure import STAGE, Inputs, Measure, all_metrics, csv, measure_all
from autocoder.evaluate.memorization import MEMORIZATION
from autocoder.evaluate.perplexity import PERPLEXITY
from autocoder.evaluate.robustness import PLOT_COLUMNS as ROBUSTNESS_COLUMNS
from autocoder.evaluate.robustness import ROBUSTNESS
from autocoder.evaluate.samples import SAMPLES
from autocoder.format import CONTROL_IDS
from autocoder.outputs import CONFIDENCE_PLOT, EVALUATE_METRICS, PASS_AT_K_PLOT, ROBUSTNESS_PLOT
from autocoder.params import Params, generation_settings
from autocoder.scoring import dev_split_hash
from autocoder.tokenizer import fingerprint
from autocoder.tracking import RUN_INFO_FILE, configure, flatten, read_run_info

# in order: the gate needs the line measures, robustness needs line completion and HumanEval
MEASURES: list[Measure] = [
    PERPLEXITY,
    LINE_COMPLETION,
    INFILL,
    CONFIDENCE_GATE,
    SAMPLES,
    HUMANEVAL,
    HUMANEVAL_INFILLING,
    JAVAC,
    ROBUSTNESS,
    MEMORIZATION,
]
# the stage's declared plots, written also when their measure did not run (an empty CSV)
PLOTS = {CONFIDENCE_PLOT: CONFIDENCE_COLUMNS, PASS_AT_K_PLOT: PASS_AT_K_COLUMNS, ROBUSTNESS_PLOT: ROBUSTNESS_COLUMNS}


def run(params: Params) -> None:
    cfg = params.evaluate
    model_dir, corpus, dev_rows, measurement, run_id = _check_inputs(params)
    # PyTorch, not the exported model.onnx: perplexity needs the model itself
    completer = Completer.from_pretrained(model_dir, onnx=False)
    _check_model(completer, corpus, model_dir)
    train_rows = split_rows(corpus, params.split.out_dir, "train")
    inputs = Inputs(completer, str(model_dir), corpus, dev_rows, train_rows, cfg)
    skipped = measure_all(MEASURES, inputs)
    results = inputs.results

    metrics = all_metrics(results)
    metrics["skipped"] = skipped  # so that a missing measure says why
    with atomic_dir(cfg.out_dir) as out:
        for name, result in results.items():
            if result.records is not None:
                (out / f"{name}.jsonl").write_text(
                    "".join(json.dumps(r, sort_keys=True) + "\n" for r in result.records)
                )
            for file, text in result.files.items():
                (out / file).write_text(text)
    write_json(EVALUATE_METRICS, metrics)
    plots = {path: text for result in results.values() for path, text in result.plots.items()}
    for path, columns in PLOTS.items():
        write_text(path, plots.get(path, csv([], columns)))

    with mlflow.start_run(run_id=run_id):
        measured = {k: v for k, v in metrics.items() if k != "skipped"}
        mlflow.log_metrics({f"eval/{k}": v for k, v in flatten(measured, "/").items() if v is not None})
        mlflow.set_tags({f"skipped/{measure}": why for measure, why in skipped.items()})
        mlflow.log_artifacts(cfg.out_dir, STAGE)
        for plot in PLOTS:
            mlflow.log_artifact(str(plot), STAGE)
        threshold = results[CONFIDENCE_GATE.name].detail.threshold
        model_info = serving.log_model(model_dir, list(completer.languages), generation_settings(cfg), threshold)
        decision = registry.register(
            model_info.model_uri,
            cfg.registered_model_name,
            registry.Measurement(
                metrics["dev_bits_per_byte"], results[PERPLEXITY.name].detail, metrics["dev_perplexity"], measurement[0]
            ),
            _registry_scores(metrics),
        )
        mlflow.set_tags({registry.DECISION_TAG: decision.reason, "registered_model_version": decision.version})
        mlflow.log_metric("eval/champion", float(decision.promoted))
    print(f"{STAGE}: metrics in {EVALUATE_METRICS}, samples in {Path(cfg.out_dir) / 'samples.md'}")
    if skipped:  # at the end, where it is seen, not only in the middle of the log
        print(f"{STAGE}: {len(skipped)} measures skipped, missing from {EVALUATE_METRICS} (its `skipped` says why):")
        for measure, why in skipped.items():
            print(f"  {measure}: {why}")


def _registry_scores(metrics: dict) -> dict[str, float]:
    """The scores a registered version is tagged with, and compared on against the champion's."""
    scores = {}
    if "humaneval" in metrics:
        scores["humaneval_pass_at_1"] = metrics["humaneval"]["pass_at_1"]
    if "humaneval" in metrics.get("robustness", {}):
        scores["humaneval_robust_pass_at_1"] = metrics["robustness"]["humaneval"]["robust"]
    return scores


def _check_inputs(params: Params) -> tuple[Path, Corpus, np.ndarray, tuple[str, str], str]:
    """Every check that can fail on bad input, before any model work. Returns the model folder, the
    corpus, the dev rows, (tokenizer fingerprint, dev split hash) of this data, and the run id."""
    model_dir = Path(params.finetune.out_dir) / "best"
    info = read_run_info(params.finetune.out_dir)
    if not (model_dir / "config.json").exists():
        raise UserError(f"finetune.out_dir: {model_dir} holds no model; run the finetune stage first")
    seg_dir, split_dir = Path(params.segment.out_dir), Path(params.split.out_dir)
    try:
        corpus = Corpus(seg_dir)
        dev_rows = split_rows(corpus, split_dir, "dev")
    except FileNotFoundError as e:
        raise UserError(f"segment.out_dir/split.out_dir: {e}; run the earlier stages first (dvc repro)") from None
    if len(dev_rows) == 0:
        raise UserError(f"split.out_dir: {split_dir} has no dev files to evaluate on")
    # What the registry compares must describe the data measured here; the finetune recorded its own.
    tok_fingerprint = fingerprint(AutoTokenizer.from_pretrained(seg_dir / TOKENIZER_DIR, trust_remote_code=False))
    dev_split = dev_split_hash(corpus, dev_rows)
    run_info = Path(params.finetune.out_dir) / RUN_INFO_FILE
    if (tok_fingerprint, dev_split) != (info.get("tokenizer_fingerprint"), info.get("dev_split")):
        raise UserError(
            f"{run_info}: the model was trained on other data (tokenizer or dev split differ from "
            f"{seg_dir} and {split_dir}); rerun the finetune stage"
        )
    store = configure(params.mlflow)
    try:
        mlflow.MlflowClient().get_run(info["run_id"])
    except (KeyError, mlflow.exceptions.MlflowException):
        raise UserError(
            f"{run_info}: run {info.get('run_id')!r} (logged to {info.get('tracking_uri')}) is not in "
            f"the tracking store {store}"
        ) from None
    return model_dir, corpus, dev_rows, (tok_fingerprint, dev_split), info["run_id"]


def _check_model(completer: Completer, corpus: Corpus, model_dir: Path) -> None:
    """The model folder is prompted as the data's windows start: the finetune's format, these ids."""
    if completer.format.name != CONTROL_IDS:
        raise UserError(
            f"{model_dir}: its config.json records no prompt format {CONTROL_IDS!r} (the finetune stage writes it)"
        )
    if completer.languages != corpus.meta.control_token_ids:
        raise UserError(
            f"{model_dir}: control token ids {completer.languages} differ from the corpus' "
            f"{corpus.meta.control_token_ids}"
        )
