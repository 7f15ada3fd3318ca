"""Atomic outputs: what a killed writer left beside an output is removed by the next writer, whatever
state the killed process is in; what a running writer is writing is left alone."""

import subprocess
import sys

from autocoder.atomic import atomic_dir
from helpers import zombie_process


def test_leftovers_of_dead_and_zombie_writers_go_those_of_running_ones_stay(tmp_path):
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie = zombie_process()
    try:
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
