"""The evaluate stage: measure the finetuned model on held-out dev files, log it to the finetune's
MLflow run, register it, and make it the champion if it is the best comparable model.

- Dev perplexity: the dev scorer the finetune picks its checkpoint with (autocoder.scoring: every
  token of the scored dev files predicted once, and each file's eos, in non-overlapping windows of
  segment_len tokens after the language's control token). Files go in a seeded order until
  `perplexity_max_bytes` (bytes, not tokens: models of any tokenizer score the same files); the
  perplexity is token-weighted. Bits per byte = the total negative log-likelihood in bits / the UTF-8
  bytes of the scored text: comparable across tokenizers, and the registry's champion rule.
- Line completion (CodeXGLUE-style): per language `line_completion_lines` distinct (file, line)
  pairs drawn uniformly (seeded) from the non-blank lines, not a file's first, of that language's dev
  files (several lines of one file may be drawn); the context is the file before that line, cut to
  its last `line_completion_max_context` tokens; the model completes greedily until a newline, at
  most `line_max_new_tokens` tokens.
- Single-line infilling (models with fill-in-the-middle tokens only; otherwise skipped, with one
  printed line): per language `infill_lines` seeded non-blank dev lines are removed; the model sees
  the text before the line (prefix, ending with its newline) and after it (suffix, from the next
  line on), at most `infill_max_context` tokens of both (the suffix at most a quarter), and writes
  the middle greedily until a newline or eos.
- Both line measures are token-healed (complete.py): their context ends with the line break before the
  target line.
- Both line measures, per language: exact match (CodeXGLUE's: the whitespace-split tokens of the
  predicted and the true line are equal), edit similarity (difflib.SequenceMatcher ratio, 0..1, no
  autojunk, of both lines with the whitespace around them stripped), `hit_max_new_tokens` (the share
  of completions that ran to the token limit without ending their line) and `repeats` (the share of
  completions that repeat themselves: the same token 4-gram (tokens of the model's tokenizer, at
  least one of them with a letter or digit) occurs three or more times in the predicted text,
  overlapping occurrences counted (a repeated longer n-gram repeats its first 4 tokens too), or the
  predicted line repeats the line above (gate.repeats_line_above, as the server's gate hides it)).
- The confidence gate (autocoder.gate), fitted over both line measures together: precision (exact
  match) against coverage as the confidence threshold varies (`plots/confidence.csv`, a DVC plot),
  and the threshold that reaches `target_precision` (`confidence_gate` in the metrics), stored in the
  registered model's config for `autocoder serve`.
- Samples: the params' prompts completed greedily (`samples.md`, with whether each Python one parses:
  `ast.parse(prompt + completion)`), their latency p50/p95, and `samples`: how many ended by
  themselves (a blank line or eos, not max_new_tokens), out of how many, and the share of Python
  samples that parse.
- HumanEval (evaluate/humaneval.py): the problems' greedy completions, each run with the problem's
  tests in the sandbox (evaluate/sandbox.py; skipped, with one printed line, where bubblewrap is
  missing): pass@1, pass@k from samples (`humaneval.samples`), and `contaminated_problems`, those
  sharing a `contamination_ngram`-token span with a train file. The registered version is tagged
  with its pass@1, and with `quality_regression` when that is below the champion's. HumanEval
  infilling (`humaneval.infilling`, a FIM model): the seeded tasks' middles executed with the tests
  (pass rate) and compared with the removed lines (exact match). pass@k: `plots/humaneval_pass_at_k.csv`.
- Robustness (evaluate/robustness.py): the first `robustness.humaneval_problems` HumanEval problems
  under each perturbation kind, and `robustness.line_completion_lines` of the line completion draw
  per language under each of robustness.LINE_KINDS: nominal and perturbed scores, the relative drop,
  the robust score (the version is tagged with HumanEval's); `plots/robustness.csv`.
- Java compilation (evaluate/javac.py): method bodies of Java dev files completed and compiled with
  `javac.command` in the sandbox, the share that compiles (skipped, with one line, without a JDK).
- Memorization (evaluate/memorization.py): greedy continuations of train files against dev files.
- Every generation here uses the loop guard of the params (`repetition_penalty`,
  `no_repeat_ngram_size`), except memorization's (pure greedy, its module says why).

Outputs: `<out_dir>/samples.md`, `<out_dir>/line_completion.jsonl`, `<out_dir>/infill.jsonl`,
`<out_dir>/humaneval.jsonl`, `humaneval_infilling.jsonl` and `javac.jsonl` (every example),
`metrics/metrics.json`, the plots `plots/confidence.csv`, `plots/humaneval_pass_at_k.csv` and
`plots/robustness.csv`; the same metrics (prefixed `eval/`) and files go to the finetune's run.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from autocoder import gate, problems, registry, serving
from autocoder.atomic import atomic_dir, write_json, write_text
from autocoder.complete import Completer, Completion, Decoding
from autocoder.corpus import TOKENIZER_DIR, Corpus, split_rows
from autocoder.errors import UserError
from autocoder.evaluate import humaneval, javac, robustness, sandbox
from autocoder.evaluate.match import edit_similarity, exact_match
from autocoder.evaluate.memorization import memorization
from autocoder.format import BLANK_LINE, CONTROL_IDS, END_OF_LINE, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from autocoder.ngrams import ngram_hashes
from autocoder.params import EvaluateParams, HumanEvalParams, Params, generation_settings
from autocoder.scoring import DevScore, DevWindows, dev_split_hash, summed_nll
from autocoder.tokenizer import fingerprint
from autocoder.tracking import RUN_INFO_FILE, configure, flatten, read_run_info

METRICS_FILE = Path("metrics/metrics.json")
CONFIDENCE_PLOT = Path("plots/confidence.csv")  # the gate's precision against coverage
PASS_AT_K_PLOT = Path("plots/humaneval_pass_at_k.csv")  # HumanEval pass@k against k
ROBUSTNESS_PLOT = Path("plots/robustness.csv")  # each measure's score, nominal and under each perturbation
STAGE = "evaluate"
REPEAT_NGRAM, REPEAT_TIMES = 4, 3  # a completion "repeats" when a token 4-gram occurs 3+ times
PROGRESS = {"mininterval": 5}  # tqdm: a progress line every 5 s at most, not to flood DVC's log


def run(params: Params) -> None:
    cfg = params.evaluate
    model_dir, corpus, dev_rows, measurement, run_id = _check_inputs(params)
    # PyTorch, not the exported model.onnx: perplexity needs the model itself
    completer = Completer.from_pretrained(model_dir, onnx=False)
    _check_model(completer, corpus, model_dir)

    print(f"{STAGE}: scoring dev perplexity")
    perplexity, dev_files = dev_perplexity(completer, corpus, dev_rows, cfg)
    print(
        f"{STAGE}: dev perplexity {perplexity['dev_perplexity']:.4g}, "
        f"{perplexity['dev_bits_per_byte']:.4g} bits/byte over {perplexity['dev_tokens']} tokens"
    )
    languages = list(params.languages)
    examples = line_completion_examples(completer, corpus, dev_rows, cfg)
    metrics = {**perplexity, "line_completion": line_completion_scores(examples, languages)}
    skipped: dict[str, str] = {}  # measure -> why; in metrics.json, so that a missing measure says why

    def skip(measure: str, why: str) -> None:
        skipped[measure] = why
        print(f"{STAGE}: {measure} skipped: {why}")

    infill = None
    if cfg.infill_lines == 0:
        print(f"{STAGE}: infill skipped: evaluate.infill_lines is 0")  # asked for: not a missing measure
    elif not completer.can_infill:
        skip("infill", f"the model has no fill-in-the-middle tokens ({FIM_PREFIX}, {FIM_SUFFIX}, {FIM_MIDDLE})")
    else:
        infill = infill_examples(completer, corpus, dev_rows, cfg)
        metrics["infill"] = line_completion_scores(infill, languages)
    measured = examples + (infill or [])
    confidence_gate = gate.fit(
        [e["confidence"] for e in measured], [e["exact_match"] for e in measured], cfg.target_precision
    )
    metrics["confidence_gate"] = confidence_gate.metrics()
    print(f"{STAGE}: confidence gate: {_gate_line(confidence_gate)}")
    samples, latencies = sample_prompts(completer, cfg)
    metrics["samples"] = samples_summary(samples)
    metrics["latency_ms"] = {
        "p50": float(np.percentile(latencies, 50)) if latencies else None,
        "p95": float(np.percentile(latencies, 95)) if latencies else None,
    }
    train_rows = split_rows(corpus, params.split.out_dir, "train")
    humaneval_records = None
    no_humaneval = _humaneval_skipped(completer, cfg)
    if no_humaneval is not None:
        skip("humaneval", no_humaneval)
    else:
        metrics["humaneval"], humaneval_records = _humaneval(completer, corpus, train_rows, cfg)
    infilling_records = None
    if cfg.humaneval.infilling.tasks != 0:
        if no_humaneval is not None:
            skip("humaneval_infilling", no_humaneval)
        elif completer.can_infill:
            metrics["humaneval_infilling"], infilling_records = _humaneval_infilling(completer, cfg)
        else:
            skip("humaneval_infilling", "the model has no fill-in-the-middle tokens")
    javac_records = None
    if cfg.javac.methods and "java" in completer.languages:
        if (no_javac := sandbox.unavailable() or javac.unavailable(cfg.javac.command)) is not None:
            skip("javac", no_javac)
        else:
            metrics["javac"], javac_records = _javac(completer, corpus, dev_rows, cfg)
    if cfg.robustness.humaneval_problems and humaneval_records is None:
        skip("robustness.humaneval", f"needs humaneval, which was skipped: {no_humaneval}")
    elif cfg.robustness.humaneval_problems:
        metrics["robustness"] = {"humaneval": _humaneval_robustness(completer, humaneval_records, cfg)}
    if cfg.robustness.line_completion_lines:
        metrics.setdefault("robustness", {})["line_completion"] = _line_completion_robustness(
            completer, corpus, dev_rows, cfg, examples
        )
    if cfg.memorization.files:
        print(f"{STAGE}: memorization of {cfg.memorization.files} train and dev files")
        sides = {"train": train_rows, "dev": dev_rows}
        metrics["memorization"] = memorization(completer, corpus, sides, cfg.memorization, cfg.seed, cfg.batch_size)

    with atomic_dir(cfg.out_dir) as out:
        (out / "samples.md").write_text(samples_markdown(samples, model_dir, cfg))
        (out / "line_completion.jsonl").write_text(_jsonl(examples))
        if infill is not None:
            (out / "infill.jsonl").write_text(_jsonl(infill))
        if humaneval_records is not None:
            (out / "humaneval.jsonl").write_text(_jsonl(humaneval_records))
        if infilling_records is not None:
            (out / "humaneval_infilling.jsonl").write_text(_jsonl(infilling_records))
        if javac_records is not None:
            (out / "javac.jsonl").write_text(_jsonl(javac_records))
    metrics["skipped"] = skipped
    write_json(METRICS_FILE, metrics)
    write_text(CONFIDENCE_PLOT, _csv(confidence_gate.curve, ["threshold", "coverage", "precision"]))
    # written also when empty (HumanEval skipped): they are the stage's declared plots
    write_text(PASS_AT_K_PLOT, _csv(pass_at_k_rows(metrics.get("humaneval", {})), ["k", "pass_at_k"]))
    write_text(ROBUSTNESS_PLOT, _csv(robustness_rows(metrics.get("robustness", {})), ["case", "score"]))

    with mlflow.start_run(run_id=run_id):
        measured = {k: v for k, v in metrics.items() if k != "skipped"}
        mlflow.log_metrics({f"eval/{k}": v for k, v in flatten(measured, "/").items() if v is not None})
        mlflow.set_tags({f"skipped/{measure}": why for measure, why in skipped.items()})
        mlflow.log_artifacts(cfg.out_dir, STAGE)
        for plot in (CONFIDENCE_PLOT, PASS_AT_K_PLOT, ROBUSTNESS_PLOT):
            mlflow.log_artifact(str(plot), STAGE)
        model_info = serving.log_model(
            model_dir, list(completer.languages), generation_settings(params.evaluate), confidence_gate.threshold
        )
        decision = registry.register(
            model_info.model_uri,
            cfg.registered_model_name,
            registry.Measurement(
                perplexity["dev_bits_per_byte"], dev_files, perplexity["dev_perplexity"], measurement[0]
            ),
            _registry_scores(metrics),
        )
        mlflow.set_tags({registry.DECISION_TAG: decision.reason, "registered_model_version": decision.version})
        mlflow.log_metric("eval/champion", float(decision.promoted))
    print(f"{STAGE}: metrics in {METRICS_FILE}, samples in {Path(cfg.out_dir) / 'samples.md'}")
    if skipped:  # at the end, where it is seen, not only in the middle of the log
        print(f"{STAGE}: {len(skipped)} measures skipped, missing from {METRICS_FILE} (its `skipped` says why):")
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


def _humaneval_skipped(completer: Completer, cfg: EvaluateParams) -> str | None:
    """Why HumanEval is not measured, in one line; None when it is."""
    if cfg.humaneval.problems == 0:
        return "evaluate.humaneval.problems is 0"
    if "python" not in completer.languages:
        return "the model has no python control token"
    return sandbox.unavailable()


def _humaneval(completer: Completer, corpus: Corpus, train_rows: np.ndarray, cfg: EvaluateParams) -> tuple[dict, list]:
    he = cfg.humaneval
    tasks = problems.load_problems()[: he.problems]
    print(f"{STAGE}: humaneval: {len(tasks)} problems, each completion run in the sandbox")
    scores, records = humaneval.humaneval_scores(
        completer,
        tasks,
        _limits(he),
        he.max_new_tokens,
        cfg.repetition_penalty,
        he.samples,
        tuple(he.ks),
        he.temperature,
        he.top_p,
        cfg.batch_size,
        he.prompt_boundary,
    )
    n = he.contamination_ngram
    encode = completer.tokenizer.encode
    hashes = ngram_hashes(corpus.tokens, n)
    leaked = set(problems.problems_sharing_a_span(tasks, encode, corpus, hashes, train_rows, n))
    scores["contaminated_problems"] = len(leaked)
    for record in records:
        record["contaminated"] = record["task_id"] in leaked
    print(f"{STAGE}: humaneval pass@1 {scores['pass_at_1']:.4f}; {len(leaked)} problems share a span with train")
    return scores, records


def _line_completion_robustness(
    completer: Completer, corpus: Corpus, dev_rows: np.ndarray, cfg: EvaluateParams, nominal: list[dict]
) -> dict:
    """Per language, `robustness.line_completion_lines` lines of the line completion draw (a subset of
    it: see _draw_lines), under each kind of robustness.LINE_KINDS, scored against their nominal exact
    match."""
    n = min(cfg.robustness.line_completion_lines, cfg.line_completion_lines)
    print(f"{STAGE}: robustness: {n} lines per language under {', '.join(robustness.LINE_KINDS)}")
    perturbed = {
        kind: line_completion_examples(
            completer,
            corpus,
            dev_rows,
            cfg,
            lambda lang, context, line, kind=kind: robustness.perturb_line(
                lang, context, line, kind, cfg.robustness.seed
            ),
            n,
        )
        for kind in robustness.LINE_KINDS
    }
    scores = {}
    for lang in completer.languages:
        mine = [e for e in nominal if e["lang"] == lang]
        if mine:
            drawn = _draw_lines(completer, corpus, dev_rows, lang, n, _lang_seed(cfg, lang, "line_completion"), 1)
            lines = {(str(corpus.files["path"][row]), i + 1) for row, i in drawn}
            scores[lang] = robustness.robustness_scores(
                [e["exact_match"] for e in mine if (e["path"], e["line"]) in lines],
                {kind: [e["exact_match"] for e in found if e["lang"] == lang] for kind, found in perturbed.items()},
            )
    return scores


def _limits(he: HumanEvalParams) -> sandbox.Limits:
    """The sandbox's limits for one HumanEval program."""
    return sandbox.Limits(wall_s=he.timeout_s, cpu_s=math.ceil(he.timeout_s), memory_mb=he.memory_mb)


