"""The training loop: plain accelerate, in the style of transformers' run_clm_no_trainer.py.

AdamW with linear warmup and decay, per-device micro-batches padded to their longest window,
gradient accumulation, dev perplexity every eval_every optimizer steps, the best model kept, early
stopping, resumable checkpoints. Only the main process logs, tracks and writes outputs.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlflow
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Subset
from transformers import get_scheduler

from autocoder import tracking
from autocoder.atomic import atomic_dir, write_json, write_text
from autocoder.corpus import TOKENIZER_DIR
from autocoder.errors import UserError, first_line
from autocoder.examples import FimTransform, PackedWindows
from autocoder.outputs import FINETUNE_METRICS, FINETUNE_PLOT
from autocoder.params import Params
from autocoder.runtime import ONNX_FILE, export_onnx
from autocoder.scoring import DevScore, DevWindows, collate, summed_nll
from autocoder.train import checkpoint
from autocoder.train.checkpoint import Progress
from autocoder.train.data import TrainWindows
from autocoder.train.inputs import Inputs, build_model
from autocoder.train.launch import resolve_mixed_precision

STAGE = "finetune"
PLOT_COLUMNS = [
    "step",
    "tokens",
    "train_minutes",
    "train_loss",
    "dev_loss",
    "dev_perplexity",
    "dev_bits_per_byte",
    "lr",
    "tokens_per_s",
]


def train(params: Params, inputs: Inputs) -> None:
    ft = params.finetune
    # torchrun on a machine without GPUs: DDP over gloo on the CPU.
    no_gpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=no_gpu_ddp,
        mixed_precision=resolve_mixed_precision(ft.mixed_precision),
        dynamo_backend="inductor" if ft.compile else "no",
        # Checkpoints on every machine, which may not share a disk (train/checkpoint.py)
        project_config=ProjectConfiguration(save_on_each_node=True),
    )
    transformers.utils.logging.disable_progress_bar()  # a bar per saved model would drown the log
    try:
        _train(params, inputs, accelerator)
    except (torch.distributed.DistError, RuntimeError) as e:
        # gloo says only "RuntimeError: [...gloo/transport/tcp/pair.cc] Connection closed by peer"
        if accelerator.num_processes == 1 or not isinstance(e, torch.distributed.DistError) and "gloo" not in str(e):
            raise
        reason = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e)).split(". ")[0]  # less gloo's source file
        raise UserError(
            f"process {accelerator.process_index} of {accelerator.num_processes} lost the others "
            f"({reason}); rerun every machine to resume from the newest checkpoint"
        ) from e
    finally:
        accelerator.end_training()


@dataclass
class Run:
    """What the loop works with, once set up."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: Iterator[dict]  # micro-batches from where the run (or its checkpoint) is
    dev_set: DevWindows
    total_steps: int
    fingerprint: str  # of the params and data a checkpoint may be resumed with
    progress: Progress
    ckpt_dir: Path  # this machine's checkpoints


