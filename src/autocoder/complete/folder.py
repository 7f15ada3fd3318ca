"""A model folder, checked before anything loads it, so that a problem is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

from autocoder.errors import UserError, first_line
from autocoder.hub import TOKENIZER_FILES_TEXT, has_tokenizer_files


def check_model_folder(folder: Path) -> None:
    """A local model folder exists and has its tokenizer: one clear line otherwise."""
    if not folder.exists():
        raise UserError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"model folder {folder} is a file, not a folder (give the folder a model was saved to)")
    if not has_tokenizer_files(folder):
        raise UserError(
            f"model folder {folder} has no tokenizer files ({TOKENIZER_FILES_TEXT}); save the "
            "model's tokenizer into it (tokenizer.save_pretrained)"
        )


def check_transformers_folder(folder: Path) -> None:
    """What transformers is about to load from a model folder, checked first so that a problem is one
    line naming it: a config.json that needs Python of the folder's own (`auto_map`, or a model_type
    transformers has no classes for: autocoder never runs it), and each safetensors file whole (a
    truncated one fails deep in transformers, naming no file)."""
    import transformers
    from safetensors import SafetensorError, safe_open
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    never = "autocoder never runs a model folder's own code"
    config_file = folder / "config.json"
    if config_file.is_file():  # a missing one: transformers says so
        try:
            config = json.loads(config_file.read_text())
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise UserError(f"model folder {folder}: cannot read its config.json ({first_line(e)})") from None
        if "auto_map" in config:
            raise UserError(
                f"model folder {folder}: its config.json maps model classes to its own Python (auto_map); {never}"
            )
        if config.get("model_type") not in CONFIG_MAPPING_NAMES:
            raise UserError(
                f"model folder {folder}: its config.json's model_type {config.get('model_type')!r} is not one "
                f"transformers {transformers.__version__} knows; {never}"
            )
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "np"):  # reads the header: a truncated or garbled file fails here
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(f"model folder {folder}: {path} is truncated or corrupt ({first_line(e)})") from None
