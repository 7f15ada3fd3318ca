"""What both servers share: a request's language and its generation as a job that can be cancelled,
the one worker thread that runs the jobs (with the prompt cache, complete/cache.py), and the
confidence gate's decision on what they generated."""

from __future__ import annotations

import asyncio
import gc
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from autocoder import gate
from autocoder.complete import Completer, Completion
from autocoder.complete.cache import PromptCache
from autocoder.params import Params


@dataclass(eq=False)  # compared and hashed by identity: a server keeps the jobs in flight in a dict
class Job:
    """One request's generation: `options` are Completer.complete's arguments (`context` and
    `suffix` among them); `cancel()` (a client gone, a request superseded) stops it at the next token.
    `stops`: the request's own stop strings, as given (options["stop"] is their compiled pattern).
    `on_texts`, when set, receives each completion's text so far after every token."""

    options: dict
    stops: list[str] = field(default_factory=list)
    on_texts: object = None  # callable(list[str]) or None
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached_tokens: int = 0  # prompt tokens the prompt cache held (set when it has run)

    @classmethod
    def of(
        cls, lang: str, prefix: str, suffix: str | None, stop: re.Pattern, settings: dict, stops: list[str] = ()
    ) -> Job:
        """The job of a request: complete `prefix` (before `suffix`, a fill-in-the-middle model's) in
        `lang` until `stop`, with the generation `settings` (max_new_tokens, loop guard, sampling)."""
        return cls({"lang": lang, "context": prefix, "suffix": suffix, "stop": stop, **settings}, list(stops))

    def cancel(self) -> None:
        self.cancelled.set()

    def step(self, texts: list[str]) -> bool:
        if self.on_texts is not None:
            self.on_texts(texts)
        return not self.cancelled.is_set()


def language(completer: Completer, params: Params | None, path: str | None) -> str:
    """The language of a file the client named no known language for: by its name (the params'
    extensions, among the languages the model knows), else the model's first."""
    known = list(completer.languages)
    if path and params is not None:
        lang = params.language_of(path, among=[name for name in params.languages if name in known])
        if lang is not None:
            return lang
    return known[0]


class Worker:
    """The loaded Completer and its one generating thread: jobs run one at a time, in the order they
    were started (on a CPU, two at once would each take about twice as long). A job of one
    completion prompts with an anchored window (format.anchored_start), so that successive
    keystrokes share a prefix, and with `cache_slots` reuses the prompt cache (complete/cache.py)."""

    def __init__(self, completer: Completer, cache_slots: int = 0):
        self.completer = completer
        self.cache = PromptCache(completer.runner, cache_slots) if cache_slots > 0 else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        # The loaded model and libraries are objects that live as long as the server: out of the
        # cyclic collector's sight, its full collections no longer stop the event loop for 300 ms
        # under load (benchmarks/serve_hostile.py)
        gc.collect()
        gc.freeze()

    def start(self, job: Job) -> asyncio.Future:
        """Queue the job; the future (of the running event loop) gets its completions."""
        return asyncio.get_running_loop().run_in_executor(self._thread, self._generate, job)

    def _generate(self, job: Job) -> list[Completion]:
        if job.cancelled.is_set():  # cancelled while it waited: not even its prompt is run
            return [Completion("", math.nan, 0, "cancelled")] * job.options.get("num", 1)  # no token, no confidence
        if job.options.get("num", 1) != 1:
            return self.completer.complete(**job.options, on_step=job.step)
        # anchored with or without the cache: the same prompts, so --cache-slots 0 gives the same answers
        cached = self.cache.stats.cached_tokens if self.cache is not None else 0
        completions = self.completer.complete(**job.options, on_step=job.step, prompt_cache=self.cache, anchor=True)
        job.cached_tokens = self.cache.stats.cached_tokens - cached if self.cache is not None else 0
        return completions


class Gate:
    """The confidence gate (autocoder.gate) as a server applies it: off, or at `min_confidence`, else
    at the threshold fitted with the registered model (a model folder has none: the filters only)."""

    def __init__(self, completer: Completer, on: bool = True, min_confidence: float | None = None):
        self.on = on
        self.threshold = min_confidence if min_confidence is not None else completer.confidence_threshold

    def hidden(self, job: Job, completion: Completion) -> str | None:
        """Why the gate hides this completion of the job's context, or None."""
        if not self.on:
            return None
        options = job.options
        return gate.hidden(
            completion.text, completion.confidence, self.threshold, options["context"], options["suffix"]
        )
