"""Every benchmark still runs as far as its arguments: its imports of the library and its parser (a
refactor that moves what a benchmark imports fails here, not the next time someone measures)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT

BENCHMARKS = sorted(path.name for path in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_imports_and_parses_its_arguments(name):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]


def test_every_benchmark_is_found():
    assert {"replay.py", "serve.py", "evaluate_model.py", "loop_guard.py"} <= set(BENCHMARKS)
