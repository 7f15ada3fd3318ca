"""The sandbox that runs generated code, tested as one: hostile programs (a fork bomb, an endless
loop, a 10 GB allocation, processes allocating together, many files, writes outside its directory, a
network connection, reading the project's files, a flood of output, a nested user namespace) are each
contained, reported as failures, and leave nothing running; the next program runs normally. Real
bubblewrap, real processes."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from autocoder.evaluate.humaneval import passes
from autocoder.evaluate.sandbox import OUTPUT_TAIL, Limits, run_python, unavailable
from autocoder.problems import load_problems

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no sandbox here: {WHY_NOT}"),
    pytest.mark.slow,  # each program starts a bubblewrap sandbox, several wait for a timeout
]

FAST = Limits(wall_s=3, cpu_s=3)
DISK_MB = Limits().disk_mb


def sandboxed_processes() -> list[psutil.Process]:
    """Processes still running a sandboxed program (bwrap, or anything started from program.py)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "autocoder-sandbox" in cmdline or "program.py" in cmdline:
            found.append(proc)
    return found


def test_a_well_behaved_program_runs_and_its_output_is_kept():
    outcome = run_python("import sys, math\nprint(math.factorial(5))\nsys.exit(0)")
    assert outcome.passed and outcome.returncode == 0 and outcome.output.strip() == "120"
    failed = run_python("assert 1 + 1 == 3, 'arithmetic'")
    assert failed.status == "failed" and "AssertionError: arithmetic" in failed.output


@pytest.mark.parametrize(
    "name, program, status",
    [
        ("endless loop", "while True:\n    pass\n", "timeout"),
        ("sleeping forever", "import time\ntime.sleep(3600)\n", "timeout"),
        (
            "fork bomb",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            "timeout",
        ),
        ("10 GB allocation", "x = bytearray(10 * 2**30)\nprint('allocated')\n", "failed"),
        ("a 100 MB file", "open('big', 'wb').write(b'x' * (100 << 20))\nprint('written')\n", "failed"),
    ],
)
def test_hostile_programs_are_contained(name, program, status):
    started = time.monotonic()
    outcome = run_python(program, FAST)
    assert outcome.status == status, (name, outcome)
    assert "allocated" not in outcome.output and "written" not in outcome.output
    assert time.monotonic() - started < FAST.wall_s + 5  # killed at the limit, not later
    assert not sandboxed_processes(), f"{name}: left running"
    assert run_python("print('next')").output.strip() == "next"  # and the machine still works


def test_nothing_of_the_host_is_readable_or_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCODER_SECRET", "s3cret")
    project_file, outside = Path(__file__).resolve(), tmp_path / "written-from-the-sandbox"
    for program in [
        f"print(open({str(project_file)!r}).read())",  # the project's files
        f"import os\nprint(os.listdir({str(tmp_path)!r}))",  # the host's /tmp
        "import os\nprint(os.listdir('/home'))",
        f"open({str(outside)!r}, 'w').write('x')",
        "open('/usr/autocoder-was-here', 'w').write('x')",
        "open('/autocoder-was-here', 'w').write('x')",  # the sandbox's own root and /dev: not a second disk
        "open('/dev/shm/autocoder-was-here', 'w').write('x')",
    ]:
        outcome = run_python(program, FAST)
        assert outcome.status == "failed" and "Error" in outcome.output, (program, outcome)
        assert "def test_nothing_of_the_host" not in outcome.output
    assert not outside.exists() and not Path("/usr/autocoder-was-here").exists()
    assert run_python("import os\nassert 'AUTOCODER_SECRET' not in os.environ, os.environ", FAST).passed
    # its own directory and /tmp are writable, and thrown away afterwards
    assert run_python("open('here', 'w').write('x')\nopen('/tmp/there', 'w').write('x')", FAST).passed
    assert run_python("import os\nassert not os.path.exists('here') and not os.path.exists('/tmp/there')").passed


def test_no_network_not_even_the_hosts_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        outcome = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", FAST)
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()
    assert outcome.status == "failed" and "ConnectionRefusedError" in outcome.output
    assert run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", FAST).status == "failed"


