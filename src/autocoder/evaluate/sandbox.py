"""Running untrusted code: the completions a model writes, and the tests that judge them.

What the sandbox is. Each program runs in its own bubblewrap sandbox (`bwrap`, Debian's `bubblewrap`):
- namespaces: new PID, network, IPC and UTS ones, so no network at all, not even the host's loopback;
- files: the system's programs and libraries read-only, and nothing else of the host (not the project,
  not $HOME, not the host's /tmp); the one place it may write is its working directory /tmp, a tmpfs
  of `disk_mb` in memory, which bounds all its files together (the root and /dev are read-only);
- a seccomp filter that refuses new user namespaces (unshare or clone with CLONE_NEWUSER), in which the
  program would be root and reach the kernel's code for namespace owners (mounts, netfilter, ...);
- limits: CPU time, file size, processes (threads included), and address space, `memory_mb / processes`
  each, so that all its processes together stay within `memory_mb` (by default 1 GB: 4 of 256 MB);
  a wall-clock timeout; at the end its whole process group and PID namespace killed.
Run as root, the program runs as a uid of its own (SANDBOX_UIDS + the caller's pid), which owns no file
and no other process: the host's file permissions apply to it as to anyone, and the process limit counts
its processes alone (root is exempt from it). Run as another user, it runs as that user (bwrap makes a
user namespace), and the process limit is on top of the user's processes at the start.
Memory is bounded per process, not by a cgroup: a cgroup's memory.max would bound the whole tree's
resident memory, but making one needs a delegated cgroup v2 (systemd-run --user, or root on a cgroup v2
host) that containers mostly lack (the one it was written in: cgroup v2 without the memory controller,
no systemd bus). The tmpfs is memory too: one run holds at most `memory_mb + disk_mb`.

What it is not. The bigcode harness says of its guard that it "is NOT a security sandbox"; this one is
a sandbox, tested as one (tests/test_sandbox.py: a fork bomb, an endless loop, a 10 GB allocation, many
processes allocating together, many files, writes outside its directory, a network connection, reading
the project's files, a nested user namespace), but not a virtual machine. It shares the host's kernel: a
kernel bug reachable by an unprivileged process is a way out (the filter allows every other system
call), and so are CPU side channels (Spectre and its kind) and hardware faults (Rowhammer). It does not
hide host-wide facts (/proc shows the kernel's version, the memory and CPUs), and it bounds the memory
the program allocates, not the kernel's own that it makes the host spend: empty files cost no tmpfs
space, and one run makes some 400,000 of them in 8 s (~400 MB of the kernel's reclaimable caches, until
the wall clock stops it). Code one would not run as an unprivileged user on the host does not belong here.

Written by hand around `bwrap` because no maintained Python library runs a program under these
limits and namespaces; bubblewrap itself does the isolation.
"""

from __future__ import annotations

