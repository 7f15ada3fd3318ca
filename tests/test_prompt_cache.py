"""Editor-speed completion: the anchored prompt window and the prompt cache across requests."""

from __future__ import annotations

import zlib

import pytest

from autocoder.complete import Completer
from autocoder.complete.cache import PromptCache
from autocoder.format import ANCHOR_EVERY, ANCHOR_MIN_CHARS, anchored_start
from helpers import real_code_files

LINES = [f"    total = total + item_{i} * {i}  # step {i}" for i in range(400)]
TEXT = "def run(items):\n" + "\n".join(LINES) + "\n"


def test_a_short_context_that_fits_is_kept_whole():
    assert anchored_start("def f(x):\n    return", lambda start: True) == 0


def test_a_long_context_that_fits_starts_after_its_first_line_which_may_be_cut():
    text = "ut(x)\n" + TEXT[: ANCHOR_MIN_CHARS + 100]
    assert anchored_start(text, lambda start: True) == len("ut(x)\n")


def test_a_window_that_does_not_fit_starts_at_a_content_anchor_that_stays_put():
    def start_of(text: str, room: int) -> str:
        start = anchored_start(text, lambda at: len(text) - at <= room)
        return text[start:]

    window = start_of(TEXT, 3_000)
    first_line = window.split("\n")[0]
    assert len(window) <= 3_000 and first_line in LINES
    assert zlib.crc32(first_line.encode()) % ANCHOR_EVERY == 0  # an anchor, chosen by its content
    earlier = [line for line in LINES[: LINES.index(first_line)] if zlib.crc32(line.encode()) % ANCHOR_EVERY == 0]
    assert len(TEXT) - TEXT.index(earlier[-1]) > 3_000  # the anchor before it does not fit: the earliest that does
    # typing at the end: the window keeps its start until the text from it no longer fits
    typed = TEXT + "    ret"
    assert start_of(typed, 3_000).startswith(window)
    # the client cuts the text before it anew (7 characters fewer in front): the same start
    assert start_of(TEXT[7:], 3_000) == window
    # more typing than the room holds: the start moves on, to a later anchor
    longer = TEXT + "".join(f"    other_{i} = {i}\n" for i in range(100))
    moved = start_of(longer, 3_000)
    assert len(longer) - len(moved) > len(TEXT) - len(window) and len(moved) <= 3_000
    assert zlib.crc32(moved.split("\n")[0].encode()) % ANCHOR_EVERY == 0


def test_nothing_fits_no_anchored_start():
    assert anchored_start(TEXT, lambda at: False) is None


@pytest.fixture(scope="module")
def completer(fim_model_dir):
    completer = Completer.from_pretrained(fim_model_dir)
    completer.model.double()  # no near-ties between the split and the whole forward pass to flip an argmax
    return completer


def typing(source: str, cursor: int, keystrokes: int, window: int) -> list[tuple[str, str]]:
    """The (prefix, suffix) of each keystroke typing source[cursor:cursor + keystrokes], the prefix
    cut to its last `window` characters as an editor's client cuts it."""
    return [(source[: cursor + k][-window:], source[cursor + keystrokes :][:200]) for k in range(keystrokes)]


@pytest.mark.slow
@pytest.mark.parametrize("infill", [False, True])
def test_cache_reuse_gives_the_tokens_of_a_cold_prefill(completer, infill):
    _, source = next(iter(real_code_files().values()))
    cache = PromptCache(completer.runner)
    for prefix, suffix in typing(source, len(source) // 2, 12, 1_500):
        kwargs = {"max_new_tokens": 8, "suffix": suffix if infill else None, "anchor": True}
        [warm] = completer.complete("python", prefix, prompt_cache=cache, **kwargs)
        [cold] = completer.complete("python", prefix, **kwargs)
        assert warm.token_ids == cold.token_ids and warm.text == cold.text
    stats = cache.stats
    # every keystroke after the first reuses the prompt before it: the typed token(s) and the
    # suffix (after the prefix in PSM) are all that runs again
    assert stats.requests == 12 and stats.cached_tokens > (0.5 if infill else 0.8) * stats.prompt_tokens


def test_a_prompt_shares_nothing_with_other_slots_takes_the_oldest(completer):
    cache = PromptCache(completer.runner, slots=2)
    texts = ["".join(f"{name}{i} = {i}\n" for i in range(30)) for name in "xyz"]  # 3 prompts, nothing shared
    for text in texts:
        completer.complete("python", text, max_new_tokens=2, prompt_cache=cache)
    assert cache.stats.cached_tokens == 0
    completer.complete("python", texts[2] + "w", max_new_tokens=2, prompt_cache=cache)  # the newest slot
    completer.complete("python", texts[1] + "w", max_new_tokens=2, prompt_cache=cache)
    assert cache.stats.cached_tokens > 2 * 100
    before = cache.stats.cached_tokens
    completer.complete("python", texts[0] + "w", max_new_tokens=2, prompt_cache=cache)  # evicted: cold
    assert cache.stats.requests == 6 and cache.stats.cached_tokens == before
