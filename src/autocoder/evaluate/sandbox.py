"""Running untrusted code: the completions a model writes, and the tests that judge them.

Each program runs in its own bubblewrap sandbox (`bwrap`, Debian's `bubblewrap`): new PID, network,
IPC and UTS namespaces (no network at all), a filesystem of the system's programs and libraries
read-only, a fresh temporary working directory and a small /tmp, nothing else of the host (not the
project, not $HOME); resource limits on CPU time, address space, processes and file size; a
wall-clock timeout; and at the end its whole process group and PID namespace killed. Run as root,
the program drops to the unprivileged `nobody` before it starts, so that the process limit holds
(the kernel exempts root from it) and the host's file permissions apply too. The bigcode
harness's guard says of itself that it "is NOT a security sandbox"; this one is tested as one
(tests/test_sandbox.py: a fork bomb, an endless loop, a 10 GB allocation, writes outside the
working directory, a network connection, reading the project's files).

Written by hand around `bwrap` because no maintained Python library runs a program under these
limits and namespaces; bubblewrap itself does the isolation.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

NOBODY = 65534
OUTPUT_TAIL = 2000  # characters of a program's output kept for the report
KILL_WAIT_S = 10  # at most this long for a killed program's processes to be gone


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # killed after this long, whatever it does
    cpu_s: int = 10  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS: the address space, so a 10 GB allocation fails at once
    processes: int = 32  # RLIMIT_NPROC: processes beyond what the running user already has
    file_mb: int = 16  # RLIMIT_FSIZE: any one file written, the captured output included
    tmp_mb: int = 64  # the size of the sandbox's /tmp (a tmpfs)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" (exit status 0), "failed" (any other), "timeout" (killed at wall_s)
    returncode: int | None
    output: str  # the tail of stdout and stderr together

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def unavailable() -> str | None:
    """Why programs cannot be run in the sandbox on this machine, in one line; None when they can."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces (this is {sys.platform})"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (`bwrap` not on PATH; Debian: apt-get install bubblewrap)"
    probe = run(["/bin/true"], {}, Limits(wall_s=30))
    if not probe.passed:
        return f"bubblewrap cannot create a sandbox here: {probe.output.strip().splitlines()[-1:] or probe.status}"
    return None


def run_python(program: str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """`program` as a Python script, by this interpreter's own base installation, isolated mode."""
    python = os.path.realpath(sys.executable)  # a venv's python is a link to the base one
    return run([python, "-I", "program.py"], {"program.py": program}, limits, (sys.base_prefix,))


def run(
    argv: list[str], files: dict[str, str], limits: Limits = DEFAULT_LIMITS, read_only: tuple[str, ...] = ()
) -> Outcome:
    """`argv` in the sandbox, its working directory holding `files` (name -> text); `read_only`:
    more host paths it may read (beside /usr and the root's links into it)."""
    with tempfile.TemporaryDirectory(prefix="autocoder-sandbox-") as work_dir:
        work = Path(work_dir)
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        as_root = os.geteuid() == 0
        if as_root:  # the program runs as nobody: its working directory is the one place it may write
            for path in [work, *work.rglob("*")]:
                os.chown(path, NOBODY, NOBODY)
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(
                _bwrap_argv(work, read_only, limits, as_root) + list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group, killed whole at the end
                preexec_fn=_limit(limits, NOBODY if as_root else os.getuid()),
            )
            try:
                returncode = proc.wait(timeout=limits.wall_s)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                returncode, status = None, "timeout"
            finally:
                _kill_group(proc)
            output.seek(0, os.SEEK_END)
            output.seek(max(0, output.tell() - 4 * OUTPUT_TAIL))
            text = output.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
    return Outcome(status, returncode, text)


def _bwrap_argv(work: Path, read_only: list[str], limits: Limits, as_root: bool) -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--new-session"]
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        argv.append("--unshare-user")  # how bubblewrap gets its namespaces without privileges
    argv += ["--ro-bind", "/usr", "/usr"]
    # bubblewrap makes the folders leading to a mount point 0700, root's, which nobody cannot pass:
    # they are made first, 0755 (they hold nothing but the mount points)
    mounted = ["/etc/alternatives", *(path for path in read_only if not path.startswith("/usr/"))]
    for parent in sorted({str(p) for path in mounted for p in Path(path).parents[:-1]}, key=len):
        argv += ["--perms", "0755", "--dir", parent]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/alternatives"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for path in read_only:
        if not path.startswith("/usr/"):
            argv += ["--ro-bind", path, path]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(limits.tmp_mb << 20),
        "--tmpfs",
        "/tmp",
    ]
    argv += ["--bind", str(work), "/sandbox", "--chdir", "/sandbox", "--setenv", "HOME", "/sandbox"]
    if as_root:
        argv += ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    return argv


def _limit(limits: Limits, uid: int):
    """The child's resource limits, set between fork and exec (inherited by bwrap and the program)."""
    # RLIMIT_NPROC counts every process of the user, so the budget is on top of what it runs already
    processes = limits.processes + sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid)

    def set_limits() -> None:
        for which, value in (
            (resource.RLIMIT_CPU, limits.cpu_s),
            (resource.RLIMIT_AS, limits.memory_mb << 20),
            (resource.RLIMIT_NPROC, processes),
            (resource.RLIMIT_FSIZE, limits.file_mb << 20),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))

    return set_limits


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL bwrap's process group, and wait until every process of the program's PID namespace is
    gone: the kernel kills them when the namespace's first process dies (--die-with-parent), but
    not at once, and a fork bomb has many."""
    try:
        namespaces = {_pid_namespace(child.pid) for child in psutil.Process(proc.pid).children()} - {None}
    except psutil.NoSuchProcess:
        namespaces = set()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + KILL_WAIT_S
    while namespaces and time.monotonic() < deadline:
        left = [pid for pid in psutil.pids() if _pid_namespace(pid) in namespaces]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:  # gone already, or not ours to look at
        return None