import errno
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# As root, each run's program gets a uid of its own: it owns no file and no other process, so RLIMIT_NPROC
# counts exactly this run's processes (root itself is exempt). Above systemd's container range, below 2**31.
SANDBOX_UIDS = 0x70000000  # + the caller's pid
BWRAP_PROCESSES = 2  # bwrap itself, outside and as PID 1 inside: run unprivileged, it counts against RLIMIT_NPROC
OUTPUT_TAIL = 2000  # characters of a program's output kept for the report
KILL_WAIT_S = 10  # at most this long for a killed program's processes to be gone
# seccomp: (AUDIT_ARCH, unshare, clone) system call numbers, of the architectures the filter is written for
SYSCALLS = {"x86_64": (0xC000003E, 272, 56), "aarch64": (0xC00000B7, 97, 220)}
CLONE3, CLONE_NEWUSER = 435, 0x10000000


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # killed after this long, whatever it does
    cpu_s: int = 10  # RLIMIT_CPU, of each process
    memory_mb: int = 1024  # all its processes together: each gets RLIMIT_AS = memory_mb / processes
    processes: int = 4  # RLIMIT_NPROC: its processes and threads at once (a HumanEval program needs one)
    file_mb: int = 16  # RLIMIT_FSIZE: any one file written, the captured output (on the host) included
    disk_mb: int = 64  # all it writes together: its working directory /tmp is a tmpfs of this size, in memory

    @property
    def process_mb(self) -> int:
        """Each process's address space: `processes` of them together stay within `memory_mb`."""
        return self.memory_mb // self.processes


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
    if platform.machine() not in SYSCALLS:
        return f"the sandbox's seccomp filter is written for {' and '.join(SYSCALLS)}, not {platform.machine()}"
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
    """`argv` in the sandbox, its working directory (/tmp) holding `files` (name -> text); `read_only`:
    more host paths it may read (beside /usr and the root's links into it)."""
    uid = SANDBOX_UIDS + os.getpid() if os.geteuid() == 0 else None
    # the files, and the seccomp filter, reach bwrap as open files: the run has no folder on the host's disk
    # (its output alone is there, within file_mb)
    fds = {name: _memfd(text.encode()) for name, text in files.items()}
    seccomp = _memfd(_seccomp_filter())
    try:
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(
                _bwrap_argv(fds, seccomp, read_only, limits, uid) + list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group, killed whole at the end
                pass_fds=(*fds.values(), seccomp),
                preexec_fn=_limit(limits, uid),
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
    finally:
        for fd in (*fds.values(), seccomp):
            os.close(fd)
    return Outcome(status, returncode, text)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("sandbox")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _bwrap_argv(
    fds: dict[str, int], seccomp: int, read_only: tuple[str, ...], limits: Limits, uid: int | None
) -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--new-session", "--seccomp", str(seccomp)]
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if uid is None:
        argv.append("--unshare-user")  # how bubblewrap gets its namespaces without privileges
    argv += ["--hostname", "autocoder-sandbox", "--ro-bind", "/usr", "/usr"]
    # bubblewrap makes the folders leading to a mount point 0700, root's, which the program cannot pass:
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
    argv += ["--proc", "/proc", "--dev", "/dev"]
    # the one place it may write: a tmpfs of a fixed size, so that all its files together are bounded
    argv += ["--perms", "1777", "--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp"]
    for name, fd in fds.items():
        for parent in reversed(Path(name).parents[:-1]):
            argv += ["--dir", f"/tmp/{parent}"]
        argv += ["--file", str(fd), f"/tmp/{name}"]
    # the root and /dev are tmpfs of bwrap's, unbounded, and the program's own when bwrap runs
    # unprivileged: read-only, so that they are not a second, unbounded disk
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--chdir", "/tmp", "--setenv", "HOME", "/tmp"]
    if uid is not None:
        argv += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return argv


def _seccomp_filter() -> bytes:
    """A classic BPF program for bwrap's --seccomp: creating a user namespace (unshare or clone with
    CLONE_NEWUSER) fails with EPERM, everything else is allowed. clone3, whose flags sit in memory that a
    filter cannot read, fails with ENOSYS, and the C library falls back to clone; so do x32 calls (their
    numbers have bit 30 set), which would get around the numbers below. Calls of another architecture's
    ABI (32-bit x86 on x86_64), with numbers of their own, kill the process. Written by hand: libseccomp's
    Python binding comes with the system library (Debian's python3-seccomp), not from PyPI, and the whole
    filter is these 13 instructions."""
    arch, unshare, clone = SYSCALLS[platform.machine()]
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS, 0x80000000
    program = [  # (code, jump if true, jump if false: instructions skipped, k)
        (load, 0, 0, 4),  # 0: seccomp_data.arch
        (jeq, 1, 0, arch),  # 1
        (ret, 0, 0, kill),  # 2
        (load, 0, 0, 0),  # 3: seccomp_data.nr
        (jge, 7, 0, 0x40000000),  # 4: x32 -> 12
        (jeq, 6, 0, CLONE3),  # 5: -> 12
        (jeq, 1, 0, unshare),  # 6: -> 8
        (jeq, 0, 2, clone),  # 7: -> 8, else 10
        (load, 0, 0, 16),  # 8: the low half of seccomp_data.args[0], the flags of both
        (jset, 1, 0, CLONE_NEWUSER),  # 9: -> 11, else 10
        (ret, 0, 0, allow),  # 10
        (ret, 0, 0, eperm),  # 11
        (ret, 0, 0, enosys),  # 12
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def _limit(limits: Limits, uid: int | None):
    """The child's resource limits, set between fork and exec (inherited by bwrap and the program)."""
    # RLIMIT_NPROC counts every process and thread of the uid. A run's own uid has only the program's.
    # The caller's has bwrap's too, and the caller's other processes: the budget is on top of those
    # (their threads, which come and go, are not added: the program gets fewer, never more)
    processes = limits.processes
    if uid is None:
        others = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"].real == os.getuid())
        processes += BWRAP_PROCESSES + others

    def set_limits() -> None:
        for which, value in (
            (resource.RLIMIT_CPU, limits.cpu_s),
            (resource.RLIMIT_AS, limits.process_mb << 20),
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