def test_a_flood_of_output_is_cut_to_its_tail():
    outcome = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", FAST)
    assert not outcome.passed and len(outcome.output) <= OUTPUT_TAIL


def test_hostile_completions_fail_and_the_evaluation_goes_on():
    problem = load_problems()[0]
    for completion in [
        "    while True:\n        pass\n",
        "    import os\n    os.system('rm -rf /')\n    return True\n",
    ]:
        assert not passes(problem, completion, FAST)
    assert passes(problem, problem.canonical_solution, FAST)


def test_all_the_files_a_program_writes_are_bounded_together_and_kept_off_the_hosts_disk():
    """Files each under the per-file limit, in its working directory and /tmp, add up to no more than
    DISK_MB; they are in the sandbox's own small filesystem, and the host's disk does not grow."""
    program = (
        "written = 0\n"
        "try:\n"
        "    for i in range(32):\n"
        "        open(f'{\"/tmp/\" if i >= 24 else \"\"}f{i}', 'wb').write(b'x' * (8 << 20))\n"
        "        written += 8\n"
        "finally:\n"
        "    print(f'written: {written} MB')\n"
    )
    host_tmp = tempfile.gettempdir()
    start, peak, done = shutil.disk_usage(host_tmp).used, [0], threading.Event()

    def watch():  # the host's disk, every 10 ms while it runs (its files would be gone afterwards)
        while not done.wait(0.01):
            peak[0] = max(peak[0], shutil.disk_usage(host_tmp).used - start)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = run_python(program, Limits(wall_s=10, cpu_s=10))
    finally:
        done.set()
        watcher.join()
    written = int(outcome.output.split("written: ")[1].split()[0])
    assert outcome.status == "failed" and "No space left on device" in outcome.output, outcome
    assert written <= DISK_MB, outcome.output
    assert peak[0] < 100 << 20, f"the host's disk grew by {peak[0] >> 20} MB during the run"


def test_the_memory_limit_holds_for_all_its_processes_together():
    """Up to 6 children, each holding as much as it can up to half the total, all at once: together
    they stay within the program's memory limit (each is refused beyond its share)."""
    limits = Limits(wall_s=15, cpu_s=10, memory_mb=512, processes=8)
    program = f"""
import os, signal, time
children, reports = [], []
for _ in range(6):
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        held = []
        try:
            while len(held) * 8 < {limits.memory_mb} // 2:
                held.append(b'x' * (8 << 20))  # written, so resident: not only reserved
        except MemoryError:
            pass
        os.write(w, str(len(held) * 8).encode())
        time.sleep(60)  # holding it until the parent has heard from every child
        os._exit(0)
    children.append(pid)
    reports.append(r)
held = [int(os.read(r, 32)) for r in reports]  # each child's report comes once it has allocated
for pid in children:
    os.kill(pid, signal.SIGKILL)
print('children:', len(children), 'held:', held, 'together:', sum(held))
"""
    outcome = run_python(program, limits)
    assert outcome.passed, outcome
    held = [int(x) for x in outcome.output.split("held: [")[1].split("]")[0].split(",")]
    assert len(held) >= 4 and all(mb > 0 for mb in held), outcome.output
    assert sum(held) <= limits.memory_mb, outcome.output


def test_no_user_namespace_can_be_made_inside():
    """`unshare -Urm` (root in a new user namespace: the way to the kernel's privileged code) and the
    unshare(CLONE_NEWUSER) system call itself both fail."""
    outcome = run_python(
        "import ctypes, os, subprocess\n"
        "r = subprocess.run(['unshare', '-Urm', 'id', '-u'], capture_output=True, text=True)\n"
        "print('unshare -Urm:', r.returncode, r.stdout.strip(), r.stderr.strip())\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER\n"
        "    print('unshare(CLONE_NEWUSER) succeeded')\n"
        "else:\n"
        "    print('unshare(CLONE_NEWUSER) failed:', os.strerror(ctypes.get_errno()))\n",
        FAST,
    )
    assert outcome.passed, outcome
    assert "unshare -Urm: 0" not in outcome.output and "unshare -Urm: 1 " in outcome.output, outcome.output
    assert "unshare(CLONE_NEWUSER) failed:" in outcome.output, outcome.output
