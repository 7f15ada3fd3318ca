"""Robustness perturbations: deterministic, valid Python, and the canonical solutions still pass
their tests through the sandbox under every kind; the scores against hand-computed values."""

from __future__ import annotations

import ast
import re

import pytest

from autocoder.evaluate.humaneval import passes
from autocoder.evaluate.perturb import KINDS, double_blank_lines, perturb, perturb_line, rename
from autocoder.evaluate.robustness import robustness_scores
from autocoder.evaluate.sandbox import Limits, unavailable
from autocoder.problems import load_problems

PROBLEMS = load_problems()[:40]
WHY_NOT = unavailable()  # one probe of the sandbox, not one per use


@pytest.mark.parametrize("kind", KINDS)
def test_perturbations_are_deterministic_parse_and_change_the_prompt(kind):
    perturbed = [perturb(p, kind, seed=0) for p in PROBLEMS]
    assert perturbed == [perturb(p, kind, seed=0) for p in PROBLEMS]
    for p in perturbed:
        ast.parse(p.prompt + p.canonical_solution)
    changed = sum(q.prompt != p.prompt for p, q in zip(PROBLEMS, perturbed))
    assert changed >= len(PROBLEMS) * 0.6, f"{kind} changed {changed} of {len(PROBLEMS)} prompts"


@pytest.mark.slow
@pytest.mark.skipif(WHY_NOT is not None, reason=f"no sandbox here: {WHY_NOT}")
@pytest.mark.parametrize("kind", KINDS)
def test_canonical_solutions_still_pass_under_every_perturbation(kind):
    failing = [p.task_id for p in PROBLEMS if not passes(q := perturb(p, kind, seed=0), q.canonical_solution, Limits())]
    assert failing == []


def test_renames_touch_identifiers_and_docstring_words_only():
    code = (
        'def f(xs, n):\n    """Sum of the first n of xs: f([1], 1)."""\n'
        "    xsn = xs[:n]  # n items\n    return sum(xsn)\n"
    )
    renamed = rename(code, {"xs": "values", "n": "count", "f": "total"})
    assert renamed == (
        'def total(values, count):\n    """Sum of the first count of values: total([1], 1)."""\n'
        "    xsn = values[:count]  # n items\n    return sum(xsn)\n"
    )


def test_whitespace_doubles_blank_lines_and_nothing_else():
    java = "class A {\n\n    int x;\n    \n    int y;\n}\n"
    assert double_blank_lines(java) == "class A {\n\n\n    int x;\n    \n\n    int y;\n}\n"
    assert [line for line in double_blank_lines(java).split("\n") if line.strip()] == [
        line for line in java.split("\n") if line.strip()
    ]


def test_robustness_scores():
    scores = robustness_scores(
        [True, True, False, True], {"a": [True, False, False, True], "b": [True, True, True, False]}
    )
    assert scores["nominal"] == 0.75
    assert scores["a"] == {"score": 0.5, "relative_drop": pytest.approx(1 / 3)}
    assert scores["b"] == {"score": 0.75, "relative_drop": 0.0}
    assert scores["robust"] == 0.25  # only the first passes nominally and under both
    assert scores["worst_kind_drop"] == pytest.approx(1 / 3)


PY_CONTEXT = '''import os


class Box:
    def area(self, width, height=2):
        """The area of width by height."""
        self.width = width
'''
JAVA_CONTEXT = """public class Box {
    public Box(int size) {
    }

    public static <K, V> Map<K, V> merge(Map<K, V> left, final List<String>[] right) throws IOException {
        if (left == null) {
"""


def test_dev_line_perturbations_rename_the_context_and_the_line_alike():
    line = "        return width * height"
    context, target = perturb_line("python", PY_CONTEXT, line, "variable_rename", seed=0)
    assert perturb_line("python", PY_CONTEXT, line, "variable_rename", seed=0) == (context, target)  # seeded
    new_width, new_height = re.search(r"def area\(self, (\w+), (\w+)=2\)", context).groups()
    assert target == f"        return {new_width} * {new_height}"
    assert f"self.width = {new_width}" in context  # an attribute keeps its name
    assert f"The area of {new_width} by {new_height}." in context
    ast.parse(context + target)  # still Python
    context, target = perturb_line("python", PY_CONTEXT, "        return self.area(1)", "function_rename", seed=0)
    name = re.search(r"def (\w+)\(self", context)[1]
    assert name != "area" and target == f"        return self.{name}(1)"  # a method, called as one

    line = "            return merge(right, left.size());"
    context, target = perturb_line("java", JAVA_CONTEXT, line, "variable_rename", seed=0)
    left, right = re.search(r"merge\(Map<K, V> (\w+), final List<String>\[\] (\w+)\)", context).groups()
    assert target == f"            return merge({right}, {left}.size());" and f"if ({left} == null)" in context
    context, target = perturb_line("java", JAVA_CONTEXT, line, "function_rename", seed=0)
    name = re.search(r"Map<K, V> (\w+)\(Map", context)[1]
    assert name != "merge" and target == f"            return {name}(right, left.size());"
    assert "public Box(int size)" in context  # a constructor keeps its class' name
    assert perturb_line("java", "class A {\n", "    int x;", "variable_rename", seed=0) == ("class A {\n", "    int x;")
    context, target = perturb_line("java", JAVA_CONTEXT, line, "whitespace", seed=0)
    assert target == line and context == double_blank_lines(JAVA_CONTEXT)