def _humaneval_infilling(completer: Completer, cfg: EvaluateParams) -> tuple[dict, list]:
    infilling = cfg.humaneval.infilling
    tasks = problems.load_infilling_problems(infilling.benchmark, infilling.tasks, cfg.seed)
    print(f"{STAGE}: humaneval infilling ({infilling.benchmark}): {len(tasks)} tasks, each run in the sandbox")
    scores, records = humaneval.infilling_scores(
        completer,
        tasks,
        _limits(cfg.humaneval),
        infilling.max_new_tokens,
        multi_line=infilling.benchmark == "multi_line",
        repetition_penalty=cfg.repetition_penalty,
        batch_size=cfg.batch_size,
    )
    print(f"{STAGE}: humaneval infilling pass rate {scores['pass_rate']:.4f}, exact match {scores['exact_match']:.4f}")
    return {infilling.benchmark: scores}, records


def _javac(completer: Completer, corpus: Corpus, dev_rows: np.ndarray, cfg: EvaluateParams) -> tuple[dict, list]:
    java = [int(r) for r in dev_rows if corpus.files["language"][r] == "java"]
    files = [(str(corpus.files["path"][r]), _file_text(completer, corpus, r)) for r in java]
    print(f"{STAGE}: java: {cfg.javac.methods} method bodies of dev files completed and compiled ({cfg.javac.command})")
    scores, records = javac.javac_scores(
        completer,
        files,
        cfg.javac.command,
        cfg.javac.methods,
        cfg.javac.max_new_tokens,
        cfg.javac.max_context,
        cfg.seed,
        cfg.repetition_penalty,
        cfg.batch_size,
    )
    print(f"{STAGE}: java: {scores['compiles']:.1%} of {scores['methods']} completed bodies compile")
    return scores, records


