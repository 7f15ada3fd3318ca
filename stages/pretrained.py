"""DVC stage 'pretrained' (dvc.yaml): the pretrained model from its pinned source into models/pretrained
(params.yaml's `pretrained`)."""

import _env  # noqa: F401  (first: the right Python, stages/_env.py)

from autocoder.errors import exit_on_user_error
from autocoder.params import load_params
from autocoder.pretrained import run

if __name__ == "__main__":
    with exit_on_user_error("autocoder pretrained"):
        run(load_params())
