"""The registry: versions tagged with their measurement, the champion alias moved only to a better,
comparable model, also under concurrent registrations; the champion as a pyfunc model and over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pandas as pd
import pytest

from autocoder import cli, registry, serving
from autocoder.champion import CHAMPION, champion_uri, local_model
from autocoder.complete.load import logged_completer
from autocoder.params import generation_settings
from autocoder.tracking import read_run_info
from helpers import TINY_DEV, finetuned_project, real_code_files, save_tiny_model, write_corpus


@pytest.fixture(scope="module")
def logged(tmp_path_factory, gpt2_tokenizer, _migrated_mlflow_db):
    """(params, model URI): a project whose finetune run holds the tiny model as a pyfunc model. Each
    test registers it under a registered model name of its own."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copyfile(_migrated_mlflow_db, root / "mlruns.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(root)
        data = write_corpus(root / "data", gpt2_tokenizer, real_code_files(), dev=TINY_DEV)
        params = finetuned_project(root, *data, save_tiny_model(root / "model", gpt2_tokenizer))
        with mlflow.start_run(run_id=read_run_info(params.finetune.out_dir)["run_id"]):
            model_info = serving.log_model(
                f"{params.finetune.out_dir}/best", list(params.languages), generation_settings(params.evaluate)
            )
        yield params, model_info.model_uri


def _measured(bpb: float, fingerprint: str = "tok-a", files: str = "files-a") -> registry.Measurement:
    return registry.Measurement(bpb, files, 2.0**bpb, fingerprint)


def _champion_version(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)


@pytest.mark.slow
def test_champion_moves_only_to_a_better_comparable_model(logged):
    _, uri = logged
    name = "rules"
    client = mlflow.MlflowClient()
    steps = [  # (measurement, champion after it, words in the reason)
        (_measured(10.0), "1", "no champion yet"),
        (_measured(12.0), "1", "12 >= champion v1's 10"),
        (_measured(8.0), "3", "8 < champion v1's 10"),
        # another tokenizer over the same dev files: bits per byte compare (the pretrained model's case)
        (_measured(7.0, fingerprint="tok-b"), "4", "7 < champion v3's 8 over the same dev files"),
        (_measured(2.0, files="files-b"), "4", "not compared: dev files files-b"),
        (_measured(7.0), "4", "7 >= champion v4's 7"),
    ]
    for version, (measured, champion, reason) in enumerate(steps, start=1):
        decision = registry.register(uri, name, measured)
        assert decision.version == str(version) and decision.promoted == (champion == str(version))
        assert reason in decision.reason
        assert _champion_version(name) == champion
        tags = client.get_model_version(name, str(version)).tags
        assert registry.Measurement.from_tags(tags) == measured
        assert tags[registry.DECISION_TAG] == decision.reason


@pytest.mark.slow
def test_a_version_worse_than_the_champion_in_a_score_is_tagged_so(logged):
    _, uri = logged
    name, client = "regressions", mlflow.MlflowClient()
    registry.register(uri, name, _measured(10.0), {"humaneval_pass_at_1": 0.25})
    # better perplexity (the new champion) but a worse HumanEval: crowned, and tagged as a regression
    second = registry.register(uri, name, _measured(9.0), {"humaneval_pass_at_1": 0.125})
    tags = client.get_model_version(name, second.version).tags
    assert second.promoted and float(tags["humaneval_pass_at_1"]) == 0.125
    assert tags[registry.REGRESSION_TAG] == "humaneval_pass_at_1 0.125 < champion v1's 0.25"
    # as good as the champion, or a score the champion lacks: no tag
    third = registry.register(uri, name, _measured(9.5), {"humaneval_pass_at_1": 0.125, "robust": 0.1})
    assert registry.REGRESSION_TAG not in client.get_model_version(name, third.version).tags


CHILD = """
import sys
from autocoder import registry
from autocoder.params import load_params
from autocoder.tracking import configure
configure(load_params("params.yaml").mlflow)
print("ready", flush=True)
registry.register(sys.argv[1], sys.argv[2], registry.Measurement(float(sys.argv[3]), "files-a", 1.0, "tok-a"))
"""