def _humaneval_robustness(completer: Completer, nominal_records: list[dict], cfg: EvaluateParams) -> dict:
    """HumanEval's first problems under each perturbation kind, scored as the nominal ones were."""
    tasks = problems.load_problems()[: min(cfg.robustness.humaneval_problems, len(nominal_records))]
    print(f"{STAGE}: robustness: {len(tasks)} HumanEval problems under {', '.join(robustness.KINDS)}")
    he = cfg.humaneval
    # every kind's variants in one call: full batches (4 kinds of 20 problems: 5 batches of 16, not 8)
    variants = [
        robustness.perturb(problem, kind, cfg.robustness.seed) for kind in robustness.KINDS for problem in tasks
    ]
    _, records = humaneval.humaneval_scores(
        completer,
        variants,
        _limits(he),
        he.max_new_tokens,
        cfg.repetition_penalty,
        batch_size=cfg.batch_size,
        boundary=he.prompt_boundary,
    )
    passed = [r["status"] == "passed" for r in records]
    n = len(tasks)
    perturbed = {kind: passed[i * n : (i + 1) * n] for i, kind in enumerate(robustness.KINDS)}
    nominal = [r["status"] == "passed" for r in nominal_records[: len(tasks)]]
    return {"problems": len(tasks), **robustness.robustness_scores(nominal, perturbed)}


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


