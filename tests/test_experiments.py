"""DVC experiments on a tiny project: one `dvc exp run -S finetune.learning_rate=...` in the workspace,
then two queued ones run at the same time (`dvc queue start -j 2`) in DVC's temporary copies of the
repository. Every experiment's runs and models land in the project's own MLflow store (not in a copy
that DVC deletes), tagged with the experiment's name and the git commit; `dvc exp show` lists the
metrics; the registry keeps every version and crowns the best dev perplexity, also when two
evaluations finish at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import kill_processes_in, make_tiny_project, run

pytestmark = pytest.mark.e2e

WORKSPACE_EXP = ("lr-workspace", 2e-3)
QUEUED_EXPS = [("lr-queued-high", 5e-3), ("lr-queued-low", 2e-4)]
EXPERIMENTS = dict([WORKSPACE_EXP, *QUEUED_EXPS])
QUEUE_TIMEOUT_S = 900  # two finetune + evaluate runs sharing the cores; a hung queue fails the test
POLL_S = 5


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_tiny_project(tmp_path_factory.mktemp("experiments"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"].update(
        perplexity_max_bytes=8000, latency_repeats=1, line_completion_lines=2, infill_lines=2, line_max_new_tokens=8
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "cheaper evaluation"], project)
    try:
        name, lr = WORKSPACE_EXP
        run(["dvc", "exp", "run", "-n", name, "-S", f"finetune.learning_rate={lr}"], project)
        for name, lr in QUEUED_EXPS:
            run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"finetune.learning_rate={lr}"], project)
        run(["dvc", "queue", "start", "-j", "2"], project)
        wait_for_queue(project, [name for name, _ in QUEUED_EXPS])
        yield project
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)
        kill_processes_in(project)  # the queue's detached workers, whatever state they are in


def wait_for_queue(project: Path, names: list[str]) -> None:
    """Poll `dvc queue status` until every named experiment succeeded; fail (with its log) on a failed
    one or after QUEUE_TIMEOUT_S."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        states = {name: line.split()[-1] for line in status.splitlines() for name in names if f" {name} " in line}
        failed = [name for name, state in states.items() if state == "Failed"]
        if failed:
            logs = run(["dvc", "queue", "logs", failed[0]], project, check=False)
            pytest.fail(f"experiment {failed[0]} failed:\n{status}\n{logs.stdout}\n{logs.stderr}")
        if len(states) == len(names) and all(state == "Success" for state in states.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")
        time.sleep(POLL_S)


def shown_experiments(project: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its data (params, metrics)."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") in EXPERIMENTS and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    return found


def metric(data: dict, file: str, key: str) -> float:
    return data["metrics"][file]["data"][key]


@pytest.fixture(scope="module")
def client(project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project}/mlruns.db")


def finetune_runs(client: mlflow.MlflowClient) -> list:
    experiment = client.get_experiment_by_name("autocoder")
    return client.search_runs([experiment.experiment_id], "tags.`autocoder.stage` = 'finetune'")


def test_exp_show_lists_every_experiment_with_its_params_and_metrics(project):
    shown = shown_experiments(project)
    assert set(shown) == set(EXPERIMENTS)
    for name, lr in EXPERIMENTS.items():
        data = shown[name]
        assert data["params"]["params.yaml"]["data"]["finetune"]["learning_rate"] == lr
        assert metric(data, "metrics/finetune.json", "best_dev_perplexity") > 1
        assert metric(data, "metrics/metrics.json", "dev_perplexity") > 1


def test_every_finetune_run_is_in_the_projects_store_tagged_with_experiment_and_commit(project, client):
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    runs = finetune_runs(client)
    by_name = {r.data.tags.get("dvc_exp_name"): r for r in runs}
    assert len(runs) == len(EXPERIMENTS) and set(by_name) == set(EXPERIMENTS), [r.data.tags for r in runs]
    shown = shown_experiments(project)
    for name, lr in EXPERIMENTS.items():
        r = by_name[name]
        assert r.info.status == "FINISHED"
        assert r.data.tags["git_commit"] == baseline
        assert float(r.data.params["learning_rate"]) == lr
        # The run that the experiment's metrics came from (evaluate logs to the finetune's run).
        assert r.data.metrics["eval/dev_perplexity"] == pytest.approx(
            metric(shown[name], "metrics/metrics.json", "dev_perplexity"), rel=1e-9
        )
        assert client.list_artifacts(r.info.run_id, "best"), f"{name}: the model's artifacts are missing"
    # Nothing was logged to a store inside DVC's temporary copies (deleted with them).
    assert not list((project / ".dvc/tmp").rglob("mlruns.db"))


def test_registry_keeps_every_version_and_crowns_the_best_dev_bits_per_byte(project, client):
    name = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["registered_model_name"]
    versions = client.search_model_versions(f"name='{name}'")
    runs = {r.info.run_id: r.data.tags["dvc_exp_name"] for r in finetune_runs(client)}
    assert sorted(runs[v.run_id] for v in versions) == sorted(EXPERIMENTS)  # one version per experiment
    # All were measured on the same data, so all are comparable: the champion is the minimum.
    assert len({v.tags["dev_files"] for v in versions}) == 1
    best = min(versions, key=lambda v: float(v.tags["dev_bits_per_byte"]))
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == best.version, {v.version: v.tags["dev_bits_per_byte"] for v in versions}
