"""DVC stage 'evaluate' (dvc.yaml): measure models/finetune and register it in MLflow (params.yaml's `evaluate`)."""

import _env  # noqa: F401  (first: the right Python, stages/_env.py)

from autocoder.errors import exit_on_user_error
from autocoder.evaluate import run
from autocoder.params import load_params

if __name__ == "__main__":
    with exit_on_user_error("autocoder evaluate"):
        run(load_params())
