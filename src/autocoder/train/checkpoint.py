"""Resumable checkpoints: a killed run restarts from the newest one and ends where an uninterrupted
run with the same seed ends.

`<checkpoint_dir>/step-00000200/` is accelerate's save_state (model, optimizer, scheduler, every
process' RNG states) plus `progress.json` (the step, which fixes the data position; the best dev
loss so far; the metric history; the MLflow run id; the fingerprint of the params and data). It is
written under a temporary name and renamed when complete. The best model so far lives beside it in
`best-step-00000150/` (the folder the newest checkpoint's progress names).

Several machines: each keeps a full checkpoint of its own in `<checkpoint_dir>/machine-<rank>/`
(its disk may be its own, or shared with the others: the folders never collide), and a rerun
resumes from the newest step that every machine has.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object

from autocoder.atomic import atomic_dir, removed_on_error, write_json
from autocoder.params import FinetuneParams

# Tied embeddings (lm_head = embed_tokens) are one tensor twice; safetensors stores it once, and
# accelerate says so on every save ("Removed shared tensor {'lm_head.weight'} while saving"). Loading
# the checkpoint ties them again (resume is tested), so the line says nothing a user must act on.
logging.getLogger("accelerate.utils.other").addFilter(lambda record: "Removed shared tensor" not in record.getMessage())

PROGRESS_FILE = "progress.json"
ADAPTER_DIR = "adapter"  # a LoRA run's adapter, in its best model's folder
# Knobs that change how a run is watched or where it writes, not what it computes.
_NOT_FINGERPRINTED = {
    "checkpoint_every",
    "log_every",
    "out_dir",
    "checkpoint_dir",
    "num_processes",
    "mixed_precision",
    "compile",
    "rendezvous_timeout",
}


def fingerprint(ft: FinetuneParams, data_hash: str, num_processes: int, mixed_precision: str) -> str:
    """What a checkpoint must match to be resumed: the params that change the result, the data, and
    the processes and precision actually used."""
    key = {
        "finetune": ft.model_dump(exclude=_NOT_FINGERPRINTED),
        "data": data_hash,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    best_dev_loss: float = math.inf
    best_step: int = 0  # 0: not evaluated yet
    evals_without_improvement: int = 0
    tokens_seen: int = 0  # real (non-pad) tokens, all processes
    train_seconds: float = 0.0  # training only: evaluations and checkpoints excluded
    history: list[dict] = field(default_factory=list)  # rows of plots/finetune.csv
    mlflow_run_id: str | None = None


def machine_dir(ckpt_dir: Path, accelerator: Accelerator) -> Path:
    """This machine's checkpoint folder: checkpoint_dir itself on one machine."""
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # set by torchrun
    if per_machine == accelerator.num_processes:
        return ckpt_dir
    return ckpt_dir / f"machine-{accelerator.process_index // per_machine}"


def step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:08d}"


def best_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"best-step-{step:08d}"


def latest(ckpt_dir: Path, fp: str, log, needs_best: bool = True) -> tuple[Path, Progress] | None:
    """The newest checkpoint that every process can resume from: complete, made with the same params
    and data, and, for the process that writes the outputs (needs_best), with its best model. A kill
    during a save can leave one machine a checkpoint ahead of another; all of them resume from the
    same step. Every process must call this."""
    found = {}
    for path in sorted(ckpt_dir.glob("step-*"), reverse=True):
        try:
            saved = json.loads((path / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            log(f"ignoring checkpoint {path}: incomplete")
            continue
        if saved.pop("fingerprint") != fp:
            log(f"ignoring checkpoint {path}: it was made with different finetune params or data")
            continue
        progress = Progress(**saved)
        if needs_best and progress.best_step and not best_dir(ckpt_dir, progress.best_step).is_dir():
            log(f"ignoring checkpoint {path}: its best model {best_dir(ckpt_dir, progress.best_step)} is missing")
            continue
        found[progress.step] = path, progress
    everywhere = set.intersection(*(set(steps) for steps in gather_object([list(found)])))
    for step in sorted(found, reverse=True):
        if step in everywhere:
            return found[step]
        log(f"ignoring checkpoint {found[step][0]}: another machine or process lacks it")
    return None


def save(accelerator: Accelerator, ckpt_dir: Path, progress: Progress, fp: str) -> Path:
    """Save the full training state of every process, on every machine; the folder appears only
    when complete, and the previous one goes only when the new one is on every machine."""
    target = step_dir(ckpt_dir, progress.step)
    tmp = target.with_name(f".{target.name}.tmp")
    # The first process of each machine writes its machine's folder (save_on_each_node).
    if accelerator.is_local_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with removed_on_error(tmp, target):  # e.g. a full disk: one line, and the space given back
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:
        write_json(tmp / PROGRESS_FILE, {**asdict(progress), "fingerprint": fp})
        shutil.rmtree(target, ignore_errors=True)  # an ignored checkpoint of the same step
        os.replace(tmp, target)
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:
        prune(ckpt_dir, keep={target.name, best_dir(ckpt_dir, progress.best_step).name})
    accelerator.wait_for_everyone()
    return target


def save_best(accelerator: Accelerator, model, ckpt_dir: Path, step: int) -> None:
    """Save the model (weights and config, safetensors) as the best so far: a plain save_pretrained
    folder. Every process takes part: under FSDP the full weights are gathered from all of them.
    A LoRA model is saved merged into its base weights, its adapter alone in `adapter/` beside them."""
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)  # no torch.compile "_orig_mod." names
    lora = hasattr(raw, "merge_and_unload")  # a peft model
    state_dict = None if lora else accelerator.get_state_dict(raw)
    if accelerator.is_main_process:
        with atomic_dir(best_dir(ckpt_dir, step)) as tmp:
            if lora:
                # the added rows are in the adapter (trainable tokens): not the whole resized embedding
                raw.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
                copy.deepcopy(raw).merge_and_unload().save_pretrained(tmp)  # the training model stays adapted
            else:
                raw.save_pretrained(tmp, state_dict=state_dict)
    accelerator.wait_for_everyone()


def prune(ckpt_dir: Path, keep: set[str]) -> None:
    """Delete everything in ckpt_dir but `keep` (older checkpoints, stale best models, leftovers)."""
    for path in ckpt_dir.iterdir() if ckpt_dir.is_dir() else []:
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
