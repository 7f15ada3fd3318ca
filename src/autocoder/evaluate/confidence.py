"""The confidence gate (autocoder.gate), fitted over the line completion and infill examples
together: precision (exact match) against coverage as the confidence threshold varies
(`plots/confidence.csv`, a DVC plot), and the threshold that reaches `target_precision`
(`confidence_gate` in the metrics), stored in the registered model's config for `autocoder serve`."""

from __future__ import annotations

from autocoder import gate
from autocoder.evaluate.measure import STAGE, Inputs, Measure, Result, csv
from autocoder.outputs import CONFIDENCE_PLOT

COLUMNS = ["threshold", "coverage", "precision"]
LINE_MEASURES = ("line_completion", "infill")


def _run(inputs: Inputs) -> Result:
    measured = [e for name in LINE_MEASURES if name in inputs.results for e in inputs.results[name].records]
    fit = gate.fit(
        [e["confidence"] for e in measured], [e["exact_match"] for e in measured], inputs.cfg.target_precision
    )
    print(f"{STAGE}: confidence gate: {_summary(fit)}")
    return Result({"confidence_gate": fit.metrics()}, plots={CONFIDENCE_PLOT: csv(fit.curve, COLUMNS)}, detail=fit)


def _summary(fit: gate.Fit) -> str:
    if fit.threshold is None:
        return (
            f"no threshold reaches precision {fit.target_precision:.0%} (all shown: {fit.precision:.1%} "
            "exactly right); nothing is hidden for low confidence"
        )
    return (
        f"threshold {fit.threshold:.3f} shows {fit.coverage:.1%} of dev completions, {fit.precision:.1%} "
        f"of them exactly right (target {fit.target_precision:.0%})"
    )


CONFIDENCE_GATE = Measure("confidence_gate", _run)