@pytest.mark.slow
def test_concurrent_registrations_lose_no_version_and_crown_the_best(logged):
    _, uri = logged
    name = "race"
    registry.register(uri, name, _measured(10.0))
    client = mlflow.MlflowClient()
    children = []
    with registry.registry_lock(mlflow.get_registry_uri()):  # both children start, then wait on this lock
        for ppl in ("7.0", "6.0"):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, uri, name, ppl],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for child in children:
            assert child.stdout.readline() == "ready\n", child.stderr.read()
        time.sleep(1.0)  # time enough to register if the lock did not hold them
        assert len(client.search_model_versions(f"name = '{name}'")) == 1
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    versions = {
        str(v.version): float(v.tags["dev_bits_per_byte"]) for v in client.search_model_versions(f"name = '{name}'")
    }
    assert sorted(versions.values()) == [6.0, 7.0, 10.0]
    assert versions[_champion_version(name)] == 6.0


def test_champion_pyfunc_predicts_and_backs_complete(logged, capsys):
    params, uri = logged
    name = params.evaluate.registered_model_name  # what `autocoder complete` loads by default
    registry.register(uri, name, _measured(10.0))
    model = mlflow.pyfunc.load_model(champion_uri(name))
    out = model.predict(
        pd.DataFrame({"lang": ["python", "java"], "context": ["def f", "class A"], "max_new_tokens": [3, 5]})
    )
    assert list(out.columns) == ["completion", "confidence"] and len(out) == 2
    assert all(isinstance(text, str) and text for text in out["completion"])
    out = model.predict([{"lang": "python", "context": "def f", "max_new_tokens": 3}])
    assert isinstance(out["completion"][0], str)
    # `autocoder complete` without --model completes with the champion
    cli.main(["complete", "--lang", "python", "--max-new-tokens", "3", "def f"])
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_the_champion_is_found_without_importing_mlflow(logged, tmp_path):
    params, uri = logged
    name = params.evaluate.registered_model_name  # what `autocoder complete` loads by default
    registry.register(uri, name, _measured(10.0))
    via_mlflow = mlflow.pyfunc.load_model(champion_uri(name))
    hf_dir, config = local_model(mlflow.get_tracking_uri(), champion_uri(name))
    assert config == via_mlflow.model_config and (hf_dir / "config.json").is_file()
    settings = {"max_new_tokens": 6, "repetition_penalty": 1.1}
    [theirs] = via_mlflow.unwrap_python_model().completer.complete("python", "def f", **settings)
    [ours] = logged_completer(hf_dir, config).complete("python", "def f", **settings)
    assert ours.text == theirs.text and ours.confidence == pytest.approx(theirs.confidence)
    # what it cannot read that way is left to MLflow: no such model, not SQLite, a version URI
    assert local_model(mlflow.get_tracking_uri(), champion_uri("no-such-model")) is None
    assert local_model(f"file://{tmp_path}", champion_uri(name)) is None
    assert local_model(mlflow.get_tracking_uri(), f"models:/{name}/1") is None
    # `autocoder complete` without --model: the champion's completion, and MLflow never imported
    check = (
        "import sys; from autocoder import cli; cli.main(['complete', '--lang', 'python', '--max-new-tokens', '6', "
        "'def f']); assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == theirs.text


def test_pyfunc_generates_as_the_model_was_evaluated(logged):
    """A row that leaves the generation settings out gets those the evaluate stage measured with."""
    params, uri = logged
    model = mlflow.pyfunc.load_model(uri)
    evaluated = generation_settings(params.evaluate)
    assert model.model_config["generation"] == evaluated
    [completion] = model.unwrap_python_model().completer.complete("python", "def f", **evaluated)
    out = model.predict([{"lang": "python", "context": "def f"}])
    assert out["completion"][0] == completion.text and out["confidence"][0] == pytest.approx(completion.confidence)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_champion_answers_http(logged):
    _, uri = logged
    registry.register(uri, "served", _measured(10.0))
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)  # mlflow starts `uvicorn` from PATH: the venv's, as when activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            os.path.join(bin_dir, "mlflow"),
            "models",
            "serve",
            "-m",
            champion_uri("served"),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        body = json.dumps({"dataframe_records": [{"lang": "python", "context": "def f"}]})  # optional columns left out
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = json.loads(response.read())
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline, "the server did not answer in time"
                time.sleep(1)
        [prediction] = answer["predictions"]
        assert isinstance(prediction["completion"], str) and prediction["completion"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
