"""Loading a model to complete with: a local folder (checked first, so that a bad one is one line
naming the problem), a Hub id, a `models:/` URI of the registry, or the registry's champion."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from autocoder.complete.completer import Completer
from autocoder.errors import UserError, first_line
from autocoder.params import MlflowParams, Params, load_params


def load_completer(model: str | None, params: Params | None) -> Completer:
    """`model`: a folder, a Hub id or a `models:/` URI; None = the registry's champion."""
    if model is None and params is None:
        raise UserError("no --model given and no params file to find the registry's champion")
    if model is None or model.startswith("models:/"):
        from autocoder.champion import champion_uri, local_model
        from autocoder.tracking import tracking_uri

        uri = model or champion_uri(params.evaluate.registered_model_name)
        found = local_model(tracking_uri(params.mlflow if params else MlflowParams()), uri)
        return logged_completer(*found) if found else _from_registry(uri, params)
    return Completer.from_pretrained(model)


def logged_completer(hf_dir: str | Path, config: dict) -> Completer:
    """The Completer of a registered model: its Hugging Face folder and the config it was logged with
    (autocoder.serving: the confidence gate's threshold)."""
    completer = Completer.from_pretrained(hf_dir)
    completer.confidence_threshold = config.get("confidence_threshold")
    return completer


def _from_registry(uri: str, params: Params | None) -> Completer:
    import mlflow
    from mlflow.exceptions import MlflowException

    from autocoder.tracking import configure

    store = configure(params.mlflow if params else MlflowParams())
    try:
        # suppress_warnings: MLflow's check of the logged pip requirements against the installed
        # packages scans every package's metadata (2.5 s of a cold start); the model runs in the
        # project's own environment, which `make` installs from requirements.lock
        model = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
    except MlflowException as e:
        raise UserError(
            f"model {uri!r}: not in the registry at {store} ({first_line(e)}); "
            "run the pipeline (`dvc repro`) or pass --model DIR"
        ) from None
    return model.unwrap_python_model().completer


def quiet_model_loading() -> None:
    """No "Loading weights" bar around a completion. transformers reads the variable when first
    imported; importing it here to switch the bar off would cost a second of the ONNX path's start,
    so only a transformers imported already (by the caller) is told directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def params_for(args) -> Params | None:
    """The params file; optional when --model names the model (e.g. outside the project)."""
    if args.model is not None and not Path(args.params).exists():
        return None
    return load_params(args.params)
