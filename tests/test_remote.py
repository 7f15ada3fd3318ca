"""A team's shared DVC cache: one person runs the pipeline and pushes; a teammate clones the git
repository, pulls, and has every output without running anything. Over a local-directory remote
and over SSH (a real sshd on 127.0.0.1). Sharing works because data outputs are deterministic:
the same sources and params give the same DVC hashes in two projects and on a forced rerun."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import make_tiny_project, run, tiny_params
from services import sshd

pytestmark = pytest.mark.e2e

GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@t"]
DATA_STAGES = ["clone", "segment", "split"]


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", *GIT_USER, "commit", "-qm", message], project)


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A tiny project after `dvc repro`, with dvc.lock and the metrics committed."""
    project = make_tiny_project(tmp_path_factory.mktemp("origin"))
    run(["dvc", "repro"], project)
    commit(project, "repro")
    return project


def share(origin: Path, remote: str, url: str, credentials: dict[str, str], clone: Path) -> Path:
    """Push origin's outputs to a new default remote at url; a teammate clones and pulls.
    Credentials go to each repository's own .dvc/config.local."""

    def set_credentials(project: Path) -> None:
        for key, value in credentials.items():
            run(["dvc", "remote", "modify", "--local", remote, key, value], project)

    run(["dvc", "remote", "add", "-d", remote, url], origin)
    set_credentials(origin)
    commit(origin, "shared cache")
    run(["dvc", "push"], origin)
    run(["git", "clone", "-q", str(origin), str(clone)], clone.parent)
    set_credentials(clone)
    run(["dvc", "pull"], clone)
    return clone


@pytest.fixture(scope="module")
def local_teammate(origin, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("local-remote")
    return share(origin, "shared-dir", str(tmp / "store"), {}, tmp / "clone")


@pytest.fixture(scope="module")
def ssh_teammate(origin, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ssh-remote")
    with sshd(tmp / "sshd") as server:
        return share(origin, "store", server.url(tmp / "store"), {"keyfile": str(server.keyfile)}, tmp / "clone")


@pytest.fixture(params=["local", "ssh"])
def teammate(request) -> Path:
    return request.getfixturevalue(f"{request.param}_teammate")


def test_pull_restores_every_output(teammate):
    assert (teammate / "models/finetune/best/model.safetensors").exists()
    assert (teammate / "data/split/split.parquet").exists()
    status = run(["dvc", "status"], teammate).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro"], teammate).stdout
    assert "Running stage" not in again, again


def test_pulled_model_completes(local_teammate):
    # Either remote gives the same files: dvc status above checks them against dvc.lock.
    run(
        [
            "autocoder",
            "complete",
            "--model",
            "models/finetune/best",
            "--lang",
            "python",
            "--max-new-tokens",
            "8",
            "def f",
        ],
        local_teammate,
    )


def test_ssh_credentials_stay_out_of_git(origin, ssh_teammate):
    for project in (origin, ssh_teammate):
        tracked = (project / ".dvc/config").read_text()
        assert "ssh://" in tracked and "keyfile" not in tracked and "password" not in tracked
        assert "keyfile" in (project / ".dvc/config.local").read_text()
        listed = run(["git", "ls-files"], project).stdout + run(["git", "status", "--porcelain"], project).stdout
        assert "config.local" not in listed


def data_hashes(project: Path) -> dict[str, str]:
    """DVC's hash of every data output (data/...) of the clone, segment and split stages."""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {
        out["path"]: out["md5"]
        for stage in DATA_STAGES
        for out in stages[stage]["outs"]
        if out["path"].startswith("data/")
    }


@pytest.fixture(scope="module")
def twin(origin, tmp_path_factory) -> Path:
    """A second project from the same sources and params, with its own git repo and DVC cache."""
    project = make_tiny_project(tmp_path_factory.mktemp("twin"))
    params = tiny_params(project, origin.parent / "corpus")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert (project / "params.yaml").read_text() == (origin / "params.yaml").read_text()
    run(["dvc", "repro", "split"], project)
    return project


def test_same_sources_and_params_give_identical_data(origin, twin):
    hashes = data_hashes(twin)
    assert set(hashes) == {"data/raw", "data/segments", "data/split"}
    assert hashes == data_hashes(origin)


def test_forced_rerun_gives_identical_data(twin):
    before = data_hashes(twin)
    out = run(["dvc", "repro", "-f", "split"], twin).stdout
    assert all(f"Running stage '{stage}'" in out for stage in DATA_STAGES), out
    assert data_hashes(twin) == before
