"""The Python environment of a stage command, imported by every stage script before autocoder.

dvc.yaml's commands run `python`: the first one on PATH. With the venv activated (or through `make
repro`) that is .venv/bin/python; `.venv/bin/dvc repro` without activating it finds the system's,
which has no autocoder. Then this re-runs the stage with the project's .venv/bin/python, or, when
there is none, stops with one line that says what to do.
"""

import atexit
import importlib.util
import os
import sys
import time
from pathlib import Path

if importlib.util.find_spec("autocoder") is None:
    venv_python = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    # Compared as paths, not as the files they link to: a venv's python is a link to the very
    # interpreter it was made from, and only its own path makes it the venv's.
    if venv_python.is_file() and Path(sys.executable).absolute() != venv_python.absolute():
        os.execv(venv_python, [str(venv_python), *sys.argv])
    sys.exit(
        f"{sys.argv[0]}: {sys.executable} has no autocoder package; run `make venv` and then "
        "`source .venv/bin/activate` (or use `make repro`)"
    )

# Where `make repro`'s time goes: each stage ends with its wall time (DVC prints it under the stage);
# not the training processes that finetune's `accelerate launch` starts: they have one of
# autocoder.train.launch.LAUNCHED_ENV (not imported here: it imports torch, seconds for every stage).
_started = time.perf_counter()
if not {"LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND"} & set(os.environ):
    atexit.register(lambda: print(f"{Path(sys.argv[0]).stem}: {(time.perf_counter() - _started) / 60:.1f} min"))
