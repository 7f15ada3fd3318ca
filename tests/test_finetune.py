"""The finetune stage: tiny real GPT-2 models trained on real code with real accelerate (in this
process, and launched as the DVC stage launches it), logged to real MLflow SQLite stores."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from autocoder.complete import Completer
from autocoder.corpus import Corpus, split_rows
from autocoder.errors import UserError
from autocoder.format import CONTROL_IDS, IGNORE
from autocoder.params import Params
from autocoder.scoring import DevWindows, collate
from autocoder.train import checkpoint, run
from autocoder.train.data import Permutation, TrainWindows
from autocoder.train.launch import hardware_flags, resolve_mixed_precision
from helpers import ROOT, VENV_BIN, real_code_files, write_corpus
from services import free_port

SEGMENT_LEN = 30
DEV = {"py/heapq.py", "py/shlex.py", "java/Factorial5.java"}
# The GPT-2 tokenizer of the corpus fixture has no FIM tokens; sliding windows, fp32 and no compile
# keep these runs small and exactly comparable (the recipe's packed windows, FIM and bf16 have tests
# of their own: test_recipe.py, and test_learned_recipe_trains below).
TINY = {
    "model": "scratch",
    "scratch": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "dropout": 0.0},
    "windows": "sliding",
    "fim_rate": 0.0,
    "compile": False,
    "mixed_precision": "no",
    "max_length": 64,
    "batch_size": 2,
    "learning_rate": 1e-3,
    "max_steps": 12,
    "eval_every": 4,
    "checkpoint_every": 4,
    "log_every": 2,
    "eval_max_windows": 16,
    "early_stopping_patience": None,
}
CKPT, OUT = Path("models/checkpoints"), Path("models/finetune")


@pytest.fixture
def project(tmp_path, monkeypatch, gpt2_tokenizer, mlflow_db):
    """cwd = a project folder with segments and split of real code (windows of 30 tokens) and an empty
    MLflow store; returns make(**finetune) -> Params, which also writes params.yaml for subprocesses."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_corpus(tmp_path / "data", gpt2_tokenizer, real_code_files(), DEV, segment_len=SEGMENT_LEN, stride=15)
    shutil.copytree(ROOT / "stages", tmp_path / "stages")

    def make(**finetune) -> Params:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["segment"].update(segment_len=SEGMENT_LEN, stride=15)
        raw["finetune"].update({**TINY, **finetune})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        return Params.model_validate(raw)

    return make


def start(*args: str, module: bool = True, **popen) -> subprocess.Popen:
    """python -m <args> (or python <script> <args>), as a user would start it in the project."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    return subprocess.Popen([sys.executable, *(["-m"] if module else []), *args], env=env, text=True, **popen)


def launch(num_processes: int, **popen) -> subprocess.Popen:
    """The DVC stage's command, as dvc.yaml writes it."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["finetune"]["cmd"]
    python, *args = shlex.split(cmd.replace("${finetune.num_processes}", str(num_processes)))
    assert python == "python"
    return start(*args, module=False, **popen)


def plot_rows() -> list[dict]:
    with open("plots/finetune.csv") as f:
        return list(csv.DictReader(f))


def metrics() -> dict:
    return json.loads(Path("metrics/finetune.json").read_text())


def assert_same_run(other_rows: list[dict], other_metrics: dict) -> None:
    """This project's last run logged the same steps, losses and learning rates (within a relative
    1e-4) and saw the same tokens as the other run."""
    rows = plot_rows()
    assert [r["step"] for r in rows] == [r["step"] for r in other_rows]
    for key in ("train_loss", "dev_loss", "lr"):
        assert [float(r[key]) for r in rows if r[key]] == pytest.approx(
            [float(r[key]) for r in other_rows if r[key]], rel=1e-4
        ), key
    assert metrics()["tokens_seen"] == other_metrics["tokens_seen"]


def run_info() -> dict:
    return json.loads((OUT / "mlflow_run.json").read_text())


