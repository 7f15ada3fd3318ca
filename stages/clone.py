"""DVC stage 'clone' (dvc.yaml): fetch every source of params.yaml's `clone` section into data/raw."""

import _env  # noqa: F401  (first: the right Python, stages/_env.py)

from autocoder.errors import exit_on_user_error
from autocoder.params import load_params
from autocoder.sources import run

if __name__ == "__main__":
    with exit_on_user_error("autocoder clone"):
        run(load_params())
