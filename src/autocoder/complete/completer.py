"""`Completer`: a model and its prompt builder, ready to complete code. `autocoder complete`,
`autocoder interact`, `autocoder serve` and `lsp`, the evaluate stage and the registry's pyfunc model
all complete through it. What it prompts with is prompt.py's, how it decodes decode.py's, how a
model folder is checked before loading folder.py's."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from autocoder.complete.cache import PromptCache
from autocoder.complete.decode import (
    DEFAULT_MAX_NEW_TOKENS,
    Completion,
    Decoding,
    check_generation_args,
    check_loop_guard,
    generate,
)
from autocoder.complete.folder import check_model_folder, check_transformers_folder
from autocoder.complete.prompt import Prompt, PromptBuilder
from autocoder.errors import UserError, first_line
from autocoder.format import BLANK_LINE
from autocoder.hub import hub_offline, local_path
from autocoder.runtime import OnnxRunner, OnnxTokenizer, TorchRunner, onnx_runner


class Completer(PromptBuilder):
    """A causal LM and its tokenizer, ready to complete code in the languages it has control tokens for.

    `model`: a transformers model (run by PyTorch; also `self.model`, for the evaluate stage's
    perplexity) or an OnnxRunner (self.model is None)."""

    def __init__(self, model, tokenizer):
        self.runner = model if isinstance(model, OnnxRunner) else TorchRunner(model)
        self.model = None if isinstance(model, OnnxRunner) else self.runner.model
        self.device = self.runner.device
        name = str(getattr(self.runner.config, "_name_or_path", "") or type(model).__name__)
        super().__init__(tokenizer, self.runner.config, name)
        self.confidence_threshold: float | None = None  # the gate fitted on dev (a registered model's)
        self.rng = np.random.default_rng()  # sampling (temperature > 0)

    @classmethod
    def from_pretrained(cls, name: str | Path, onnx: bool = True) -> Completer:
        """A local model folder or a Hub id (offline: the Hub cache only); safetensors weights only.

        A name that exists here, or is spelled as only a path can be (absolute, ./, ../, ~, more
        than one "/"), is a folder: a missing one is said to be missing, not tried on the Hub. A
        folder with an up-to-date model.onnx runs on ONNX Runtime unless `onnx` is False. The prompt
        format is the folder's (format.PromptFormat). No model's own Python ever runs: a folder whose
        config.json needs it is refused."""
        folder = local_path(name)
        if folder is not None:
            check_model_folder(folder)
            runner = onnx_runner(folder) if onnx else None
            if runner is not None:
                completer = cls(runner, OnnxTokenizer(folder))
                completer.name = str(name)
                return completer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if folder is not None:
            check_transformers_folder(folder)
        source = str(folder) if folder is not None else str(name)
        try:
            # never a model's own Python: left unset, transformers asks on stdin whether to run it
            kwargs = {"trust_remote_code": False} | ({} if folder is not None else {"local_files_only": hub_offline()})
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as e:
            if folder is not None:
                raise UserError(
                    f"model folder {folder}: cannot load it as a model with safetensors weights ({first_line(e)})"
                ) from None
            unreachable = " (the Hub is unreachable and it is not in the local Hub cache)" if hub_offline() else ""
            raise UserError(
                f"model {str(name)!r}: not a local folder, and cannot load it as a Hub id with "
                f"safetensors weights{unreachable} ({first_line(e)})"
            ) from None
        completer = cls(model, tokenizer)
        completer.name = str(name)
        return completer

    def complete(
        self,
        lang: str,
        context: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num: int = 1,
        stop: re.Pattern = BLANK_LINE,
        max_context_tokens: int | None = None,
        suffix: str | None = None,
        max_suffix_tokens: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        heal: bool = True,
        on_step: Callable[[list[str]], bool] | None = None,
        prompt_cache: PromptCache | None = None,
        anchor: bool = False,
    ) -> list[Completion]:
        """`num` completions of `context`: greedy when temperature is 0, else sampled (top-p). With a
        `suffix`, the completion fills in between `context` and `suffix` (prompt.py).
        `heal`: token healing of the context's last token (prompt.py). `on_step`, when
        given, is called after every generated token with each completion's text so far (not yet cut
        at `stop`); when it returns False, generation ends there and the unfinished ones stop as
        "cancelled" (a server whose client went away). `prompt_cache` (cache.py, one completion):
        the prompt's prefix is taken from it where it holds one, and its cache kept there; `anchor`:
        the context starts at an anchored line (prompt.py), so that successive prompts share a prefix."""
        check_generation_args(max_new_tokens, temperature, top_p, num)
        check_loop_guard(repetition_penalty, no_repeat_ngram_size)
        prompt = self.prepare(
            lang, context, max_new_tokens, max_context_tokens, suffix, max_suffix_tokens, heal, anchor
        )
        decoding = Decoding(max_new_tokens, temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        return self.generate([prompt] * num, [stop] * num, decoding, on_step, prompt_cache)

    def complete_many(
        self, requests: list[dict], batch_size: int, decoding: Decoding, progress: Callable[[int], None] | None = None
    ) -> list[Completion]:
        """One greedy or sampled completion per request (each a dict of prepare()'s arguments and
        `stop`), `batch_size` prompts at a time: prompts of similar lengths go together, left-padded,
        and the answers come back in the requests' order. Batching is where a larger model's
        throughput is (one pass over its weights serves every row); each row decodes as complete()
        would decode it alone (tests/test_complete.py). `progress(n)` is told of each batch done."""
        check_generation_args(decoding.max_new_tokens, decoding.temperature, decoding.top_p, 1)
        check_loop_guard(decoding.repetition_penalty, decoding.no_repeat_ngram_size)
        prompts = [
            self.prepare(max_new_tokens=decoding.max_new_tokens, **{k: v for k, v in r.items() if k != "stop"})
            for r in requests
        ]
        stops = [r.get("stop", BLANK_LINE) for r in requests]
        if not self.runner.pads:  # a runner without an attention mask takes prompts one at a time
            batch_size = 1
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
        completions: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            done = self.generate([prompts[i] for i in batch], [stops[i] for i in batch], decoding)
            for i, completion in zip(batch, done):
                completions[i] = completion
            if progress is not None:
                progress(len(batch))
        return completions

    def generate(
        self,
        prompts: list[Prompt],
        stops: list[re.Pattern],
        decoding: Decoding,
        on_step: Callable[[list[str]], bool] | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> list[Completion]:
        """Decode a batch of prompts, one row each (decode.generate)."""
        return generate(self.runner, self.tokenizer, prompts, stops, decoding, self.rng, on_step, prompt_cache)