def _train(params: Params, inputs: Inputs, accelerator: Accelerator) -> None:
    ft, main = params.finetune, accelerator.is_main_process
    log = partial(accelerator.print, f"{STAGE}:", flush=True)
    uri = tracking.configure(params.mlflow) if main else None  # unreachable store: stop before training
    run = _set_up(params, inputs, accelerator, log)
    progress, pad_id, ckpt_dir = run.progress, inputs.tokenizer.pad_token_id, run.ckpt_dir
    with _mlflow_run(params, inputs, progress, accelerator) if main else nullcontext():
        # A window: the steps since the last log line, whose loss and throughput it reports.
        loss_sum, steps, tokens, started = torch.zeros((), device=accelerator.device), 0, 0, time.perf_counter()
        stop = False
        if run.total_steps == 0:  # max_steps 0: the model as it starts, measured and kept as the best
            dev = evaluate(accelerator, run.model, run.dev_set, ft.batch_size, pad_id)
            progress.best_dev_loss, progress.best_step = dev.loss, 0
            checkpoint.save_best(accelerator, run.model, ckpt_dir, 0)
            progress.history.append({"step": 0, "tokens": 0, "train_minutes": 0.0, **_dev_columns(dev)})
            log(f"max_steps 0: no training; dev loss {dev.loss:.4g}, {dev.bits_per_byte:.4g} bits/byte at the start")
        run.model.train()
        while progress.step < run.total_steps and not stop:
            # ---- one optimizer step ----
            lr = run.scheduler.get_last_lr()[0]
            step_loss, step_tokens = _optimizer_step(ft, accelerator, run)
            loss_sum += step_loss
            tokens += step_tokens
            progress.step += 1
            steps += 1
            step, last = progress.step, progress.step == run.total_steps
            eval_due = step % ft.eval_every == 0 or last
            checkpoint_due = step % ft.checkpoint_every == 0 and not last
            if not (step % ft.log_every == 0 or eval_due or checkpoint_due):
                continue

            # ---- the window's numbers; reduce() waits for the device, so the clock stops here ----
            window = torch.stack([loss_sum.double(), torch.tensor(tokens, dtype=torch.float64, device=loss_sum.device)])
            loss_total, window_tokens = accelerator.reduce(window, "sum").tolist()
            seconds = time.perf_counter() - started
            progress.tokens_seen += int(window_tokens)
            progress.train_seconds += seconds
            row = {
                "step": step,
                "tokens": progress.tokens_seen,
                "train_minutes": progress.train_seconds / 60,
                "train_loss": loss_total / accelerator.num_processes / steps,
                "lr": lr,
                "tokens_per_s": window_tokens / seconds,
            }

            # ---- dev loss, the best model kept, early stopping ----
            if eval_due:
                dev = evaluate(accelerator, run.model, run.dev_set, ft.batch_size, pad_id)
                row |= _dev_columns(dev)
                if dev.loss < progress.best_dev_loss:
                    progress.best_dev_loss, progress.best_step, progress.evals_without_improvement = dev.loss, step, 0
                    checkpoint.save_best(accelerator, run.model, ckpt_dir, step)
                else:
                    progress.evals_without_improvement += 1
                    stop = progress.evals_without_improvement == ft.early_stopping_patience

            # ---- log, track, checkpoint ----
            progress.history.append(row)
            eta = (run.total_steps - step) * seconds / steps / 60  # at this window's pace
            log(
                f"step {step}/{run.total_steps} "
                + " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step")
                + (f" eta {eta:.1f} min" if not last else "")
            )
            if main:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            if stop:
                log(f"early stopping: no better dev loss in {ft.early_stopping_patience} evaluations")
            elif checkpoint_due:
                checkpoint.save(accelerator, ckpt_dir, progress, run.fingerprint)
            loss_sum.zero_()
            steps, tokens, started = 0, 0, time.perf_counter()

        accelerator.wait_for_everyone()
        if main:
            _write_outputs(params, inputs, progress, ckpt_dir, uri, log)
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:
        checkpoint.prune(ckpt_dir, keep=set())  # done: nothing left to resume, on any machine