@pytest.mark.slow
def test_short_run(project, monkeypatch, gpt2_tokenizer):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True
    )
    Path("dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "segment": {"cmd": "x", "outs": [{"path": "data/segments", "md5": "aaa.dir"}]},
                    "split": {"cmd": "x", "outs": [{"path": "data/split", "md5": "bbb.dir"}]},
                },
            }
        )
    )
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    params = project(max_steps=10)
    run(params)

    best = OUT / "best"
    model = AutoModelForCausalLM.from_pretrained(best, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == len(gpt2_tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert (best / "model.safetensors").exists() and not list(best.glob("*.bin"))
    # `autocoder complete --model DIR` prompts as the windows were built, not in the seed's text format
    assert Completer.from_pretrained(best).format.name == CONTROL_IDS

    rows = plot_rows()
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]
    assert [r["dev_loss"] != "" for r in rows] == [False, True, False, True, True]  # every 4 steps and the last
    assert all(math.isfinite(float(r["train_loss"])) and float(r["tokens_per_s"]) > 0 for r in rows)
    m = metrics()
    dev = {int(r["step"]): float(r["dev_loss"]) for r in rows if r["dev_loss"]}
    assert m["steps"] == 10 and m["best_step"] == min(dev, key=dev.get)
    assert m["best_dev_perplexity"] == pytest.approx(math.exp(min(dev.values())), rel=1e-4)  # CSV: 6 digits
    assert m["tokens_seen"] > 0 and m["tokens_per_s"] > 0
    assert list(CKPT.iterdir()) == []  # finished: nothing left to resume

    info = run_info()
    assert info["tracking_uri"] == f"sqlite:///{Path.cwd() / 'mlruns.db'}"
    client = mlflow.MlflowClient(info["tracking_uri"])
    logged = client.get_run(info["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.experiment_id == info["experiment_id"]
    assert logged.data.params["learning_rate"] == "0.001" and logged.data.params["scratch.n_layer"] == "1"
    assert len(client.get_metric_history(info["run_id"], "train_loss")) == 5
    assert [p.step for p in client.get_metric_history(info["run_id"], "dev_perplexity")] == [4, 8, 10]
    tags = logged.data.tags
    assert tags["tokenizer_fingerprint"] == info["tokenizer_fingerprint"]
    assert tags["dev_split"] == info["dev_split"] and len(info["dev_split"]) == 64
    assert (
        tags["git_commit"]
        == subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    )
    assert tags["dvc.md5.data/segments"] == "aaa.dir" and tags["dvc.md5.data/split"] == "bbb.dir"
    assert tags["dvc_exp_name"] == "tiny-exp"
    artifacts = Path(logged.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(Path.cwd() / "mlartifacts")
    assert (artifacts / "best/model.safetensors").exists() and (artifacts / "tokenizer/tokenizer.json").exists()


@pytest.mark.e2e  # accelerate launch
def test_two_processes_match_one_with_grad_accum(project):
    """DDP over gloo in 2 CPU processes sees the same global batches as 1 process accumulating 2."""
    project(num_processes=2, grad_accum=1, max_steps=6, eval_every=3)
    proc = launch(2, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "--multi_gpu" in out and "of 2 x 1 x 2 windows" in out
    ddp_rows, ddp_metrics = plot_rows(), metrics()
    logged = mlflow.MlflowClient(run_info()["tracking_uri"]).get_run(run_info()["run_id"])
    assert logged.data.tags["num_processes"] == "2"

    run(project(num_processes=1, grad_accum=2, max_steps=6, eval_every=3))
    assert_same_run(ddp_rows, ddp_metrics)


@pytest.mark.slow
def test_resume_after_kill_ends_like_an_uninterrupted_run(project, capsys):
    params = project(max_steps=20, eval_every=8, scratch={**TINY["scratch"], "dropout": 0.1})  # dropout: RNG restored
    first = CKPT / "step-00000004"
    with open("attempt.log", "w") as log:
        proc = start("autocoder.cli", "finetune", stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert first.exists(), Path("attempt.log").read_text()
    assert not Path("metrics/finetune.json").exists() and not OUT.exists(), "the run ended before it was killed"
    client = mlflow.MlflowClient(f"sqlite:///{Path.cwd() / 'mlruns.db'}")
    killed = client.search_runs([client.get_experiment_by_name("autocoder").experiment_id])
    assert [r.info.status for r in killed] == ["RUNNING"]  # a killed process cannot end its run

    saved = sorted(CKPT.glob("step-*"))[-1]
    resume_step = int(saved.name.removeprefix("step-"))
    ignored = []
    assert checkpoint.latest(CKPT, "other params", ignored.append) is None
    assert "different finetune params or data" in ignored[0]

    run(params)
    assert f"resuming from {saved} at step {resume_step} of 20" in capsys.readouterr().out
    resumed_rows, resumed_metrics = plot_rows(), metrics()
    assert [int(r["step"]) for r in resumed_rows] == list(range(2, 21, 2))  # the killed attempt's rows kept
    assert run_info()["run_id"] == killed[0].info.run_id  # the same MLflow run, reopened and finished
    assert client.get_run(run_info()["run_id"]).info.status == "FINISHED"

    shutil.rmtree(OUT)
    run(params)  # uninterrupted, same seed
    assert "resuming" not in capsys.readouterr().out
    for key in ("train_loss", "dev_loss"):
        assert [float(r[key]) for r in plot_rows() if r[key]] == pytest.approx(
            [float(r[key]) for r in resumed_rows if r[key]], rel=1e-4
        ), key
    expected = metrics()
    for key in ("steps", "best_step", "tokens_seen"):
        assert resumed_metrics[key] == expected[key]
    assert resumed_metrics["best_dev_loss"] == pytest.approx(expected["best_dev_loss"], rel=1e-5)


def _truncated_weights(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_model", "finetune.model: cannot load 'no-such-org/no-such-model'"),
        ("truncated_weights", "is corrupt"),
        ("broken_config", "finetune.model: cannot load"),
        ("short_context", "finetune.max_length: 64 exceeds the context"),
        ("unreachable_tracking", "MLFLOW_TRACKING_URI: cannot reach the MLflow tracking store 'http://127.0.0.1:1'"),
    ],
)
def test_bad_input_fails_in_one_line_before_training(project, tiny_model_dir, monkeypatch, case, expected):
    model = str(tiny_model_dir)
    if case == "missing_model":
        model = "no-such-org/no-such-model"
    elif case == "truncated_weights":
        _truncated_weights(tiny_model_dir)
    elif case == "broken_config":
        (tiny_model_dir / "config.json").write_text('{"model_type": "gpt2", ')
    elif case == "short_context":
        config = json.loads((tiny_model_dir / "config.json").read_text())
        (tiny_model_dir / "config.json").write_text(json.dumps({**config, "n_positions": 32}))
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(UserError) as err:
        run(project(model=model))
    assert expected in str(err.value) and "\n" not in str(err.value)
    for output in (CKPT, OUT, Path("metrics"), Path("plots"), Path("mlartifacts")):
        assert not output.exists(), output


@pytest.mark.e2e  # accelerate launch
def test_stage_command_reports_bad_input_in_one_line(project):
    project(model="no-such-org/no-such-model")
    proc = launch(2, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 2
    reported = [line for line in err.splitlines() if line.startswith("autocoder finetune:")]
    assert len(reported) == 1 and "finetune.model" in reported[0] and "no-such-model" in reported[0], err
    assert "Traceback" not in err and not CKPT.exists()


def test_pretrained_model_gets_the_datas_tokens(project, tmp_path, gpt2_tokenizer):
    """A local GPT-2 with the plain 50,257-token vocabulary gets rows for the control and pad tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from autocoder.train.inputs import build_model, check_inputs

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=50257)).save_pretrained(
        tmp_path / "plain-gpt2"
    )
    params = project(model="plain-gpt2")
    inputs = check_inputs(params)
    model = build_model(params.finetune, inputs.model_config, inputs.tokenizer, inputs.corpus.meta.control_token_ids)
    assert model.get_input_embeddings().num_embeddings == len(gpt2_tokenizer) == 50257 + 2 + 3 + 1  # controls, FIM, pad
    assert model.config.pad_token_id == gpt2_tokenizer.pad_token_id
    # new_token_init "spelling": "<java>" starts as the mean of "<", "java", ">", rows the model has
    rows = model.get_input_embeddings().weight
    spelled = [gpt2_tokenizer.convert_tokens_to_ids(t) for t in ("<", "java", ">")]
    torch.testing.assert_close(rows[gpt2_tokenizer.convert_tokens_to_ids("<java>")], rows[spelled].mean(0))
    assert model.config.control_tokens == {"python": "<python>", "java": "<java>"}  # the folder says how to prompt
    drawn = (
        build_model(
            params.finetune.model_copy(update={"new_token_init": "mean"}),
            inputs.model_config,
            inputs.tokenizer,
            inputs.corpus.meta.control_token_ids,
        )
        .get_input_embeddings()
        .weight
    )
    assert not torch.allclose(drawn[gpt2_tokenizer.convert_tokens_to_ids("<java>")], rows[spelled].mean(0))
    (tmp_path / "plain-gpt2/notes.txt").write_text("changed")  # a changed local model: checkpoints do not match
    assert check_inputs(params).data_hash != inputs.data_hash


def test_launch_flags_follow_the_hardware_unless_configured():
    two = hardware_flags(2, "auto", {}, 300)
    assert "--multi_gpu" in two and two[two.index("--main_process_port") + 1] == "0"
    assert two[two.index("--mixed_precision") + 1] == resolve_mixed_precision("auto")  # bf16 on this CPU
    assert "--multi_gpu" not in hardware_flags(1, "auto", {}, 300)  # accelerate refuses it for one process
    if "OMP_NUM_THREADS" not in os.environ:
        threads = int(two[two.index("--num_cpu_threads_per_process") + 1])
        assert threads == max(1, len(os.sched_getaffinity(0)) // 2)
    # A config's own settings win; the flags fill in only what it leaves out.
    machines = hardware_flags(4, "no", two_machine_config(29500), 60)
    for flag in ("--num_machines", "--multi_gpu", "--main_process_port"):
        assert flag not in machines
    assert machines[machines.index("--rdzv_conf") + 1] == "timeout=60"
    if "OMP_NUM_THREADS" not in os.environ:  # 2 processes on each machine
        assert machines[machines.index("--num_cpu_threads_per_process") + 1] == str(
            max(1, len(os.sched_getaffinity(0)) // 2)
        )
    with pytest.raises(UserError, match="finetune.num_processes: 3 processes do not divide among 2 machines"):
        hardware_flags(3, "no", two_machine_config(29500), 60)


def test_train_order_is_a_seeded_permutation_per_epoch(tmp_path, gpt2_tokenizer):
    for n in (1, 2, 7, 64, 1000):
        assert sorted(Permutation(n, b"k")[i] for i in range(n)) == list(range(n))
    seg, split = write_corpus(tmp_path, gpt2_tokenizer, real_code_files(), DEV, segment_len=SEGMENT_LEN, stride=15)
    corpus = Corpus(seg)
    data = TrainWindows(corpus.windows(split_rows(corpus, split, "train")), seed=1)
    first = [data[i][0].tolist() for i in range(20)]
    data.set_epoch(1)
    assert [data[i][0].tolist() for i in range(20)] != first
    data.set_epoch(0)
    assert [data[i][0].tolist() for i in range(20)] == first


def test_dev_windows_score_every_token_once(tmp_path, gpt2_tokenizer):
    seg, split = write_corpus(tmp_path, gpt2_tokenizer, real_code_files(), DEV, segment_len=SEGMENT_LEN, stride=15)
    corpus = Corpus(seg)
    rows = split_rows(corpus, split, "dev")
    windows = corpus.windows(rows, stride=SEGMENT_LEN)
    dev = DevWindows(windows, limit=None, tokenizer=gpt2_tokenizer)
    scored = sum(int((labels != IGNORE).sum()) for _, labels in (dev[i] for i in range(len(dev))))
    # every file token once, and the eos closing each file (not each window)
    assert scored == int(corpus.files["n_tokens"][rows].sum()) + len(rows)
    text = "".join(gpt2_tokenizer.decode(corpus.file_tokens(int(row)).tolist()) for row in rows)
    assert dev.n_bytes == len(text.encode())
    capped = DevWindows(windows, limit=5, tokenizer=gpt2_tokenizer)
    assert len(capped) == 5 and capped.picked[0] == 0 and capped.picked[-1] == len(windows) - 1


def test_collate_pads_to_the_longest_and_ignores_padding():
    a, b = np.arange(5, dtype=np.int64), np.arange(3, dtype=np.int64)
    batch = collate([(a, a), (b, b)], pad_id=99)
    assert batch["input_ids"].shape == (2, 5) and batch["n_tokens"] == 8
    assert batch["input_ids"][1].tolist() == [0, 1, 2, 99, 99]
    assert batch["labels"][1].tolist() == [0, 1, 2, IGNORE, IGNORE]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]


@pytest.mark.slow
def test_learned_recipe_trains(tmp_path, monkeypatch, mlflow_db):
    """The default's recipe end to end in the stage: a learned code tokenizer with FIM tokens, the
    Llama scratch model, packed windows, fill-in-the-middle, bf16 autocast where the CPU has it and
    torch.compile."""
    from autocoder.tokenizer import learn_bpe, with_control_tokens

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files = real_code_files()
    tokenizer = with_control_tokens(
        learn_bpe([text for path, (_, text) in files.items() if path not in DEV], 700), ["<python>", "<java>"]
    )
    write_corpus(tmp_path / "data", tokenizer, files, DEV, segment_len=62, stride=62)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["segment"].update(segment_len=62, stride=62)
    raw["finetune"].update(
        {
            **TINY,
            "windows": "packed",
            "fim_rate": 0.5,
            "mixed_precision": "auto",
            "compile": True,
            "scratch": {**TINY["scratch"], "architecture": "llama"},
        }
    )
    Params.model_validate(raw)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    # A process of its own: accelerate's state (the precision) is set once per process.
    with open("train.log", "w") as log:
        assert start("autocoder.cli", "finetune", stdout=log, stderr=subprocess.STDOUT).wait() == 0, Path(
            "train.log"
        ).read_text()

    best = OUT / "best"
    # The saved weights are the trained ones, by their plain names (not torch.compile's "_orig_mod.")
    loaded, loading = AutoModelForCausalLM.from_pretrained(best, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    config = json.loads((best / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == len(tokenizer)
    assert Completer.from_pretrained(best).can_infill
    rows = plot_rows()
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert all(float(r["dev_bits_per_byte"]) > 0 for r in rows if r["dev_loss"])
    run_ = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(run_info()["run_id"])
    assert run_.data.tags["mixed_precision"] == resolve_mixed_precision("auto")
    # Packed windows of max_length: every position is a real token but the padding that ends a FIM
    # example whose re-encoded text came out shorter.
    assert 0.9 < metrics()["tokens_seen"] / (12 * TINY["batch_size"] * TINY["max_length"]) <= 1


# ---- several machines: two on 127.0.0.1, each with its own copy of the project ----


def two_machine_config(port: int) -> dict:
    """configs/accelerate/two-machines.yaml, on this machine's loopback."""
    config = yaml.safe_load((ROOT / "configs/accelerate/two-machines.yaml").read_text())
    return {**config, "main_process_ip": "127.0.0.1", "main_process_port": port}


def machine(rank: int, folder: Path, **popen) -> subprocess.Popen:
    """One machine's `dvc repro` finetune command, started in its own project folder and process group."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["finetune"]["cmd"]
    python, *args = shlex.split(cmd.replace("${finetune.num_processes}", "2"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PATH": f"{VENV_BIN}:{env['PATH']}", "OMP_NUM_THREADS": "1"}  # two machines on 2 cores
    return subprocess.Popen(
        [sys.executable, *args, "--machine_rank", str(rank)],
        cwd=folder,
        env=env,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


@pytest.mark.e2e  # accelerate launch, twice
def test_two_machines_match_one_and_resume_after_one_is_killed(project, tmp_path):
    """Two machines (one process each, gloo over 127.0.0.1) train as one machine accumulating two
    micro-batches; killing machine 1 stops both with an error, and a rerun of both resumes."""
    config = tmp_path / "configs/accelerate/two-machines.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump(two_machine_config(free_port())))
    project(
        num_processes=2,
        grad_accum=1,
        max_steps=80,
        eval_every=8,
        checkpoint_every=8,
        accelerate_config="configs/accelerate/two-machines.yaml",
    )
    other = tmp_path / "machine-1"  # machine 1's own disk: the same commit and data
    other.mkdir()
    for name in ("data", "stages", "configs", "params.yaml"):
        (shutil.copytree if (tmp_path / name).is_dir() else shutil.copy)(tmp_path / name, other / name)

    # ---- machine 1 killed after the first checkpoint: both stop ----
    first = other / CKPT / "machine-1/step-00000008"
    m0, m1 = machine(0, tmp_path), machine(1, other)
    deadline = time.monotonic() + 300
    while not first.exists() and m1.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for proc in [psutil.Process(m1.pid), *psutil.Process(m1.pid).children(recursive=True)]:
        proc.kill()  # the whole machine: its launcher, torchrun and the training process
    m1.communicate()
    out0 = m0.communicate(timeout=120)[0]
    assert first.exists() and (CKPT / "machine-0/step-00000008").exists(), out0
    assert m0.returncode != 0 and not OUT.exists(), out0
    reported = [line for line in out0.splitlines() if line.startswith("autocoder finetune:")]
    assert len(reported) == 1 and "process 0 of 2 lost the others" in reported[0], out0
    assert "rerun every machine to resume" in reported[0]

    # ---- both rerun: they resume, and only machine 0 writes outputs and logs ----
    m0, m1 = machine(0, tmp_path), machine(1, other)
    out1 = m1.communicate(timeout=600)[0]
    out0 = m0.communicate(timeout=600)[0]
    assert m0.returncode == 0 and m1.returncode == 0, out0 + out1
    assert "resuming from models/checkpoints/machine-0/step-" in out0, out0
    assert "of 2 x 1 x 2 windows" in out0
    assert not (other / OUT).exists() and not (other / "metrics").exists() and not (other / "mlruns.db").exists()
    assert not list((other / CKPT).rglob("step-*")) and not list(CKPT.rglob("step-*"))  # done on both
    two_rows, two_metrics = plot_rows(), metrics()
    logged = mlflow.MlflowClient(run_info()["tracking_uri"]).get_run(run_info()["run_id"])
    assert logged.data.tags["num_processes"] == "2" and logged.info.status == "FINISHED"

    # ---- one machine, one process, accumulating two micro-batches: the same run ----
    shutil.rmtree(OUT)
    run(project(num_processes=1, grad_accum=2, max_steps=80, eval_every=8, checkpoint_every=8))
    assert_same_run(two_rows, two_metrics)


@pytest.mark.e2e  # accelerate launch
def test_a_machine_that_cannot_reach_the_main_one_stops_in_one_line(project, tmp_path):
    config = tmp_path / "configs/accelerate/two-machines.yaml"
    config.parent.mkdir(parents=True)
    port = free_port()  # nothing listens there
    config.write_text(yaml.safe_dump(two_machine_config(port)))
    project(num_processes=2, rendezvous_timeout=3, accelerate_config="configs/accelerate/two-machines.yaml")
    started = time.monotonic()
    out = machine(1, tmp_path).communicate(timeout=120)[0]
    assert time.monotonic() - started < 60, out
    reported = [line for line in out.splitlines() if line.startswith("autocoder finetune:")]
    assert reported == [
        f"autocoder finetune: machine 1 cannot reach the main machine at 127.0.0.1:{port} within 3 s "
        "(finetune.rendezvous_timeout; Connection refused): is machine 0 running, and is the port open?"
    ], out
    assert "Traceback" not in out and not CKPT.exists()


def test_the_fsdp_config_shards_every_decoder_block_and_is_refused_without_gpus():
    """FSDP is not run here: accelerate chooses it only on GPUs. What is tested is what accelerate
    makes of the config (the environment it gives the processes) and that the blocks it wraps are
    those of the models finetune builds."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    config_file = str(ROOT / "configs/accelerate/fsdp.yaml")
    args, _, _ = _validate_launch_command(
        launch_command_parser().parse_args(["--config_file", config_file, "--num_processes", "2", "train.py"])
    )
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    llama = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2))
    blocks = {type(llama.model.layers[0]).__name__, type(gpt2.transformer.h[0]).__name__}
    assert set(env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",")) == blocks

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="distributed_type FSDP needs GPUs, and this machine has none"):
            hardware_flags(2, "auto", yaml.safe_load(Path(config_file).read_text()), 60)


def _tiny_llama(tmp_path: Path, name: str, vocab_size: int, **config) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    LlamaForCausalLM(
        LlamaConfig(
            **{**shape, "max_position_embeddings": 64, **config}, vocab_size=vocab_size, tie_word_embeddings=True
        )
    ).save_pretrained(tmp_path / name)
    return tmp_path / name


def test_rope_model_trains_at_a_longer_context_than_its_config(project, tmp_path, gpt2_tokenizer, capsys):
    """A Llama saved with 32 positions trains on 64-token windows (RoPE has no table to outgrow) and is
    saved with the context it was trained at; GPT-2's learned positions refuse (the bad-input test)."""
    _tiny_llama(tmp_path, "short-llama", len(gpt2_tokenizer), num_hidden_layers=1, max_position_embeddings=32)
    run(project(model="short-llama", max_steps=2, eval_every=2, checkpoint_every=2))
    assert "'short-llama' has 32 positions; trained at 64 (RoPE)" in capsys.readouterr().out
    saved = json.loads((OUT / "best/config.json").read_text())
    assert saved["max_position_embeddings"] == 64


def test_grown_model_computes_what_the_pretrained_one_did_and_trains(project, tmp_path, gpt2_tokenizer):
    from autocoder.train.inputs import grown

    folder = _tiny_llama(tmp_path, "two-layers", len(gpt2_tokenizer))
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    deeper = grown(model, 5)
    assert deeper.config.num_hidden_layers == len(deeper.model.layers) == 5
    ids = torch.randint(0, len(gpt2_tokenizer), (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(deeper(ids).logits, model(ids).logits)
    # a copy is not the layer itself: training moves each on its own
    assert deeper.model.layers[1].mlp.down_proj.weight.abs().sum() == 0
    assert (
        deeper.model.layers[0].mlp.down_proj.weight.data_ptr() != deeper.model.layers[1].mlp.down_proj.weight.data_ptr()
    )

    run(project(model="two-layers", grow_layers=3, max_steps=2, eval_every=2, checkpoint_every=2))
    trained = AutoModelForCausalLM.from_pretrained(OUT / "best", use_safetensors=True)
    assert trained.config.num_hidden_layers == 3
    assert trained.model.layers[1].mlp.down_proj.weight.abs().sum() > 0  # the copy learned


def test_grow_layers_refuses_models_it_cannot_grow(project, tiny_model_dir, tmp_path, gpt2_tokenizer):
    with pytest.raises(UserError, match=r"^finetune.grow_layers: gpt2 models cannot be grown \(Llama-style only\)$"):
        run(project(model=str(tiny_model_dir), grow_layers=3))
    _tiny_llama(tmp_path, "two-layers", len(gpt2_tokenizer))
    with pytest.raises(UserError, match=r"^finetune.grow_layers: 1 is fewer than the model's 2 layers$"):
        run(project(model="two-layers", grow_layers=1))
    with pytest.raises(ValueError, match="finetune.grow_layers: deepens a pretrained model"):
        project(grow_layers=3)


def test_lora_trains_adapters_and_the_added_rows_and_saves_a_merged_model(project, tmp_path, gpt2_tokenizer):
    """finetune.lora: the pretrained weights stay frozen but for the rows of the tokens the data adds;
    best/ is the merged model, and best/adapter/ applied to the starting model computes the same."""
    from peft import PeftModel

    from autocoder.train.checkpoint import ADAPTER_DIR
    from autocoder.train.inputs import build_model, check_inputs

    folder = _tiny_llama(tmp_path, "plain-llama", 50257)  # GPT-2's vocabulary, without the data's 6 tokens
    params = project(model="plain-llama", lora={"r": 4, "alpha": 8}, learning_rate=1e-2, max_steps=4, eval_every=4)
    run(params)
    merged = AutoModelForCausalLM.from_pretrained(OUT / "best", use_safetensors=True)
    adapter = OUT / "best" / ADAPTER_DIR
    assert (adapter / "adapter_model.safetensors").stat().st_size < (OUT / "best/model.safetensors").stat().st_size / 4

    inputs = check_inputs(params)
    start = build_model(
        params.finetune.model_copy(update={"lora": None}),
        inputs.model_config,
        inputs.tokenizer,
        inputs.corpus.meta.control_token_ids,
    )
    before = start.get_input_embeddings().weight.detach().clone()
    after = merged.get_input_embeddings().weight.detach()
    torch.testing.assert_close(after[:50257], before[:50257])  # the pretrained rows: frozen
    assert not torch.allclose(after[50257:], before[50257:])  # the control, FIM and pad rows: trained
    assert not torch.allclose(
        merged.model.layers[0].mlp.down_proj.weight, start.model.layers[0].mlp.down_proj.weight
    )  # the adapters, merged in

    adapted = PeftModel.from_pretrained(start, adapter).eval()
    ids = torch.tensor([gpt2_tokenizer.encode("<python>def f(x):\n    return x")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
    assert AutoModelForCausalLM.from_pretrained(folder).config.vocab_size == 50257  # the pretrained folder untouched


def test_lora_needs_a_pretrained_model(project):
    with pytest.raises(ValueError, match="finetune.lora: adapts a pretrained model"):
        project(model="scratch", lora={"r": 4})
