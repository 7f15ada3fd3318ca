"""DVC stage 'segment' (dvc.yaml): tokenize data/raw into data/segments (params.yaml's `segment`)."""

import _env  # noqa: F401  (first: the right Python, stages/_env.py)

from autocoder.errors import exit_on_user_error
from autocoder.params import load_params
from autocoder.segment import run

if __name__ == "__main__":
    with exit_on_user_error("autocoder segment"):
        run(load_params())
