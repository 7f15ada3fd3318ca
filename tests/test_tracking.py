"""MLflow set-up (autocoder.tracking) against real SQLite stores, a real unreachable server URI, and
real processes whose runs are left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from autocoder import tracking
from autocoder.errors import UserError
from autocoder.params import MlflowParams
from helpers import zombie_process


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_db):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def test_default_store_is_the_projects_sqlite_file_and_artifact_folder(project):
    uri = tracking.configure(MlflowParams())
    assert uri == f"sqlite:///{project / 'mlruns.db'}"  # absolute, whatever the cwd later
    experiment = mlflow.get_experiment_by_name("autocoder")
    assert experiment.artifact_location == (project / "mlartifacts").as_uri()
    with mlflow.start_run() as run:
        mlflow.log_text("x", "note.txt")
    assert run.info.experiment_id == experiment.experiment_id
    assert (project / "mlartifacts" / run.info.run_id / "artifacts/note.txt").exists()
    assert tracking.configure(MlflowParams()) == uri  # the second time finds the experiment


def test_environment_overrides_params(project, monkeypatch):
    (project / "team").mkdir()
    (project / "team/store.db").write_bytes((project / "mlruns.db").read_bytes())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team/store.db")
    assert tracking.configure(MlflowParams(experiment="shared")) == f"sqlite:///{project / 'team/store.db'}"
    assert mlflow.MlflowClient(f"sqlite:///{project / 'team/store.db'}").get_experiment_by_name("shared")


@pytest.mark.parametrize(
    "uri, key",
    [
        ("http://127.0.0.1:1", "MLFLOW_TRACKING_URI"),
        ("sqlite:///mlruns.db/inside-a-file.db", "MLFLOW_TRACKING_URI"),  # its folder is a file
    ],
)
def test_unreachable_store_is_one_line_naming_the_uri(project, monkeypatch, uri, key):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError) as err:
        tracking.configure(MlflowParams())
    message = str(err.value)
    assert message.startswith(f"{key}: cannot reach the MLflow tracking store") and "\n" not in message
    assert uri.removeprefix("sqlite:///") in message


def test_unreachable_store_from_params_names_the_key(project):
    with pytest.raises(UserError, match=r"^mlflow.tracking_uri: cannot reach .*127\.0\.0\.1:1"):
        tracking.configure(MlflowParams(tracking_uri="http://127.0.0.1:1"))


def test_runs_of_dead_processes_are_marked_killed(project):
    tracking.configure(MlflowParams())
    experiment_id = mlflow.get_experiment_by_name("autocoder").experiment_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    zombie = zombie_process()
    client = mlflow.MlflowClient()

    def running(stage: str, pid: int, host: str | None = None) -> str:
        tags = {**tracking.process_tags(stage), tracking.PID_TAG: str(pid)}
        if host:
            tags[tracking.HOST_TAG] = host
        return client.create_run(experiment_id, tags=tags).info.run_id

    killed = running("finetune", dead.pid)
    zombie_run = running("finetune", zombie.pid)
    alive = running("finetune", os.getpid())
    elsewhere = running("finetune", dead.pid, host="another-machine")
    other_stage = running("evaluate", dead.pid)
    assert sorted(tracking.end_dead_runs(experiment_id, "finetune")) == sorted([killed, zombie_run])
    zombie.wait()
    runs = (killed, zombie_run, alive, elsewhere, other_stage)
    status = {run_id: client.get_run(run_id).info.status for run_id in runs}
    assert status == {
        killed: "KILLED",
        zombie_run: "KILLED",
        alive: "RUNNING",
        elsewhere: "RUNNING",
        other_stage: "RUNNING",
    }


def test_lineage_tags(project, monkeypatch):
    assert tracking.lineage_tags(["data/segments"]) == {}  # no git repo, no dvc.lock, no experiment
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True
    )
    Path("dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "segment": {"cmd": "x", "outs": [{"path": "data/segments", "md5": "aaa.dir", "size": 1}]},
                    "split": {"cmd": "x", "outs": [{"path": "data/split", "md5": "bbb.dir"}]},
                    "finetune": {"cmd": "x", "outs": [{"path": "models/finetune", "md5": "ccc.dir"}]},
                },
            }
        )
    )
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tracking.lineage_tags(["data/segments", "data/split/"]) == {
        "dvc.md5.data/segments": "aaa.dir",
        "dvc.md5.data/split": "bbb.dir",
        "git_commit": head,
        "dvc_exp_name": "lr-sweep-1",
    }


def test_read_run_info(project):
    with pytest.raises(UserError, match="run the finetune stage first"):
        tracking.read_run_info(project / "models/finetune")


@pytest.mark.slow
def test_a_store_creation_killed_half_way_leaves_no_broken_store(project):
    """MLflow creates a SQLite store's tables in many migration steps; a stage killed among them (as
    `dvc repro` can be at any moment) must not leave a database the next run cannot open."""
    (project / "mlruns.db").unlink()  # the fixture's ready-made store: this test makes its own
    code = (
        "from autocoder import tracking; from autocoder.params import MlflowParams; tracking.configure(MlflowParams())"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=project, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(project.glob(".mlruns.db.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the store was made before the kill: nothing was tested"
    assert not (project / "mlruns.db").exists()  # half-made, it is only under its temporary name
    uri = tracking.configure(MlflowParams())
    assert mlflow.get_experiment_by_name("autocoder") is not None and uri.endswith("/mlruns.db")
    assert not list(project.glob(".mlruns.db.tmp-*"))  # the dead process' leftover is removed
