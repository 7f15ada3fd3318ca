"""How a predicted line (or block) is compared with the true one, wherever the evaluate stage does."""

from __future__ import annotations

import difflib


def exact_match(predicted: str, target: str) -> bool:
    """CodeXGLUE's exact match: the same whitespace-split tokens."""
    return predicted.split() == target.split()


def edit_similarity(predicted: str, target: str) -> float:
    return difflib.SequenceMatcher(None, predicted.strip(), target.strip(), autojunk=False).ratio()
