"""Atomic outputs: what a killed writer left beside an output is removed by the next writer, whatever
state the killed process is in; what a running writer is writing is left alone."""

import subprocess
import sys
import time

import psutil

from autocoder.atomic import atomic_dir


def test_leftovers_of_dead_and_zombie_writers_go_those_of_running_ones_stay(tmp_path):
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # A child that exited and that nobody reaps: what a SIGKILLed stage whose parent (dvc) was killed
    # with it stays in a container whose init never reaps.
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.05)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        leftovers = {pid: tmp_path / f".raw.tmp-{pid}" for pid in (running.pid, zombie.pid, int(dead.stdout))}
        for folder in leftovers.values():
            (folder / "half").mkdir(parents=True)
        with atomic_dir(tmp_path / "raw") as out:
            (out / "done").write_text("yes")
        assert (tmp_path / "raw/done").read_text() == "yes"
        assert sorted(p.name for p in tmp_path.glob(".raw.tmp-*")) == [leftovers[running.pid].name]
    finally:
        running.kill()
        running.wait()
        zombie.wait()
