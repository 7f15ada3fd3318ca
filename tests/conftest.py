"""Shared fixtures: the real GPT-2 tokenizer (offline), small real corpora, a tiny real model, MLflow
stores. What tests import lives in tests/helpers.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autocoder.tokenizer import load_tokenizer
from helpers import (
    CONTROL_TOKENS,
    TINY_DEV,
    finetuned_project,
    real_code_files,
    record_prompt_format,
    save_tiny_model,
    write_corpus,
)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return load_tokenizer("gpt2", CONTROL_TOKENS)


@pytest.fixture
def tiny_corpus(tmp_path, gpt2_tokenizer):
    """(segments_dir, split_dir) of ~16 real files, two Python and one Java file held out as dev."""
    files = real_code_files()
    return write_corpus(tmp_path / "data", gpt2_tokenizer, files, dev=TINY_DEV)


@pytest.fixture
def tiny_model_dir(tmp_path, gpt2_tokenizer):
    """A tiny randomly initialised GPT-2 with the control tokens, saved as safetensors + tokenizer."""
    return save_tiny_model(tmp_path / "tiny-model", gpt2_tokenizer)


@pytest.fixture(scope="session")
def fim_model_dir(tmp_path_factory, gpt2_tokenizer):
    """tiny_model_dir's model (GPT-2's tokenizer with the control and FIM tokens), its prompt format
    recorded as the finetune records it."""
    return record_prompt_format(save_tiny_model(tmp_path_factory.mktemp("fim") / "model", gpt2_tokenizer))


@pytest.fixture
def finetuned(tmp_path, tiny_corpus, tiny_model_dir, mlflow_db, monkeypatch):
    """The params of finetuned_project() in tmp_path (the cwd) with the tiny corpus and the tiny model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return finetuned_project(tmp_path, *tiny_corpus, tiny_model_dir)


# --- MLflow stores ---


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created once: creating one runs MLflow's migrations (~10 s)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlruns.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(tmp_path, _migrated_mlflow_db) -> Path:
    """tmp_path/mlruns.db: a real, empty MLflow SQLite store (a copy of a freshly migrated one), where
    the default params.mlflow.tracking_uri (sqlite:///mlruns.db) finds it when cwd = tmp_path."""
    path = tmp_path / "mlruns.db"
    shutil.copyfile(_migrated_mlflow_db, path)
    return path
