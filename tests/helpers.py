"""What the tests share besides fixtures: real code files, corpora written as the stages write them,
a tiny real model, and tiny copies of the project that tests run dvc and the CLI in."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from autocoder.corpus import SPLIT_FILE, TOKENIZER_DIR, CorpusWriter, Meta
from autocoder.format import CONTROL_IDS, PromptFormat

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sys.modules["os"].__file__).parent
CONTROL_TOKENS = ["<python>", "<java>"]

JAVA_SNIPPET = """import java.util.Scanner;

public class Factorial {
    public static long factorial(int n) {
        if (n <= 1) {
            return 1;
        }
        return n * factorial(n - 1);
    }

    public static void main(String[] args) {
        Scanner input = new Scanner(System.in);
        int n = input.nextInt();
        System.out.println(factorial(n));
    }
}
"""


def real_code_files() -> dict[str, tuple[str, str]]:
    """A few real files: relative path -> (language, text). Python from the stdlib, Java variants."""
    files = {}
    for name in [
        "bisect.py",
        "heapq.py",
        "colorsys.py",
        "keyword.py",
        "fnmatch.py",
        "stat.py",
        "glob.py",
        "shlex.py",
        "textwrap.py",
        "numbers.py",
    ]:
        files[f"py/{name}"] = ("python", (STDLIB / name).read_text())
    for i in range(6):
        files[f"java/Factorial{i}.java"] = ("java", JAVA_SNIPPET.replace("Factorial", f"Factorial{i}"))
    return files


def write_corpus(
    out: Path, tokenizer, files: dict[str, tuple[str, str]], dev: set[str], segment_len: int = 254, stride: int = 10
) -> tuple[Path, Path]:
    """Write a segments folder and a split folder the way the segment and split stages do."""
    seg_dir, split_dir = out / "segments", out / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    writer = CorpusWriter(seg_dir, "uint16")
    split = {"file_id": [], "split": []}
    for path, (lang, text) in sorted(files.items()):
        data = text.encode()
        fid = writer.add(
            "fixture", path, lang, hashlib.sha256(data).hexdigest(), len(data), tokenizer(text)["input_ids"]
        )
        split["file_id"].append(fid)
        split["split"].append("dev" if path in dev else "train")
    ids = dict(zip(["python", "java"], tokenizer.convert_tokens_to_ids(CONTROL_TOKENS)))
    writer.close(
        Meta("gpt2", segment_len, stride, "uint16", ids, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    )
    tokenizer.save_pretrained(seg_dir / TOKENIZER_DIR)
    pq.write_table(pa.table(split), split_dir / SPLIT_FILE)
    return seg_dir, split_dir


TINY_DEV = {"py/heapq.py", "py/shlex.py", "java/Factorial5.java"}


def save_tiny_model(out: Path, tokenizer) -> Path:
    """Save a tiny randomly initialised GPT-2 (seed 0) with `tokenizer` to `out`, as safetensors + tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_positions=256,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out)  # safetensors by default
    tokenizer.save_pretrained(out)
    return out


def record_prompt_format(folder: Path) -> Path:
    """Record in a model folder's config.json the prompt format our finetune trains (control ids, the
    control tokens of CONTROL_TOKENS), as build_model does."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    PromptFormat(CONTROL_IDS, dict(zip(["python", "java"], CONTROL_TOKENS))).save(config)
    config.save_pretrained(folder)
    return folder


# --- A tiny copy of the project, for tests that run dvc / the CLI as a user would ---

VENV_BIN = Path(sys.executable).parent


def profile(name: str):
    """The params of profiles/<name>.yaml over the project's params.yaml."""
    from autocoder.profiles import load_profile

    return load_profile(name, ROOT / "params.yaml", ROOT / "profiles")


