"""Atomic outputs: a stage writes into a temporary sibling and renames it into place only when it
finished, so a killed or failed stage never leaves a half-written output that a later run trusts.
A failed write removes its temporary sibling; a full disk is a one-line UserError naming the output."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from autocoder.errors import UserError

DISK_FULL_FREE_BYTES = 1 << 20  # a write failed with less free space than this: the disk is full


def _disk_full(e: Exception, folder: Path) -> bool:
    """Whether writing into `folder` failed for lack of space. tokenizers and safetensors (Rust) and
    torch (C++) drop the errno, and torch's message does not say why: then the free space decides."""
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e) or "os error 28" in str(e):
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def process_running(pid: int) -> bool:
    """Whether process `pid` still runs (can still write, or end its own MLflow run). A killed process
    whose parent died too stays a zombie until init reaps it, and a container's init may never do
    so: a zombie counts as dead."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tmp_sibling(target: Path) -> Path:
    """This process' temporary name for `target`. Those of dead processes (killed while writing: never
    trusted, but garbage that could fill the disk) are removed."""
    prefix = f".{target.name}.tmp-"
    for stale in target.parent.glob(prefix + "*"):
        # ".x.tmp-<pid>", or a file next to it named after it (SQLite's ".x.tmp-<pid>-journal")
        pid = re.match(r"\d+", stale.name[len(prefix) :])
        if pid and (int(pid[0]) == os.getpid() or not process_running(int(pid[0]))):
            _remove(stale)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


@contextmanager
def removed_on_error(tmp: Path, target: Path) -> Iterator[None]:
    """Remove `tmp` (file or folder: a half-written `target`) if the block fails; a full disk becomes
    a one-line UserError naming `target`."""
    try:
        yield
    except BaseException as e:
        full = isinstance(e, Exception) and not isinstance(e, UserError) and _disk_full(e, tmp.parent)
        _remove(tmp)
        if full:
            raise UserError(f"{target}: no space left on device; free some space or write it elsewhere") from None
        raise


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(target)
    tmp.mkdir()
    with removed_on_error(tmp, target):
        yield tmp
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    with removed_on_error(tmp, path), open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, keys sorted (stable files for DVC and git)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
