"""Robustness (ReCode-style, Wang et al. 2022): the same problems with their prompts perturbed in
ways that keep their meaning (perturb.py), scored again: the first `robustness.humaneval_problems`
HumanEval problems under each of perturb.KINDS (needs the humaneval measure), and
`robustness.line_completion_lines` of the line completion draw per language under each of
perturb.LINE_KINDS, the context and the line to predict alike.

Reported per kind: the score on perturbed prompts, its drop relative to the nominal score, and the
robust score (a problem counts when it passes nominally and under every kind).
"""

from __future__ import annotations

import numpy as np

from autocoder import problems as benchmark
from autocoder.evaluate.humaneval import humaneval_scores, limits
from autocoder.evaluate.lines import draw_lines, line_examples
from autocoder.evaluate.measure import STAGE, Inputs, Measure, Result, csv
from autocoder.evaluate.perturb import KINDS, LINE_KINDS, perturb, perturb_line
from autocoder.outputs import ROBUSTNESS_PLOT


def robustness_scores(nominal: list[bool], perturbed: dict[str, list[bool]]) -> dict:
    """Per kind: the share passing perturbed, and its drop relative to nominal; `robust`: the share
    passing nominally and under every kind; `worst_kind_drop`: the largest relative drop."""
    base = float(np.mean(nominal)) if nominal else 0.0
    scores: dict = {"nominal": base}
    for kind, passed in perturbed.items():
        score = float(np.mean(passed)) if passed else 0.0
        scores[kind] = {"score": score, "relative_drop": (base - score) / base if base else 0.0}
    together = np.array([nominal, *perturbed.values()], dtype=bool)
    scores["robust"] = float(together.all(axis=0).mean()) if nominal else 0.0
    scores["worst_kind_drop"] = max((s["relative_drop"] for k, s in scores.items() if k in perturbed), default=0.0)
    return scores


PLOT_COLUMNS = ["case", "score"]


def _humaneval(inputs: Inputs) -> dict:
    """HumanEval's first problems under each perturbation kind, scored as the nominal ones were."""
    cfg, nominal_records = inputs.cfg, inputs.results["humaneval"].records
    tasks = benchmark.load_problems()[: min(cfg.robustness.humaneval_problems, len(nominal_records))]
    print(f"{STAGE}: robustness: {len(tasks)} HumanEval problems under {', '.join(KINDS)}")
    he = cfg.humaneval
    # every kind's variants in one call: full batches (4 kinds of 20 problems: 5 batches of 16, not 8)
    variants = [perturb(problem, kind, cfg.robustness.seed) for kind in KINDS for problem in tasks]
    _, records = humaneval_scores(
        inputs.completer,
        variants,
        limits(he),
        he.max_new_tokens,
        cfg.repetition_penalty,
        batch_size=cfg.batch_size,
        boundary=he.prompt_boundary,
    )
    passed = [r["status"] == "passed" for r in records]
    n = len(tasks)
    perturbed = {kind: passed[i * n : (i + 1) * n] for i, kind in enumerate(KINDS)}
    nominal = [r["status"] == "passed" for r in nominal_records[: len(tasks)]]
    return {"problems": len(tasks), **robustness_scores(nominal, perturbed)}


def _line_completion(inputs: Inputs) -> dict:
    """Per language, `robustness.line_completion_lines` lines of the line completion draw (its first
    lines: see lines.draw_lines), under each kind of LINE_KINDS, scored against their nominal exact match."""
    cfg = inputs.cfg
    n = min(cfg.robustness.line_completion_lines, cfg.line_completion_lines)
    print(f"{STAGE}: robustness: {n} lines per language under {', '.join(LINE_KINDS)}")
    perturbed = {
        kind: line_examples(
            inputs,
            infill=False,
            perturb=lambda lang, context, line, kind=kind: perturb_line(lang, context, line, kind, cfg.robustness.seed),
            n=n,
        )
        for kind in LINE_KINDS
    }
    scores = {}
    for lang in inputs.completer.languages:
        mine = [e for e in inputs.results["line_completion"].records if e["lang"] == lang]
        if mine:
            drawn = draw_lines(inputs, lang, n, "line_completion", 1)
            lines = {(str(inputs.corpus.files["path"][row]), i + 1) for row, i in drawn}
            scores[lang] = robustness_scores(
                [e["exact_match"] for e in mine if (e["path"], e["line"]) in lines],
                {kind: [e["exact_match"] for e in found if e["lang"] == lang] for kind, found in perturbed.items()},
            )
    return scores


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


def _run(inputs: Inputs) -> Result:
    cfg, scores, skipped = inputs.cfg.robustness, {}, {}
    if cfg.humaneval_problems and "humaneval" not in inputs.results:
        skipped["robustness.humaneval"] = f"needs humaneval, which was not run: {inputs.not_run['humaneval']}"
    elif cfg.humaneval_problems:
        scores["humaneval"] = _humaneval(inputs)
    if cfg.line_completion_lines:
        scores["line_completion"] = _line_completion(inputs)
    plot = csv(robustness_rows(scores), PLOT_COLUMNS)
    return Result({"robustness": scores} if scores else {}, plots={ROBUSTNESS_PLOT: plot}, skipped=skipped)


def _off(cfg) -> str | None:
    if cfg.robustness.humaneval_problems or cfg.robustness.line_completion_lines:
        return None
    return "evaluate.robustness.humaneval_problems and line_completion_lines are 0"


ROBUSTNESS = Measure("robustness", _run, off=_off)