def base_params(folder: Path) -> Path:
    """folder/params.yaml: the project's params with profiles/autocoder-base.yaml applied (the shipped
    base's languages and the generation settings it is evaluated with)."""
    from autocoder.profiles import apply_profile

    params = folder / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", params)
    apply_profile("autocoder-base", params, ROOT / "profiles")
    return params


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command as a user would in a project copy: the venv on PATH, no Hub, the project's own
    MLflow store unless `env` names another."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**base, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(dest: Path) -> Path:
    """The project's tracked and untracked-but-not-ignored files, as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        shipped = rel.startswith("models/autocoder-base/")  # dvc.yaml's deps: the shipped base model
        if (
            src.is_file()
            and (shipped or not rel.startswith(("data/", "models/", "metrics/", "plots/")))
            and rel != "dvc.lock"
        ):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


# The evaluate stage's HumanEval and memorization, shrunk for tiny models: they still run for real.
TINY_HUMANEVAL = {"problems": 2, "max_new_tokens": 8, "infilling": {"tasks": 2, "max_new_tokens": 8}}
TINY_MEMORIZATION = {"files": 2, "prefix_tokens": 8, "new_tokens": 8}
TINY_ROBUSTNESS = {"humaneval_problems": 1}
TINY_JAVAC = {"methods": 2, "command": "javac", "max_new_tokens": 8}


def tiny_params(project: Path, corpus: Path) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["clone"]["sources"] = [{"name": "fixture", "path": str(corpus), "languages": ["python", "java"]}]
    # no download: the tiny scratch model needs no pretrained one
    params["pretrained"] = {"kind": "none", "out_dir": params["pretrained"]["out_dir"]}
    params["segment"].update(tokenizer="gpt2", segment_len=62, stride=16, workers=1)
    # near copies: the fixture's six Java files are near-copies of one another; kept together,
    # none of them could be dev
    params["split"].update(dev_ratio=0.25, near_copy_threshold=None, near_copy_shared_fraction=None)
    params["finetune"].update(
        model="scratch",
        windows="sliding",
        fim_rate=0.0,
        compile=False,
        onnx=False,  # the export takes seconds; test_pipeline.py exports
        mixed_precision="no",
        scratch={"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64},
        max_length=64,
        max_steps=8,
        eval_every=4,
        checkpoint_every=4,
        eval_max_windows=16,
        learning_rate=1e-3,
    )
    params["evaluate"].update(
        line_completion_lines=4,
        infill_lines=4,
        line_max_new_tokens=8,
        max_new_tokens=8,
        prompts={"python": ["def factorial"], "java": ["public static int"]},
        humaneval=TINY_HUMANEVAL,
        memorization=TINY_MEMORIZATION,
        robustness=TINY_ROBUSTNESS,
        javac=TINY_JAVAC,
    )
    return params


def make_tiny_project(root: Path) -> Path:
    """A git repo under root/project: this project's files, params shrunk to a tiny corpus of real
    code (root/corpus) and a tiny scratch model. Nothing is run yet."""
    corpus = root / "corpus"
    for rel, (_, text) in real_code_files().items():
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_text(text)
    project = copy_project(root / "project")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(project, corpus), sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        run(cmd, project)
    return project


def finetuned_project(root: Path, segments: Path, split: Path, model_dir: Path, **evaluate):
    """Make `root` (and the cwd) a project as the finetune stage leaves it: params.yaml pointing at the
    given data, `models/finetune/best/` (a copy of model_dir), and a real MLflow run in the SQLite
    store `root/mlruns.db` (created if missing) recorded in `models/finetune/mlflow_run.json`.
    `evaluate` overrides params' evaluate section; returns the params."""
    import mlflow
    from transformers import AutoTokenizer

    from autocoder.atomic import write_json
    from autocoder.corpus import Corpus, split_rows
    from autocoder.params import load_params
    from autocoder.scoring import dev_split_hash
    from autocoder.tokenizer import fingerprint
    from autocoder.tracking import configure

    os.chdir(root)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["segment"]["out_dir"], raw["split"]["out_dir"] = str(segments), str(split)
    raw["evaluate"].update(
        {
            "line_completion_lines": 4,
            "line_completion_max_context": 64,
            "infill_lines": 4,
            "infill_max_context": 64,
            "line_max_new_tokens": 8,
            "max_new_tokens": 8,
            "perplexity_max_bytes": 8000,
            "latency_repeats": 1,
            "humaneval": TINY_HUMANEVAL,
            "memorization": TINY_MEMORIZATION,
            "robustness": TINY_ROBUSTNESS,
            "javac": TINY_JAVAC,
            **evaluate,
        }
    )
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root}/mlruns.db"
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    out = Path(params.finetune.out_dir)
    record_prompt_format(shutil.copytree(model_dir, out / "best", dirs_exist_ok=True))
    corpus = Corpus(segments)
    dev = split_rows(corpus, split, "dev")
    uri = configure(params.mlflow)
    with mlflow.start_run() as run:
        mlflow.log_metric("dev_perplexity", 100.0, step=1)
    write_json(
        out / "mlflow_run.json",
        {
            "run_id": run.info.run_id,
            "tracking_uri": uri,
            "experiment_id": run.info.experiment_id,
            "tokenizer_fingerprint": fingerprint(AutoTokenizer.from_pretrained(segments / "tokenizer")),
            "dev_split": dev_split_hash(corpus, dev),
        },
    )
    return params


# --- Processes a test leaves behind ---


def zombie_process() -> subprocess.Popen:
    """A child that exited and is not reaped until the caller waits for it: what a SIGKILLed stage
    whose parent (dvc) was killed with it stays under a container's init that never reaps."""
    import psutil

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    return zombie


def kill_processes_in(folder: Path) -> list[int]:
    """SIGKILL every process whose working directory is inside `folder` (what a test
    started there and may have left behind: a killed pipeline's children, DVC's detached queue
    workers and their experiments). Returns their pids."""
    import psutil

    folder = folder.resolve()
    killed = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        cwd = proc.info["cwd"]
        if proc.info["pid"] == os.getpid() or not cwd or not Path(cwd).is_relative_to(folder):
            continue
        try:
            proc.kill()
            killed.append(proc)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(killed, timeout=10)
    return [proc.pid for proc in killed]
