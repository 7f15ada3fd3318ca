"""DVC stage 'finetune' (dvc.yaml): train on data/split's train files (params.yaml's `finetune`).
dvc.yaml starts it through accelerate (autocoder.train.launch), in finetune.num_processes processes."""

from autocoder.errors import exit_on_user_error
from autocoder.params import load_params
from autocoder.train import run

if __name__ == "__main__":
    with exit_on_user_error("autocoder finetune"):
        run(load_params())
