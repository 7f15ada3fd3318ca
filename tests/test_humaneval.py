"""HumanEval through the sandbox: the estimator against hand-computed values, every canonical
solution passing and wrong ones failing, and the scores of a real (tiny) model's completions."""

from __future__ import annotations

import math

import pytest

from autocoder.complete import Completer
from autocoder.evaluate.humaneval import (
    FUNCTION_END,
    humaneval_scores,
    infilling_program,
    infilling_scores,
    pass_at_k,
    passes,
    program,
)
from autocoder.evaluate.sandbox import Limits, run_python, unavailable
from autocoder.problems import load_infilling_problems, load_problems
from helpers import ROOT

WHY_NOT = unavailable()
needs_sandbox = pytest.mark.skipif(WHY_NOT is not None, reason=f"no sandbox here: {WHY_NOT}")


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2) / C(5,2)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(3, 2, 2) == 1.0  # fewer wrong samples than k: some draw of k always passes
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(5, 2, 6)


def test_the_problems_and_their_programs():
    problems = load_problems()
    assert len(problems) == 164 and len({p.task_id for p in problems}) == 164
    text = program(problems[0], "    return False\n")
    assert text.startswith(problems[0].prompt) and text.rstrip().endswith(f"check({problems[0].entry_point})")
    # a completion ends at the next top-level statement, not inside the function's body
    body = "    x = 1\n\n    return x\n"
    assert FUNCTION_END.search(body) is None
    assert FUNCTION_END.search(body + "def other():\n").start() == len(body) - 1


@pytest.mark.slow
@needs_sandbox
def test_canonical_solutions_pass_and_wrong_ones_fail():
    problems, limits = load_problems(), Limits(wall_s=10)
    failing = [p.task_id for p in problems if not passes(p, p.canonical_solution, limits)]
    assert failing == []
    # bigcode-evaluation-harness's boundary: the prompt right-stripped, the completion starting with
    # the newline the prompt lost; the prompt's own trailing newline would then break the indentation
    stripped = [p.task_id for p in problems[:20] if not passes(p, "\n" + p.canonical_solution, limits, "strip")]
    assert stripped == []
    assert program(problems[0], "\n    return False", "strip").startswith(problems[0].prompt.rstrip() + "\n    return")
    assert not any(passes(p, "    return None\n", limits) for p in problems[:10])
    assert not passes(problems[0], "    return not", limits)  # a syntax error


@pytest.mark.slow
@needs_sandbox
def test_a_tiny_models_completions_are_run_and_scored(tiny_model_dir):
    completer = Completer.from_pretrained(tiny_model_dir)
    problems = load_problems()[:3]
    scores, records = humaneval_scores(completer, problems, Limits(wall_s=5), max_new_tokens=16, samples=2, ks=(1, 2))
    # random weights write no solution: every completion ran and failed its tests
    sampled = {"n": 2, "temperature": 0.8, "pass_at_1": 0.0, "pass_at_2": 0.0}
    assert scores == {"problems": 3, "pass_at_1": 0.0, "sampled": sampled}
    assert [r["task_id"] for r in records] == [p.task_id for p in problems]
    assert {r["status"] for r in records} <= {"failed", "timeout"} and all(r["completion"] for r in records)


def test_the_infilling_tasks_are_a_seeded_draw_of_the_benchmark():
    everything = load_infilling_problems("single_line", None, seed=0)
    assert len(everything) == 1033 and len(load_infilling_problems("multi_line", None, seed=0)) == 5815
    drawn = load_infilling_problems("single_line", 20, seed=0)
    assert drawn == load_infilling_problems("single_line", 20, seed=0) != load_infilling_problems("single_line", 20, 1)
    order = {p.task_id: i for i, p in enumerate(everything)}
    assert [order[p.task_id] for p in drawn] == sorted(order[p.task_id] for p in drawn)  # the file's order
    assert len({p.task_id.split("/")[2] for p in drawn}) > 10  # spread over the problems, not the first few
    task = drawn[0]
    text = infilling_program(task, task.canonical_solution)
    assert text.startswith(task.prompt + task.canonical_solution + task.suffix)


@pytest.mark.slow
@needs_sandbox
def test_canonical_middles_pass_and_wrong_ones_fail():
    limits = Limits(wall_s=10)
    for benchmark in ("single_line", "multi_line"):
        tasks = load_infilling_problems(benchmark, 15, seed=0)
        assert all(run_python(infilling_program(t, t.canonical_solution), limits).passed for t in tasks)
        # the body with its line(s) missing: a gap no test accepts for most tasks
        wrong = [run_python(infilling_program(t, "    raise ValueError\n"), limits).passed for t in tasks]
        assert sum(wrong) == 0


@needs_sandbox
def test_the_shipped_bases_middles_are_run_and_scored():
    completer = Completer.from_pretrained(ROOT / "models" / "autocoder-base")
    tasks = load_infilling_problems("single_line", 4, seed=0)
    scores, records = infilling_scores(completer, tasks, Limits(wall_s=10), max_new_tokens=24)
    assert [r["task_id"] for r in records] == [t.task_id for t in tasks]
    for record, task in zip(records, tasks):
        assert record["completion"].endswith("\n") and record["completion"].count("\n") == 1  # one line
        assert record["exact_match"] == (record["completion"].split() == task.canonical_solution.split())
        assert record["status"] in {"passed", "failed", "timeout"}
    assert scores == {
        "tasks": 4,
        "pass_rate": sum(r["status"] == "passed" for r in records) / 4,
        "exact_match": sum(r["exact_match"] for r in records) / 4,
    }
