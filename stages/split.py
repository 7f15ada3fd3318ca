"""DVC stage 'split' (dvc.yaml): assign the segmented files to train and dev in data/split (params.yaml's `split`)."""

import _env  # noqa: F401  (first: the right Python, stages/_env.py)

from autocoder.errors import exit_on_user_error
from autocoder.params import load_params
from autocoder.split import run

if __name__ == "__main__":
    with exit_on_user_error("autocoder split"):
        run(load_params())
