"""The finetune stage: train a causal language model on the segmented corpus with accelerate.

Reads `data/segments/` (tokens, tokenizer) and `data/split/`; writes the best model by dev
perplexity to `<out_dir>/best/` (safetensors + tokenizer) with `<out_dir>/mlflow_run.json`,
`metrics/finetune.json` and `plots/finetune.csv`; logs the run to MLflow. A killed run resumes from
the newest checkpoint in `<checkpoint_dir>/`.

dvc.yaml's stages/finetune.py launches it through accelerate (autocoder.train.launch); `autocoder
finetune` trains in this process, or re-launches itself through accelerate when
finetune.num_processes > 1 or finetune.accelerate_config names a config.
"""

from __future__ import annotations

from autocoder import tracking
from autocoder.params import Params

# The submodules are imported inside the functions: `python -m autocoder.train.launch` imports this
# package first, and must not find its own module already loaded.


def check_before_launch(params: Params, tracking_store: bool = True):
    """Every check that can fail on bad input (data, model, tracking store where this machine logs),
    before any process starts."""
    from autocoder.train.inputs import check_inputs

    inputs = check_inputs(params)
    if tracking_store:
        tracking.configure(params.mlflow)
    return inputs


def run(params: Params) -> None:
    from autocoder.train.inputs import check_inputs
    from autocoder.train.launch import launched_by_accelerate, relaunch
    from autocoder.train.loop import train

    ft = params.finetune
    if (ft.num_processes > 1 or ft.accelerate_config) and not launched_by_accelerate():
        relaunch(params)
    else:
        train(params, check_inputs(params))
