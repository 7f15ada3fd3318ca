"""Prompt caching across requests (llama.cpp's `cache_prompt`): an editor asks again at every pause
in typing with almost the same prompt, so the key/value cache of a previous prompt and its
completion is kept, and the next prompt runs the model only on what follows the longest prefix they
share. A few slots are kept (several documents or clients), and a prompt takes the slot that shares
the most with it, as llama.cpp's server picks a slot by prompt similarity.

A prompt decoded after a cached prefix gives the tokens a cold prefill gives (tests/test_complete.py):
the same model on the same ids, only the forward pass split in two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SHARED = 16  # tokens: a shorter shared prefix is not worth taking a slot's cache away from it


@dataclass
class Slot:
    ids: list[int] = field(default_factory=list)  # the tokens the cache holds, in order
    kv: object = None  # the runner's cache of `ids`, or None


@dataclass
class CacheStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those taken from a slot instead of run again


class PromptCache:
    """The slots of one runner (autocoder.runtime), used by one thread (the server's worker)."""

    def __init__(self, runner, slots: int = 4):
        self.runner = runner
        self.slots = [Slot() for _ in range(slots)]
        self.stats = CacheStats()
        self._last: Slot | None = None

    def take(self, ids: list[int]) -> tuple[object, int]:
        """(a cache of the first n tokens of `ids`, n) from the slot that shares the longest prefix
        with them; (None, 0) when none shares MIN_SHARED tokens. At least one token of `ids` is left
        to run: its logits are the first generated token's. The slot is emptied (the cache is
        extended in place while decoding) until `keep` fills it again."""
        shared = [common_prefix(slot.ids, ids) for slot in self.slots]
        best = max(range(len(self.slots)), key=lambda i: (shared[i], i))
        # the least recently filled slot gets this request's cache when nothing is shared
        self._last = self.slots[best] if shared[best] >= MIN_SHARED else self.slots[0]
        self.slots.remove(self._last)
        self.slots.append(self._last)
        n = min(shared[best], len(ids) - 1)
        self.stats.requests += 1
        self.stats.prompt_tokens += len(ids)
        if shared[best] < MIN_SHARED or n <= 0:
            return None, 0
        # the slot holds nothing until keep(): a generation that fails leaves it empty, not stale
        kv, self._last.ids, self._last.kv = self._last.kv, [], None
        self.stats.cached_tokens += n
        return self.runner.crop(kv, n), n

    def keep(self, ids: list[int], kv) -> None:
        """The cache after a completion: `kv` holds the first runner.length(kv) tokens of `ids` (the
        prompt, and the generated tokens that were run)."""
        if self._last is not None:
            self._last.ids, self._last.kv = ids[: self.runner.length(kv)], kv


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens of `a` equal `b`'s."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
