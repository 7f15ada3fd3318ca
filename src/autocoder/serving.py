"""The registry's model: an MLflow pyfunc that completes code.

`mlflow.pyfunc.load_model("models:/autocoder@champion").predict(rows)` takes a DataFrame (or a list of
dicts) with columns `lang`, `context` and optionally `max_new_tokens`, `temperature`, `top_p`, and
returns a DataFrame with `completion` and `confidence` (mean token log-probability), one row per
input row; what a row leaves out is what the evaluate stage measured the model with (greedy, its
max_new_tokens and loop guard, recorded in the model's config).
`mlflow models serve -m models:/autocoder@champion --env-manager local -h 127.0.0.1` serves it over
HTTP (POST /invocations {"dataframe_records": [{"lang": "python", "context": "def f"}]});
run it with the project's venv activated: mlflow starts `uvicorn` from PATH.

The Hugging Face folder (safetensors) travels with the model as an artifact. The model is logged
"from code" (serving_model.py, which MLflow copies and runs at load time), not as a pickle; that code
imports the installed `autocoder` package, which is not on PyPI and so not among the pip
requirements: load and serve it from the project's environment (`--env-manager local`).
"""

from __future__ import annotations

import math
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from autocoder.complete.load import logged_completer
from autocoder.params import generation_settings

HF_ARTIFACT = "hf_model"  # autocoder.champion reads it by this name too
SAMPLING_DEFAULTS = {"temperature": 0.0, "top_p": 1.0}  # greedy
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "lang"),
            ColSpec("string", "context"),
            ColSpec("long", "max_new_tokens", required=False),
            ColSpec("double", "temperature", required=False),
            ColSpec("double", "top_p", required=False),
        ]
    ),
    outputs=Schema([ColSpec("string", "completion"), ColSpec("double", "confidence")]),
)


class CompletionModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config or {}
        self.completer = logged_completer(context.artifacts[HF_ARTIFACT], config)
        # the settings the evaluate stage measured the model with (older models: the schema's)
        self.defaults = {**generation_settings(), **config.get("generation", {}), **SAMPLING_DEFAULTS}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        completions = [
            self.completer.complete(row["lang"], row["context"], **_options(row, self.defaults))[0] for row in rows
        ]
        return pd.DataFrame(
            {"completion": [c.text for c in completions], "confidence": [c.confidence for c in completions]}
        )


def _options(row: dict, defaults: dict) -> dict:
    """Generation options of one row; a missing or empty (NaN) cell takes the default."""
    options = dict(defaults)
    for key in SIGNATURE.inputs.input_names():
        value = row.get(key)
        if key in defaults and value is not None and not (isinstance(value, float) and math.isnan(value)):
            options[key] = value
    options["max_new_tokens"] = int(options["max_new_tokens"])
    return options


def log_model(hf_dir: str | Path, languages: list[str], generation: dict, confidence_threshold: float | None = None):
    """Log the pyfunc model (with the HF folder, which records its prompt format) to the active run;
    returns mlflow's ModelInfo. `languages`: the model's, the first one completes the logged example;
    `generation`: the settings it was measured with (params.generation_settings), its defaults;
    `confidence_threshold`: the confidence gate fitted on dev (autocoder.gate), None for none."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("serving_model.py")),
        artifacts={HF_ARTIFACT: str(hf_dir)},
        model_config={
            "generation": generation,
            "confidence_threshold": confidence_threshold,
        },
        signature=SIGNATURE,
        # Checked at logging time: MLflow loads the model and completes this example.
        input_example=pd.DataFrame({"lang": languages[:1], "context": ["def f"], "max_new_tokens": [2]}),
        # Given explicitly: inferring them would load the model once more in a subprocess.
        pip_requirements=[
            f"{pkg}=={version(pkg)}"
            for pkg in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "onnxruntime")
        ],
    )
