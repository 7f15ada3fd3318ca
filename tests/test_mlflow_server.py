"""A team's shared MLflow server: `mlflow server` on a real PostgreSQL with a served artifact store.
With MLFLOW_TRACKING_URI pointing at it, `dvc repro` logs the finetune run and registers the
champion there, not in the project. An unreachable server stops the pipeline before training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import make_tiny_project, run
from services import mlflow_server, postgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(tracking URI, artifact store folder) of a server that lives for this module."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    with postgres() as database, mlflow_server(database, tmp) as uri:
        yield uri, tmp / "artifacts"


@pytest.fixture(scope="module")
def project(server, tmp_path_factory) -> Path:
    project = make_tiny_project(tmp_path_factory.mktemp("tracked"))
    run(["dvc", "repro"], project, env={"MLFLOW_TRACKING_URI": server[0]})
    return project


def test_finetune_run_is_logged_on_the_server(server, project):
    logged = json.loads((project / "models/finetune/mlflow_run.json").read_text())
    assert logged["tracking_uri"] == server[0]
    finetune = mlflow.MlflowClient(server[0]).get_run(logged["run_id"])
    assert finetune.info.status == "FINISHED"
    assert finetune.data.metrics and all(math.isfinite(v) for v in finetune.data.metrics.values())
    assert not (project / "mlruns.db").exists()  # nothing went to the project's own store


def test_champion_is_registered_on_the_server(server, project):
    client = mlflow.MlflowClient(server[0])
    name = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["registered_model_name"]
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.status == "READY"
    # The model's files live in the server's artifact store, where every teammate can load them.
    assert any(path.is_file() for path in server[1].rglob("*"))
    assert not (project / "mlartifacts").exists()


def test_teammate_completes_with_the_servers_champion(server, project, tmp_path):
    # Another machine: the project's params and the server, no models/ or MLflow store of its own.
    shutil.copy(project / "params.yaml", tmp_path / "params.yaml")
    run(
        ["autocoder", "complete", "--lang", "python", "--max-new-tokens", "8", "def f"],
        tmp_path,
        env={"MLFLOW_TRACKING_URI": server[0]},
    )
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


def test_unreachable_server_stops_before_training(project, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    proc = run(
        ["dvc", "repro", "--force", "--single-item", "finetune"],
        copy,
        check=False,
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
    )
    assert proc.returncode != 0
    reported = [line for line in proc.stderr.splitlines() if line.startswith("autocoder finetune:")]
    assert len(reported) == 1 and "127.0.0.1:1" in reported[0], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # DVC removed the stage's outputs before running it; training never started to write new ones.
    assert not (copy / "models/finetune").exists()
    assert not (copy / "metrics/finetune.json").exists()
    assert not any((copy / "models/checkpoints").glob("*"))