def _seeded_order(rows: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(rows)


def _file_text(completer: Completer, corpus: Corpus, row: int) -> str:
    return completer.tokenizer.decode(corpus.file_tokens(row).tolist(), clean_up_tokenization_spaces=False)


@torch.inference_mode()
def dev_perplexity(completer: Completer, corpus: Corpus, rows: np.ndarray, cfg: EvaluateParams) -> tuple[dict, str]:
    """The dev scorer's scores of whole dev files, and a hash of the scored files' contents (what the
    registry compares over)."""
    picked, n_bytes = [], 0
    for row in _seeded_order(rows, cfg.seed):
        picked.append(int(row))
        n_bytes += len(_file_text(completer, corpus, int(row)).encode())
        if cfg.perplexity_max_bytes and n_bytes >= cfg.perplexity_max_bytes:
            break
    length = min(corpus.meta.segment_len, completer.config.max_position_embeddings - 2)  # control token, eos
    dev_set = DevWindows(corpus.windows(np.array(picked), length, length), None, completer.tokenizer)
    if len(dev_set) == 0:
        raise UserError("split.out_dir: the dev files have no tokens to score")
    progress = partial(tqdm, desc=f"{STAGE}: dev perplexity", unit="batch", **PROGRESS)
    pad_id = completer.tokenizer.pad_token_id
    nll, tokens = summed_nll(completer.model, dev_set, cfg.batch_size, pad_id, completer.device, progress).tolist()
    score = DevScore(nll, int(tokens), dev_set.n_bytes)
    scored = sorted(str(corpus.files["sha256"][row]) for row in picked)
    return {
        "dev_perplexity": score.perplexity,
        "dev_bits_per_byte": score.bits_per_byte,
        "dev_tokens": score.tokens,
        "dev_bytes": score.n_bytes,
        "dev_files": len(picked),
    }, hashlib.sha256("\n".join(scored).encode()).hexdigest()


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def _csv(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return value if isinstance(value, str) else f"{value:.6g}"

    return ",".join(columns) + "\n" + "".join(",".join(cell(row[c]) for c in columns) + "\n" for row in rows)


def pass_at_k_rows(scores: dict) -> list[dict]:
    """HumanEval's pass@k by k: the sampled estimates, or greedy pass@1 alone without samples."""
    sampled = scores.get("sampled", {})
    ks = sorted(int(key.removeprefix("pass_at_")) for key in sampled if key.startswith("pass_at_"))
    if ks:
        return [{"k": k, "pass_at_k": sampled[f"pass_at_{k}"]} for k in ks]
    return [{"k": 1, "pass_at_k": scores["pass_at_1"]}] if "pass_at_1" in scores else []


def robustness_rows(scores: dict) -> list[dict]:
    """One row per (measure, nominal or perturbation kind): "humaneval / whitespace", "line completion
    python / nominal", ... with its score, from the metrics' `robustness` section."""
    measures = {}
    if "humaneval" in scores:
        measures["humaneval"] = scores["humaneval"]
    for lang, lang_scores in scores.get("line_completion", {}).items():
        measures[f"line completion {lang}"] = lang_scores
    return [
        {"case": f"{measure} / {kind}", "score": value["score"] if isinstance(value, dict) else value}
        for measure, kinds in measures.items()
        for kind, value in kinds.items()
        if kind == "nominal" or kind == "robust" or isinstance(value, dict)
    ]


def _gate_line(fit: gate.Fit) -> str:
    if fit.threshold is None:
        return (
            f"no threshold reaches precision {fit.target_precision:.0%} (all shown: {fit.precision:.1%} "
            "exactly right); nothing is hidden for low confidence"
        )
    return (
        f"threshold {fit.threshold:.3f} shows {fit.coverage:.1%} of dev completions, {fit.precision:.1%} "
        f"of them exactly right (target {fit.target_precision:.0%})"
    )


def _generation(cfg: EvaluateParams) -> dict:
    """The loop guard every generation of this stage uses (max_new_tokens is per task)."""
    return {k: v for k, v in generation_settings(cfg).items() if k != "max_new_tokens"}


def _lines(completer: Completer, corpus: Corpus, row: int) -> list[str]:
    return _file_text(completer, corpus, row).split("\n")  # not splitlines(): "\f" is no line end here


def _draw_lines(
    completer: Completer, corpus: Corpus, rows: np.ndarray, lang: str, n: int, seed: list[int], first: int
) -> list[tuple[int, int]]:
    """`n` distinct (row, line index) pairs, drawn uniformly with `seed` from the non-blank lines
    (index >= first) of the dev files of `lang` (all of them when there are fewer), in file order."""
    candidates = []  # (row, line index)
    for row in sorted(int(r) for r in rows if corpus.files["language"][r] == lang):
        lines = _lines(completer, corpus, row)
        candidates += [(row, i) for i in range(first, len(lines)) if lines[i].strip()]
    if not candidates or n == 0:
        return []
    # the first n of a seeded permutation: a smaller n draws a subset of a larger n's lines (robustness)
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:n]
    return [candidates[k] for k in sorted(chosen)]


def _lang_seed(cfg: EvaluateParams, lang: str, measure: str) -> list[int]:
    return [cfg.seed, zlib.crc32(lang.encode()), zlib.crc32(measure.encode())]


def _line_examples(
    completer: Completer,
    corpus: Corpus,
    rows: np.ndarray,
    cfg: EvaluateParams,
    infill: bool,
    perturb: Callable[[str, str, str], tuple[str, str]] | None = None,
    n: int | None = None,
) -> list[dict]:
    measure = "infill" if infill else "line_completion"
    n = n if n is not None else cfg.infill_lines if infill else cfg.line_completion_lines
    # Line completion needs a left context: never a file's first line; infilling can do without one.
    drawn = [
        (lang, row, i)
        for lang in completer.languages
        for row, i in _draw_lines(
            completer, corpus, rows, lang, n, _lang_seed(cfg, lang, measure), first=0 if infill else 1
        )
    ]
    requests, targets, cached = [], [], (None, [])
    for lang, row, i in drawn:
        if cached[0] != row:
            cached = (row, _lines(completer, corpus, row))
        lines = cached[1]
        prefix = "\n".join(lines[:i]) + "\n" if i else ""
        if perturb is not None:  # the context and the line to predict, perturbed alike
            prefix, target = perturb(lang, prefix, lines[i])
            lines, i = (prefix + target).split("\n"), prefix.count("\n")  # the cached file is untouched
        requests.append(
            {
                "lang": lang,
                "context": prefix,
                "stop": END_OF_LINE,
                "suffix": "\n".join(lines[i + 1 :]) if infill else None,
                "max_context_tokens": cfg.infill_max_context if infill else cfg.line_completion_max_context,
            }
        )
        targets.append((lang, str(corpus.files["path"][row]), lines, i))
    completions = complete_all(completer, requests, cfg, cfg.line_max_new_tokens, measure.replace("_", " "))
    return [line_example(completer, *target, completion) for target, completion in zip(targets, completions)]


def complete_all(completer: Completer, requests: list[dict], cfg: EvaluateParams, max_new_tokens: int, what: str):
    """Greedy completions of `requests` with the stage's loop guard, `evaluate.batch_size` at a time."""
    decoding = Decoding(max_new_tokens=max_new_tokens, **_generation(cfg))
    with tqdm(total=len(requests), desc=f"{STAGE}: {what}", unit="prompt", **PROGRESS) as bar:
        return completer.complete_many(requests, cfg.batch_size, decoding, bar.update)


def line_completion_examples(
    completer: Completer,
    corpus: Corpus,
    rows: np.ndarray,
    cfg: EvaluateParams,
    perturb: Callable[[str, str, str], tuple[str, str]] | None = None,
    n: int | None = None,
) -> list[dict]:
    """Each drawn line completed from the file before it (the module docstring); with `perturb`
    ((lang, context, line) -> (context, line)), both perturbed (robustness); `n` lines per language
    instead of `line_completion_lines` (the first n of the same draw when fewer)."""
    return _line_examples(completer, corpus, rows, cfg, infill=False, perturb=perturb, n=n)


def infill_examples(completer: Completer, corpus: Corpus, rows: np.ndarray, cfg: EvaluateParams) -> list[dict]:
    """Each drawn line filled in between the file before it and the file after it (a FIM model only)."""
    return _line_examples(completer, corpus, rows, cfg, infill=True)


def line_example(completer: Completer, lang: str, path: str, lines: list[str], i: int, completion: Completion) -> dict:
    target, predicted = lines[i].rstrip("\r"), completion.text
    above = lines[i - 1].rstrip("\r") if i else ""
    return {
        "lang": lang,
        "path": path,
        "line": i + 1,
        "target": target,
        "predicted": predicted,
        "stop": completion.stop,
        "exact_match": exact_match(predicted, target),
        "edit_similarity": edit_similarity(predicted, target),
        "repeats": repeats(completer.tokenizer, predicted, above),
        "confidence": completion.confidence,
    }


def repeats(tokenizer, predicted: str, line_above: str) -> bool:
    """Whether a completion repeats itself (the module docstring): a token 4-gram with a letter or a
    digit in it occurs at least 3 times in `predicted`, or `predicted` is the line above again."""
    if gate.repeats_line_above(predicted, line_above):
        return True
    ids = tokenizer.encode(predicted, add_special_tokens=False)
    counts = Counter(tuple(ids[k : k + REPEAT_NGRAM]) for k in range(len(ids) - REPEAT_NGRAM + 1))
    return any(
        times >= REPEAT_TIMES and any(c.isalnum() for c in tokenizer.decode(list(gram)))
        for gram, times in counts.items()
    )


def line_completion_scores(examples: list[dict], languages: list[str]) -> dict:
    """Per language: the means of the line measures over its examples (line completion or infill)."""
    scores = {}
    for lang in languages:
        mine = [e for e in examples if e["lang"] == lang]
        if mine:
            scores[lang] = {
                "exact_match": float(np.mean([e["exact_match"] for e in mine])),
                "edit_similarity": float(np.mean([e["edit_similarity"] for e in mine])),
                "hit_max_new_tokens": float(np.mean([e["stop"] == "length" for e in mine])),
                "repeats": float(np.mean([e["repeats"] for e in mine])),
                "lines": len(mine),
            }
    return scores


def parses(lang: str, prompt: str, completion: Completion) -> bool | None:
    """Whether a Python sample parses (`ast.parse(prompt + completion)`); None for other languages."""
    if lang != "python":
        return None
    try:
        ast.parse(prompt + completion.text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def sample_prompts(completer: Completer, cfg: EvaluateParams) -> tuple[list[tuple], list[float]]:
    """Greedy completions of the params' prompts ((lang, prompt, Completion, parses) each) and the
    latency in ms of `latency_repeats` timed runs of each, after one untimed run that warms the model up."""
    samples, latencies = [], []
    prompts = [(lang, prompt) for lang, some in cfg.prompts.items() for prompt in some]
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "stop": BLANK_LINE, **_generation(cfg)}
    for lang, prompt in tqdm(prompts, desc=f"{STAGE}: samples", unit="prompt", **PROGRESS):
        [completion] = completer.complete(lang, prompt, **kwargs)
        samples.append((lang, prompt, completion, parses(lang, prompt, completion)))
        for _ in range(cfg.latency_repeats):
            start = time.perf_counter()
            completer.complete(lang, prompt, **kwargs)
            latencies.append((time.perf_counter() - start) * 1000)
    return samples, latencies


def samples_summary(samples: list[tuple]) -> dict:
    """How many samples ended by themselves (a blank line or eos), of how many; the share of the
    Python ones that parse (None without Python samples)."""
    python = [ok for _, _, _, ok in samples if ok is not None]
    return {
        "ended": sum(c.stop != "length" for _, _, c, _ in samples),
        "total": len(samples),
        "python_parse": float(np.mean(python)) if python else None,
    }


STOPPED_BY = {"pattern": "a blank line", "eos": "end of text", "length": "max_new_tokens"}


def samples_markdown(samples: list[tuple], model_dir: Path, cfg: EvaluateParams) -> str:
    guard = "".join(
        [
            f", repetition penalty {cfg.repetition_penalty}" if cfg.repetition_penalty != 1.0 else "",
            f", no repeated {cfg.no_repeat_ngram_size}-grams" if cfg.no_repeat_ngram_size else "",
        ]
    )
    out = [
        f"# Sample completions\n\nModel `{model_dir}`: greedy{guard}, at most {cfg.max_new_tokens} new "
        "tokens, stopping at a blank line. Confidence = mean log-probability of the generated tokens. "
        "Python samples: whether the prompt + completion parse (`ast.parse`).\n"
    ]
    for lang, prompt, c, ok in samples:
        parsed = "" if ok is None else (", parses" if ok else ", does not parse")
        out.append(
            f"## {lang}: `{prompt}`\n\n{c.n_tokens} tokens, confidence {c.confidence:.3f}, "
            f"stopped by {STOPPED_BY[c.stop]}{parsed}\n\n````{lang}\n{prompt}{c.text}\n````\n"
        )
    return "\n".join(out)
