"""MLflow set-up shared by the stages that log runs (finetune, evaluate).

The store comes from params.mlflow (default: the SQLite file `mlruns.db` and the artifact folder
`mlartifacts/` in the project); `MLFLOW_TRACKING_URI` overrides it, e.g. for a team's
`mlflow server`. `configure()` checks that the store answers before any expensive work starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from autocoder.atomic import process_running, removed_on_error, tmp_sibling
from autocoder.errors import UserError, first_line
from autocoder.params import MlflowParams

RUN_INFO_FILE = "mlflow_run.json"  # in the finetune out_dir: run_id, tracking_uri, experiment_id, ...
STAGE_TAG, HOST_TAG, PID_TAG = "autocoder.stage", "autocoder.host", "autocoder.pid"
# Probing an unreachable server must fail in seconds, not after MLflow's default retries (minutes).
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


# DVC runs a queued (or --temp) experiment in a temporary copy of the repository under here.
DVC_EXPERIMENT_COPIES = (".dvc", "tmp", "exps")


def project_root() -> Path:
    """What relative store paths are relative to: the cwd (stages run in the project root), except in
    a DVC experiment's temporary copy `<root>/.dvc/tmp/exps/...`, which is deleted when the experiment
    ends: the runs and models of every experiment belong in the real project's store, `<root>`."""
    cwd = Path.cwd()
    n = len(DVC_EXPERIMENT_COPIES)
    for i in range(len(cwd.parts) - n):
        if cwd.parts[i : i + n] == DVC_EXPERIMENT_COPIES:
            return Path(*cwd.parts[:i])
    return cwd


def tracking_uri(params: MlflowParams) -> str:
    """The store's URI; a relative SQLite path is made absolute (against project_root())."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        uri = prefix + str((project_root() / uri[len(prefix) :]).resolve())
    return uri


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def configure(params: MlflowParams) -> str:
    """Point MLflow at the store and the experiment (created on first use); return the URI.

    Raises UserError, naming the URI and where it came from, when the store does not answer.
    """
    import mlflow

    uri = tracking_uri(params)
    key = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "mlflow.tracking_uri"
    try:
        _create_sqlite_store(uri)
        with _env(_PROBE_ENV):
            client = mlflow.MlflowClient(uri)
            experiment = client.get_experiment_by_name(params.experiment)
    except Exception as e:  # any failure (connection refused, bad database path, HTTP error) means unreachable
        raise UserError(f"{key}: cannot reach the MLflow tracking store {uri!r} ({first_line(e)})") from None
    if experiment is None:
        # A local store gets params' artifact folder, as an absolute URI so runs log from any cwd;
        # a server keeps its own artifact store.
        location = None
        if _is_local_store(uri) and params.artifact_location:
            location = params.artifact_location
            if "://" not in location:
                location = (project_root() / location).resolve().as_uri()
        client.create_experiment(params.experiment, artifact_location=location)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(params.experiment)
    return uri


def _create_sqlite_store(uri: str) -> None:
    """Create a new SQLite store under a temporary name and rename it into place. MLflow builds its
    tables in dozens of migration steps: a process killed half-way through would leave a database
    that no later run can open ("table _alembic_tmp_experiments already exists")."""
    import mlflow

    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return
    path = Path(uri[len(prefix) :])
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    with removed_on_error(tmp, path):
        mlflow.MlflowClient(prefix + str(tmp)).search_experiments(max_results=1)  # creates the tables
    os.replace(tmp, path)


def end_dead_runs(experiment_id: str, stage: str) -> list[str]:
    """Mark this host's RUNNING runs of `stage` whose process is gone (killed) as KILLED.

    A killed stage cannot end its run; without this it would show as running forever.
    Returns the ids of the runs it ended.
    """
    import mlflow

    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], f"tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'RUNNING'")
    ended = []
    for run in running:
        tags = run.data.tags
        if tags.get(HOST_TAG) == socket.gethostname() and not process_running(int(tags.get(PID_TAG, "0") or 0)):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def flatten(nested: dict, separator: str, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a<separator>b": 1}: nested params or metrics as MLflow's flat keys."""
    flat = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, separator, name + separator) if isinstance(value, dict) else {name: value})
    return flat


def process_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to this stage, this host and this process (see end_dead_runs)."""
    return {STAGE_TAG: stage, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def git_commit() -> str | None:
    """HEAD of the git repository around the cwd, or None outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def dvc_lock_hashes(paths: list[str], lock_file: str | Path = "dvc.lock") -> dict[str, str]:
    """out path -> md5 that dvc.lock records for it (the data a run trained on); {} without dvc.lock."""
    try:
        lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    except FileNotFoundError:
        return {}
    wanted = {str(Path(p)) for p in paths}
    found = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if str(Path(out.get("path", ""))) in wanted and "md5" in out:
                found[str(Path(out["path"]))] = out["md5"]
    return found


def lineage_tags(data_paths: list[str]) -> dict[str, str]:
    """Tags that say which code and data made a run: git commit, dvc.lock hashes, DVC experiment."""
    tags = {f"dvc.md5.{path}": md5 for path, md5 in dvc_lock_hashes(data_paths).items()}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def read_run_info(out_dir: str | Path) -> dict:
    """The finetune stage's record of its MLflow run ({run_id, tracking_uri, experiment_id,
    tokenizer_fingerprint, dev_split})."""
    path = Path(out_dir) / RUN_INFO_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the finetune stage first") from None
