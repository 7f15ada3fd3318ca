"""One interface for every measure of the evaluate stage, so that the stage is "measure, write,
register" and benchmarks run the very same measures on any model.

A `Measure` has a name (its key in metrics.json, its records' file `<name>.jsonl`), `off`: why the
params turn it off (not run, and not a missing measure), `unavailable`: why it cannot run here or on
this model (listed in metrics.json's `skipped`), and `run(inputs) -> Result`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autocoder.complete import Completer, Decoding
from autocoder.corpus import Corpus
from autocoder.params import EvaluateParams, generation_settings

STAGE = "evaluate"
PROGRESS = {"mininterval": 5}  # tqdm: a progress line every 5 s at most, not to flood DVC's log


@dataclass
class Result:
    metrics: dict  # its part of metrics.json (the keys it adds at the top level)
    records: list[dict] | None = None  # every example, written to <out_dir>/<name>.jsonl
    files: dict[str, str] = field(default_factory=dict)  # other files of <out_dir>, by name
    plots: dict[Path, str] = field(default_factory=dict)  # CSV plots, by path
    skipped: dict[str, str] = field(default_factory=dict)  # parts that could not run, and why
    detail: Any = None  # what later measures or the registration use (the gate's fit, the scored files)


def file_text(completer: Completer, corpus: Corpus, row: int) -> str:
    return completer.tokenizer.decode(corpus.file_tokens(row).tolist(), clean_up_tokenization_spaces=False)


def file_lines(completer: Completer, corpus: Corpus, row: int) -> list[str]:
    return file_text(completer, corpus, row).split("\n")  # not splitlines(): "\f" is no line end here


@dataclass
class Inputs:
    completer: Completer
    model: str  # the model's folder or name, as reports name it
    corpus: Corpus
    dev_rows: np.ndarray
    train_rows: np.ndarray
    cfg: EvaluateParams
    results: dict[str, Result] = field(default_factory=dict)  # the measures run so far, by name
    not_run: dict[str, str] = field(default_factory=dict)  # the measures not run so far, and why

    def lines(self, row: int) -> list[str]:
        return file_lines(self.completer, self.corpus, row)

    def rows_of(self, lang: str) -> list[int]:
        return [int(r) for r in self.dev_rows if self.corpus.files["language"][r] == lang]


@dataclass(frozen=True)
class Measure:
    name: str
    run: Callable[[Inputs], Result]
    off: Callable[[EvaluateParams], str | None] = lambda cfg: None
    unavailable: Callable[[Inputs], str | None] = lambda inputs: None


def measure_all(measures: list[Measure], inputs: Inputs) -> dict[str, str]:
    """Runs each measure in order into `inputs.results`; returns the measures (and parts of them)
    that could not run, and why. A measure the params turn off is printed, not returned."""
    skipped: dict[str, str] = {}
    for measure in measures:
        if (why := measure.off(inputs.cfg)) is not None:
            print(f"{STAGE}: {measure.name} off: {why}")
            inputs.not_run[measure.name] = why
        elif (why := measure.unavailable(inputs)) is not None:
            print(f"{STAGE}: {measure.name} skipped: {why}")
            inputs.not_run[measure.name] = skipped[measure.name] = why
        else:
            result = inputs.results[measure.name] = measure.run(inputs)
            for part, why in result.skipped.items():
                print(f"{STAGE}: {part} skipped: {why}")
            skipped |= result.skipped
    return skipped


def all_metrics(results: dict[str, Result]) -> dict:
    """The measures' metrics together, as metrics.json holds them."""
    return {key: value for result in results.values() for key, value in result.metrics.items()}


def generation(cfg: EvaluateParams) -> dict:
    """The loop guard every generation of this stage uses (max_new_tokens is per task)."""
    return {k: v for k, v in generation_settings(cfg).items() if k != "max_new_tokens"}


def complete_all(completer: Completer, requests: list[dict], cfg: EvaluateParams, max_new_tokens: int, what: str):
    """Greedy completions of `requests` with the stage's loop guard, `evaluate.batch_size` at a time."""
    decoding = Decoding(max_new_tokens=max_new_tokens, **generation(cfg))
    with tqdm(total=len(requests), desc=f"{STAGE}: {what}", unit="prompt", **PROGRESS) as bar:
        return completer.complete_many(requests, cfg.batch_size, decoding, bar.update)


def csv(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return value if isinstance(value, str) else f"{value:.6g}"

    return ",".join(columns) + "\n" + "".join(",".join(cell(row[c]) for c in columns) + "\n" for row in rows)
