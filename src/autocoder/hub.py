"""The Hugging Face Hub: is it reachable (asked once, so that offline machines do not sit through
huggingface_hub's retries, about 50 s per file, before falling back to local files), and does a
model or tokenizer name mean a local folder or a Hub id."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

# What a folder saved by `tokenizer.save_pretrained` (or shipped with a Hub model) holds: the fast
# tokenizer's tokenizer.json, tokenizer_config.json, or a slow tokenizer's vocabulary files.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_FILES_TEXT = "tokenizer.json, tokenizer_config.json or a vocab file"


@lru_cache(maxsize=1)
def hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return False
    except OSError:
        return True


def is_hub_id(name: str) -> bool:
    """Whether `name` is spelled as a Hub repository id can be: "name" or "org/name", of letters,
    digits, "-", "_" and "." (huggingface_hub's own check)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def local_path(name: str | Path) -> Path | None:
    """The local path `name` means, or None when it means a Hub id.

    A name is a local path when something exists there, when it can only be a path (absolute, or
    starting with "~", "./" or "../") or when it is not spelled as a Hub id can be (e.g. "a/b/c");
    an "org/name" or "name" that does not exist here is a Hub id.
    """
    text = str(name)
    path = Path(text).expanduser()
    if (
        path.exists()
        or path.is_absolute()
        or text.startswith(("~", f".{os.sep}", f"..{os.sep}", "./", "../"))
        or not is_hub_id(text)
    ):
        return path
    return None


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)