def _set_up(params: Params, inputs: Inputs, accelerator: Accelerator, log) -> Run:
    """Model, optimizer, data and schedule, prepared by accelerate; resumed from the newest matching
    checkpoint when there is one."""
    ft = params.finetune
    ckpt_dir = checkpoint.machine_dir(Path(ft.checkpoint_dir), accelerator)
    if accelerator.num_processes != ft.num_processes:
        log(
            f"warning: finetune.num_processes is {ft.num_processes} but accelerate started "
            f"{accelerator.num_processes} (an accelerate config?); the global batch follows the processes"
        )
    set_seed(ft.seed)
    model = build_model(ft, inputs.model_config, inputs.tokenizer, inputs.corpus.meta.control_token_ids)
    optimizer = torch.optim.AdamW(_param_groups(model, ft.weight_decay), lr=ft.learning_rate)
    if ft.windows == "packed":
        windows = PackedWindows(inputs.corpus, inputs.train_rows, ft.max_length, ft.seed)
    else:
        windows = inputs.corpus.windows(inputs.train_rows)
    fim = FimTransform(inputs.tokenizer, ft.fim_rate, ft.fim_spm_rate) if ft.fim_rate > 0 else None
    # A generator of its own: starting an epoch must not draw from the global RNG that dropout uses,
    # or a resumed run would drift from an uninterrupted one.
    loader = DataLoader(
        TrainWindows(windows, ft.seed, fim),
        batch_size=ft.batch_size,
        collate_fn=partial(collate, pad_id=inputs.tokenizer.pad_token_id),
        generator=torch.Generator(),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total_steps = ft.max_steps if ft.max_steps is not None else max(1, ft.epochs * len(loader) // ft.grad_accum)
    # Stepped once per optimizer step by hand (a prepared scheduler steps once per process).
    scheduler = get_scheduler(
        ft.lr_scheduler,
        optimizer,
        round(ft.warmup_ratio * total_steps),
        total_steps,
        scheduler_specific_kwargs={"min_lr_rate": 0.1} if ft.lr_scheduler == "cosine_with_min_lr" else None,
    )
    accelerator.register_for_checkpointing(scheduler)
    dev_set = DevWindows(
        inputs.corpus.windows(inputs.dev_rows, stride=inputs.corpus.meta.segment_len),
        ft.eval_max_windows,
        inputs.tokenizer,
    )

    fp = checkpoint.fingerprint(ft, inputs.data_hash, accelerator.num_processes, accelerator.mixed_precision)
    progress = Progress()
    resumed = checkpoint.latest(ckpt_dir, fp, log, needs_best=accelerator.is_main_process)
    if resumed:
        path, progress = resumed
        try:
            accelerator.load_state(str(path))
        except Exception as e:  # damaged after it was complete (a crash before it reached the disk, a full disk)
            raise UserError(
                f"finetune.checkpoint_dir: cannot resume from {path} ({first_line(e)}); "
                "delete it to resume from an older checkpoint or start over"
            ) from None
        log(f"resuming from {path} at step {progress.step} of {total_steps}")
    log(
        f"{total_steps} optimizer steps of {ft.batch_size} x {ft.grad_accum} x {accelerator.num_processes} "
        f"windows ({len(loader.dataset)} train windows, {len(dev_set)} dev windows), "
        f"{accelerator.device}, mixed precision {accelerator.mixed_precision}"
    )
    batches = _micro_batches(accelerator, loader, progress.step * ft.grad_accum)
    return Run(model, optimizer, scheduler, batches, dev_set, total_steps, fp, progress, ckpt_dir)


def _optimizer_step(ft, accelerator: Accelerator, run: Run) -> tuple[torch.Tensor, int]:
    """grad_accum micro-batches, clipped gradients, one optimizer and scheduler step; returns the
    step's loss (on the device: no wait for it) and its tokens."""
    loss_sum, tokens = torch.zeros((), device=accelerator.device), 0
    for micro in range(ft.grad_accum):
        batch = next(run.batches)
        tokens += batch.pop("n_tokens")
        # Gradients are all-reduced once per optimizer step, after its last micro-batch.
        with accelerator.no_sync(run.model) if micro < ft.grad_accum - 1 else nullcontext():
            loss = run.model(**batch).loss / ft.grad_accum
            accelerator.backward(loss)
        loss_sum += loss.detach()
    if ft.max_grad_norm:
        accelerator.clip_grad_norm_(run.model.parameters(), ft.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups: weight decay on the matrices of the layers, none on norms, biases and
    embeddings (decaying those only pulls them to zero, as nanoGPT and run_clm_no_trainer note)."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            embedding = id(param) in embeddings or "trainable_tokens" in name  # LoRA's rows of the added tokens
            (decay if param.ndim >= 2 and not embedding else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _micro_batches(accelerator: Accelerator, loader, start: int):
    """This process' micro-batches from number `start` on, epoch after epoch; a resumed run starts
    at its step * grad_accum, so it sees the batches an uninterrupted run would."""
    epoch, skip = divmod(start, len(loader))
    while True:
        loader.set_epoch(epoch)  # reshuffles the windows
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0


def evaluate(accelerator: Accelerator, model, dev_set: DevWindows, batch_size: int, pad_id: int) -> DevScore:
    """The dev scorer's score (autocoder.scoring) of the model; each process scores every N-th window."""
    # Uncompiled (dev windows vary in length), but with the mixed-precision autocast.
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)
    raw.eval()
    share = Subset(dev_set, range(accelerator.process_index, len(dev_set), accelerator.num_processes))
    totals = summed_nll(raw, share, batch_size, pad_id, accelerator.device)
    raw.train()
    nll, tokens = accelerator.reduce(totals, "sum").tolist()
    return DevScore(nll, int(tokens), dev_set.n_bytes)


def _dev_columns(dev: DevScore) -> dict:
    return {"dev_loss": dev.loss, "dev_perplexity": dev.perplexity, "dev_bits_per_byte": dev.bits_per_byte}


def _mlflow_run(params: Params, inputs: Inputs, progress: Progress, accelerator: Accelerator):
    """Start this stage's MLflow run, or reopen the one a resumed checkpoint names."""
    experiment = mlflow.get_experiment_by_name(params.mlflow.experiment)
    tracking.end_dead_runs(experiment.experiment_id, STAGE)
    if progress.mlflow_run_id:
        try:
            run = mlflow.start_run(run_id=progress.mlflow_run_id)
            mlflow.set_tags(tracking.process_tags(STAGE))
            return run
        except mlflow.exceptions.MlflowException as e:
            accelerator.print(f"{STAGE}: cannot reopen MLflow run {progress.mlflow_run_id} ({e}); starting a new one")
    run = mlflow.start_run()
    progress.mlflow_run_id = run.info.run_id
    mlflow.log_params(tracking.flatten(params.finetune.model_dump(), "."))
    mlflow.set_tags(
        {
            **tracking.process_tags(STAGE),
            **tracking.lineage_tags([params.segment.out_dir, params.split.out_dir]),
            "tokenizer_fingerprint": inputs.tokenizer_fingerprint,
            "dev_split": inputs.dev_split,
            "num_processes": str(accelerator.num_processes),
            "mixed_precision": str(accelerator.mixed_precision),
        }
    )
    return run


def _write_outputs(params: Params, inputs: Inputs, progress: Progress, ckpt_dir: Path, uri: str, log) -> None:
    ft = params.finetune
    with atomic_dir(ft.out_dir) as out:
        shutil.copytree(checkpoint.best_dir(ckpt_dir, progress.best_step), out / "best")
        inputs.tokenizer.save_pretrained(out / "best")
        if ft.onnx:
            _export_onnx(out / "best", log)
        write_json(
            out / tracking.RUN_INFO_FILE,
            {
                "run_id": progress.mlflow_run_id,
                "tracking_uri": uri,
                "experiment_id": mlflow.active_run().info.experiment_id,
                "tokenizer_fingerprint": inputs.tokenizer_fingerprint,
                "dev_split": inputs.dev_split,
            },
        )
    metrics = {
        "best_dev_perplexity": math.exp(progress.best_dev_loss),
        "best_dev_loss": progress.best_dev_loss,
        "best_step": progress.best_step,
        "steps": progress.step,
        "tokens_seen": progress.tokens_seen,
        "train_seconds": round(progress.train_seconds, 3),
        "tokens_per_s": progress.tokens_seen / max(progress.train_seconds, 1e-9),
    }
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_artifacts(str(Path(ft.out_dir) / "best"), "best")
    mlflow.log_artifacts(str(inputs.corpus.dir / TOKENIZER_DIR), "tokenizer")
    write_json(FINETUNE_METRICS, metrics)
    _write_csv(FINETUNE_PLOT, progress.history)
    log(
        f"best dev perplexity {metrics['best_dev_perplexity']:.4g} at step {progress.best_step}; "
        f"model in {Path(ft.out_dir) / 'best'}"
    )


def _export_onnx(folder: Path, log) -> None:
    """best/model.onnx for fast completion; a model the exporter cannot take still completes on PyTorch."""
    try:
        export_onnx(folder)
    except UserError as e:
        log(f"no {folder.name}/{ONNX_FILE}: {e}; completion from it runs on PyTorch")


def _write_csv(path: Path, rows: list[dict]) -> None:
    """plots/finetune.csv, atomically; a cell is empty where its value was not measured at that step."""
    text = io.StringIO()
    writer = csv.DictWriter(text, PLOT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (v if k in ("step", "tokens") else f"{v:.6g}") for k, v in row.items()} for row in rows)
    write_text(path, text.getvalue())
