"""End to end: `dvc repro` of the whole pipeline in a temporary copy of the project, on a tiny corpus
of real code and a tiny scratch model; then a rerun that reruns nothing, and a param change that
reruns only what it affects."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, VENV_BIN, make_tiny_project, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_tiny_project(tmp_path_factory.mktemp("pipeline"))
    run(["dvc", "repro"], project)
    return project


def test_repro_builds_every_output(project):
    for out in [
        "data/raw/sources.json",
        "data/segments/tokens.bin",
        "data/split/split.parquet",
        "models/finetune/best/model.safetensors",
        "metrics/segment_stats.json",
        "metrics/contamination.json",
        "metrics/finetune.json",
        "metrics/metrics.json",
        "plots/finetune.csv",
        "dvc.lock",
    ]:
        assert (project / out).exists(), out
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    numbers = [v for v in _flatten(metrics) if isinstance(v, (int, float))]
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert json.loads((project / "metrics/contamination.json").read_text())


def test_second_repro_reruns_nothing(project):
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout, again.stdout
    assert "up to date" in run(["dvc", "status"], project).stdout


def test_metrics_show_and_params_diff(project):
    shown = run(["dvc", "metrics", "show"], project).stdout
    assert "segment_stats.json" in shown and "metrics.json" in shown
    path = project / "params.yaml"
    saved = path.read_text()
    params = yaml.safe_load(saved)
    params["finetune"]["seed"] += 1
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:  # the workspace's change against the commit's params
        changed = run(["dvc", "params", "diff"], project).stdout
        assert "finetune.seed" in changed and str(params["finetune"]["seed"]) in changed
    finally:
        path.write_text(saved)
    assert run(["dvc", "params", "diff"], project).stdout.strip() == ""


def test_champion_is_registered_and_completes(project):
    args = ["autocoder", "complete", "--lang", "python", "--max-new-tokens", "8", "--json", "def factorial"]
    [completion] = json.loads(run(args, project).stdout)["completions"]  # a random tiny model's text: any
    assert 0 < completion["n_tokens"] <= 8 and math.isfinite(completion["confidence"])
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlruns.db")
    name = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["registered_model_name"]
    champion = client.get_model_version_by_alias(name, "champion")
    latest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert int(champion.version) == latest


def test_keys_that_change_no_output_rerun_nothing(project):
    """Logging, checkpoint timing, worker counts and the MLflow experiment (params.UNTRACKED_KEYS)."""
    path = project / "params.yaml"
    saved = path.read_text()
    params = yaml.safe_load(saved)
    params["segment"]["workers"] = 2
    params["finetune"].update(log_every=3, checkpoint_every=7)
    params["mlflow"]["experiment"] = "another"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert "up to date" in run(["dvc", "status"], project).stdout
        params["finetune"]["seed"] += 1  # what does change the model is seen
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        assert "finetune.seed" in run(["dvc", "status", "finetune"], project).stdout
    finally:
        path.write_text(saved)


def test_repro_without_the_venv_activated(project, tmp_path):
    """`.venv/bin/dvc repro` with `python` on PATH a Python without autocoder (the one the venv was made
    from): the stage re-runs itself with the project's .venv/bin/python; without a .venv it stops with
    one line that says what to do."""
    bare_bin = tmp_path / "bin"
    bare_bin.mkdir()
    (bare_bin / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3")
    env = {**os.environ, "PATH": f"{bare_bin}:/usr/bin:/bin"}
    bare = subprocess.run(["python", "-c", "import autocoder"], env=env, capture_output=True)
    assert bare.returncode != 0, "the venv's base Python has autocoder: nothing to test"
    stopped = subprocess.run(["python", "stages/split.py"], cwd=project, env=env, capture_output=True, text=True)
    assert stopped.returncode == 1 and stopped.stderr.count("\n") == 1, stopped.stderr
    assert "has no autocoder package; run `make venv`" in stopped.stderr
    (project / ".venv").symlink_to(ROOT / ".venv")  # the project's venv, as `make venv` makes it
    try:
        out = run([str(VENV_BIN / "dvc"), "repro", "--force", "--single-item", "split"], project, env=env).stdout
        assert "Running stage 'split'" in out
    finally:
        (project / ".venv").unlink()


def test_segment_param_change_reruns_segment_and_split_only(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["segment"]["stride"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "split"], project).stdout
    assert "Running stage 'segment'" in out and "Running stage 'split'" in out
    assert "Running stage 'clone'" not in out


def _flatten(d):
    for v in d.values():
        yield from (_flatten(v) if isinstance(v, dict) else [v])
