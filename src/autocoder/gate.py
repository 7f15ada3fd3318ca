"""The confidence gate: which completions an editor should show.

Fitted by the evaluate stage on the dev line completions and infills it measures: ordered by their
confidence (mean token log-probability), each threshold shows the completions at or above it; the
curve is their precision (the share exactly right) against their coverage (the share shown). The
threshold kept is the lowest whose precision reaches `evaluate.target_precision` (the most shown at
that precision), over at least MIN_SHOWN completions so that a handful of lucky lines do not decide
it; none when no threshold reaches it. It is stored with the registered model.

The server also drops what editors' users complain about, whatever the confidence: completions
with fewer than MIN_CHARS visible characters, that make the line repeat the line above, or that
only retype the text after the cursor.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SHOWN_SHARE, MIN_SHOWN = 0.02, 10  # a threshold must show at least max(2%, 10) completions
MIN_CHARS = 3
CURVE_POINTS = 100  # rows of the precision/coverage curve written as a plot


@dataclass(frozen=True)
class Fit:
    threshold: float | None  # None: no threshold reaches the target precision
    coverage: float  # at the threshold (1.0 without one: nothing hidden)
    precision: float
    target_precision: float
    curve: list[dict]  # {"threshold", "coverage", "precision"}, coverage rising

    def metrics(self) -> dict:
        return {
            "target_precision": self.target_precision,
            "threshold": self.threshold,
            "coverage": self.coverage,
            "precision": self.precision,
        }


def fit(confidences: list[float], exact: list[bool], target_precision: float) -> Fit:
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    n, right, points = len(order), 0, []
    for k, i in enumerate(order, start=1):
        right += exact[i]
        points.append((confidences[i], k / n, right / k))
    least = max(MIN_SHOWN, int(MIN_SHOWN_SHARE * n))
    reaching = [p for p in points[least - 1 :] if p[2] >= target_precision]
    if reaching:
        threshold, coverage, precision = max(reaching, key=lambda p: p[1])
    else:  # nothing to gate on: everything shown
        threshold, coverage, precision = None, 1.0, (right / n if n else 0.0)
    every = max(1, n // CURVE_POINTS)
    kept = sorted(set(range(every - 1, n, every)) | ({n - 1} if n else set()))
    curve = [dict(zip(("threshold", "coverage", "precision"), points[k])) for k in kept]
    return Fit(threshold, coverage, precision, target_precision, curve)


def hidden(text: str, confidence: float, threshold: float | None, prefix: str, suffix: str | None) -> str | None:
    """Why an editor should not show this completion of `prefix` (before `suffix`), or None to show it."""
    if threshold is not None and confidence < threshold:
        return "low_confidence"
    if len(text.strip()) < MIN_CHARS:
        return "too_short"
    lines_before = prefix.split("\n")
    if len(lines_before) > 1 and repeats_line_above(lines_before[-1] + text.split("\n")[0], lines_before[-2]):
        return "repeats_line_above"
    if suffix is not None and suffix.lstrip().startswith(text.strip()):
        return "repeats_suffix"
    return None


def repeats_line_above(line: str, above: str) -> bool:
    """Whether a completed line is the line above it again (white space around either aside): what
    editors' users complain about, and one of the evaluate stage's `repeats`."""
    return bool(line.strip()) and line.strip() == above.strip()
