"""The registry's champion found without importing MLflow, for a command's cold start.

`autocoder complete` without --model completes with `models:/<name>@champion`. Through MLflow that
costs about 2.8 s on 2 cores before the model even loads (importing mlflow 1.6 s, opening its
SQLAlchemy store 1.2 s), where a model folder completes in under a second. For the project's own
kind of store, a local SQLite file, the champion's folder is one row of two tables of MLflow's
schema (`registered_model_aliases`, `model_versions`: there since MLflow 2.3), read here read-only
with the standard library's sqlite3; the folder's `MLmodel` file (YAML) names the Hugging Face
folder and the config the model was logged with (autocoder.serving). Anything else (a tracking
server, MLFLOW_REGISTRY_URI set, another schema, a version not READY, an artifact location that is
not a local folder) gives None, and the caller goes through MLflow's own client.
"""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

CHAMPION = "champion"  # the alias of the best registered version (autocoder.registry)
_ALIAS_URI = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")
_ALIAS_QUERY = """
    SELECT v.storage_location FROM registered_model_aliases AS a
    JOIN model_versions AS v ON v.name = a.name AND v.version = a.version
    WHERE a.name = ? AND a.alias = ? AND v.status = 'READY'
"""


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def local_model(tracking_uri: str, model_uri: str) -> tuple[Path, dict] | None:
    """(Hugging Face folder, logged model config) of `model_uri` (models:/NAME@ALIAS) in the SQLite
    store `tracking_uri`, read without MLflow; None where that cannot be done (the module docstring)."""
    match = _ALIAS_URI.fullmatch(model_uri)
    if match is None or os.environ.get("MLFLOW_REGISTRY_URI") or not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    if not database.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            row = connection.execute(_ALIAS_QUERY, (match["name"], match["alias"])).fetchone()
    except sqlite3.Error:  # not MLflow's schema, or locked past the default timeout
        return None
    location = urlparse(row[0]) if row and row[0] else None
    if location is None or location.scheme not in ("", "file"):
        return None
    model_dir = Path(unquote(location.path))
    try:
        flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
        hf_dir = model_dir / flavor["artifacts"]["hf_model"]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    config = flavor.get("config") or {}  # pyfunc's model_config, a dict as autocoder.serving logs it
    return (hf_dir, config) if hf_dir.is_dir() and isinstance(config, dict) else None
