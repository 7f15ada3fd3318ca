"""The confidence gate (autocoder.gate): the threshold fitted on measured completions, and what an
editor is not shown."""

from __future__ import annotations

import pytest

from autocoder.gate import MIN_SHOWN, fit, hidden


def test_the_threshold_shows_the_most_at_the_target_precision():
    # 100 completions: the 30 most confident are right 9 times in 10, the rest never
    confidences = [-0.1 - i / 100 for i in range(100)]
    exact = [i % 10 != 0 for i in range(30)] + [False] * 70
    gate = fit(confidences, exact, target_precision=0.9)
    assert gate.threshold == pytest.approx(confidences[29]) and gate.coverage == pytest.approx(0.3)
    assert gate.precision == pytest.approx(27 / 30)
    assert [row["coverage"] for row in gate.curve] == sorted(row["coverage"] for row in gate.curve)
    assert gate.curve[-1]["coverage"] == 1.0 and gate.curve[-1]["precision"] == pytest.approx(27 / 100)


def test_a_few_lucky_completions_do_not_set_the_threshold():
    confidences = [-0.1 - i / 100 for i in range(100)]
    exact = [i < MIN_SHOWN - 1 for i in range(100)]  # right only among the first few
    gate = fit(confidences, exact, target_precision=0.95)
    assert gate.threshold is None and gate.coverage == 1.0  # unreachable: nothing hidden for confidence


@pytest.mark.parametrize(
    "text, confidence, prefix, suffix, reason",
    [
        ("total += item", -0.5, "    for item in items:\n        ", "\n    return total", None),
        ("total += item", -2.5, "    for item in items:\n        ", None, "low_confidence"),
        (")", -0.1, "print(x", None, "too_short"),
        ("x = 1", -0.1, "    x = 1\n    ", None, "repeats_line_above"),
        ("return total", -0.1, "def f():\n    ", "return total\n", "repeats_suffix"),
    ],
)
def test_what_an_editor_is_not_shown(text, confidence, prefix, suffix, reason):
    assert hidden(text, confidence, -1.0, prefix, suffix) == reason
