"""DVC stage 'finetune' (dvc.yaml): train on data/split's train files (params.yaml's `finetune`).

dvc.yaml runs `python stages/finetune.py --num_processes N`: this script starts `accelerate launch
<flags> stages/finetune.py` (autocoder.train.launch: the flags this machine needs), and accelerate
runs it again in each of the N processes, which train."""

import sys

import _env  # noqa: F401  (first: the right Python, stages/_env.py)

from autocoder.errors import exit_on_user_error
from autocoder.params import load_params
from autocoder.train import run
from autocoder.train.launch import launched_by_accelerate
from autocoder.train.launch import main as accelerate_launch

if __name__ == "__main__":
    if launched_by_accelerate():
        with exit_on_user_error("autocoder finetune"):
            run(load_params())
    else:  # the arguments are accelerate launch's; the script it launches is this one
        accelerate_launch([*sys.argv[1:], sys.argv[0]])
