"""Code completion with a trained model: `autocoder complete`, `autocoder interact`, the evaluate stage
and the registry's pyfunc model all complete through `Completer`.

A completion ends as soon as its stop pattern shows up in the generated text (by default a blank
line, the seed's convention), at eos, or after max_new_tokens: the check runs after every token, so
no token is generated after the completion is done (the seed generated up to 128 tokens every time
and cut the text afterwards).

Decoding is a plain loop over the model's forward pass with its key/value cache, not
`model.generate`: it checks the stop after each token and reads each token's log-probability (the
`--json` confidence) straight from the logits. Per token it costs about what generate costs
(benchmarks/complete.py); the saving is the tokens not generated after the stop. The forward pass is
PyTorch's, or ONNX Runtime's for a folder with an exported model.onnx (autocoder.runtime: no torch
import, a cold start in about a second); the loop itself works on numpy arrays, so that one loop
serves both.

What the model sees (the prompt format, control and fill-in-the-middle tokens, the context budget,
the stop patterns) is autocoder.format's, read from the model folder: our finetune's models are
prompted as their training windows start, [control token] + ids(context), the seed's checkpoints
with the text "<python> " + context. With a `suffix`, a model of ours whose tokenizer has the FIM
tokens is prompted in PSM order, as its FIM training examples are laid out up to the middle; the
model writes the middle, then eos. The seed format and tokenizers without the FIM tokens (GPT-2)
cannot infill: a suffix is then a UserError.

User text is text: the context and suffix are encoded with special-token parsing off, so a literal
"<|endoftext|>" or "<fim_prefix>" typed in code is its characters, not the token (only the Completer
places special tokens); a lone surrogate (JSON's "\ud800", a command-line byte that is not UTF-8)
becomes U+FFFD, as a UTF-8 decoder with errors="replace" does, instead of failing the request.

Token healing (on by default): a tokenizer made for code spells a newline and the next line's
indentation as one token, so a context that ends at a line break ends with a bare "\n" token that
left-to-right training never saw before indented code, and the model answers with a blank line. The
context's last token is taken back and the first generated token must start with its text
(Guidance's token healing); the completion is what follows that text. The same holds for the prefix
of a fill-in-the-middle prompt.

Loop guard: `repetition_penalty` (CTRL's: the logits of every token already in the prompt or the
completion are divided by it when positive, multiplied when negative) and `no_repeat_ngram_size`
(no n-gram of the prompt + completion occurs twice), applied to the logits before the greedy or
sampled choice; both off (1.0 and 0), decoding is unchanged. The confidence stays the model's own
log-probability of each chosen token, before them. They and the sampling warpers (temperature, top-p)
are transformers' logits processors written again in numpy, because the ONNX path has no torch;
tests/test_complete.py checks them against transformers' generate.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autocoder.errors import UserError, first_line
from autocoder.format import (
    BLANK_LINE,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    PromptFormat,
    context_room,
    prompt,
    psm_prompt,
)
from autocoder.hub import TOKENIZER_FILES_TEXT, has_tokenizer_files, hub_offline, local_path
from autocoder.params import MlflowParams, Params, generation_settings, load_params
from autocoder.runtime import OnnxRunner, OnnxTokenizer, TorchRunner, onnx_runner

HISTORY_FILE = ".autocoder_history"  # in the home folder
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it
DEFAULT_MAX_NEW_TOKENS = generation_settings()["max_new_tokens"]  # evaluate.max_new_tokens' default
MAX_TEMPERATURE = 2.0  # as OpenAI's API allows; far flatter than any useful sampling
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass
class Completion:
    text: str
    confidence: float  # mean log-probability (natural log) of the tokens generated up to the stop
    n_tokens: int  # tokens generated, the one that completed the stop (or eos) included
    stop: str  # "pattern", "eos", "length", or "cancelled" (on_step said so)
    # each generated token and its log-probability (for a server's `logprobs`)
    token_ids: list[int] = field(default_factory=list, repr=False)
    token_logprobs: list[float] = field(default_factory=list, repr=False)
    healed: str = ""  # the context's last token, taken back (token healing): the tokens re-spell it first

    def summary(self) -> dict:
        """What the CLI's --json prints."""
        return {"text": self.text, "confidence": self.confidence, "n_tokens": self.n_tokens, "stop": self.stop}


@dataclass
class Prompt:
    """A prompt ready to decode (Completer.prepare)."""

    ids: list[int]
    healed: str  # the context's last token, taken back (token healing): the completion re-spells it first
    allowed: np.ndarray | None  # the tokens the first generated one may be (token healing), or None: all


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen: greedy at temperature 0, else sampled (top-p); the loop guard."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


class StopCheck:
    """Why a completion is over after its newest token: "eos", "pattern" (the generated text now
    matches `pattern`, so the newest token completed the match) or None (not over)."""

    def __init__(self, tokenizer, pattern: re.Pattern, healed: str = ""):
        self.tokenizer, self.pattern, self.healed = tokenizer, pattern, healed

    def __call__(self, ids: list[int]) -> str | None:
        if ids[-1] == self.tokenizer.eos_token_id:
            return "eos"
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return "pattern" if self.pattern.search(text[len(self.healed) :]) else None


class Completer:
    """A causal LM and its tokenizer, ready to complete code in the languages it has control tokens for.

    `model`: a transformers model (run by PyTorch; also `self.model`, for the evaluate stage's
    perplexity) or an OnnxRunner (self.model is None)."""

    def __init__(self, model, tokenizer):
        self.runner = model if isinstance(model, OnnxRunner) else TorchRunner(model)
        self.model = None if isinstance(model, OnnxRunner) else self.runner.model
        self.config, self.device = self.runner.config, self.runner.device
        self.tokenizer = tokenizer
        self._token_texts: list[str] | None = None  # each token's text, for token healing
        self.confidence_threshold: float | None = None  # the gate fitted on dev (a registered model's)
        self.rng = np.random.default_rng()  # sampling (temperature > 0)
        self.format = PromptFormat.read(self.config, tokenizer)
        self.languages = self.format.control_ids(tokenizer)  # language -> control token id
        self.fim_ids = self.format.fim_ids(tokenizer)  # None: this model cannot fill in the middle
        self.name = str(getattr(self.config, "_name_or_path", "") or type(model).__name__)

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
            _check_model_folder(folder)
            runner = onnx_runner(folder) if onnx else None
            if runner is not None:
                completer = cls(runner, OnnxTokenizer(folder))
                completer.name = str(name)
                return completer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if folder is not None:
            _check_transformers_folder(folder)
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

    @property
    def can_infill(self) -> bool:
        return self.fim_ids is not None

    def _control_id(self, lang: str) -> int:
        if lang not in self.languages:
            known = ", ".join(self.languages) or "none"
            raise UserError(f"language {lang!r}: the model has no control token for it (it knows: {known})")
        return self.languages[lang]

    def encode(self, text: str) -> list[int]:
        """The ids of user text, as text (the module docstring): every prompt, suffix and count of
        prompt tokens is encoded here."""
        text = LONE_SURROGATE.sub("\ufffd", text)
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def prompt_ids(self, lang: str, context: str, room: int | None = None) -> list[int]:
        """The control token and the context's ids, the last `room` of them (default all)."""
        ids = self.encode(self.format.context_text(context))
        return prompt(self._control_id(lang), ids, len(ids) if room is None else room)

    def fim_prompt_ids(
        self, lang: str, prefix: str, suffix: str, room: int, max_suffix_tokens: int | None = None
    ) -> list[int]:
        """The PSM prompt of `prefix` and `suffix`, cut to `room` tokens together (format.psm_prompt)."""
        control = self._control_id(lang)
        if self.fim_ids is None:
            raise UserError(
                f"model {self.name} has no fill-in-the-middle tokens ({FIM_PREFIX}, {FIM_SUFFIX}, "
                f"{FIM_MIDDLE}); complete without a suffix"
            )
        if max_suffix_tokens is not None and max_suffix_tokens < 0:
            raise UserError(f"max_suffix_tokens: {max_suffix_tokens} must be >= 0")
        return psm_prompt(control, self.fim_ids, self.encode(prefix), self.encode(suffix), room, max_suffix_tokens)

    def prepare(
        self,
        lang: str,
        context: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_context_tokens: int | None = None,
        suffix: str | None = None,
        max_suffix_tokens: int | None = None,
        heal: bool = True,
    ) -> Prompt:
        """The prompt of one completion (complete's arguments): its ids, cut to the context room, and
        what token healing took back."""
        positions = self.config.max_position_embeddings
        room = context_room(positions, max_new_tokens, infill=suffix is not None)
        if room <= 0:
            raise UserError(
                f"max_new_tokens {max_new_tokens} leaves no room for a context in the model's {positions} positions"
            )
        keep = min(room, max_context_tokens or room)
        healed, allowed = (self._healed_tail(context) if heal else ""), None
        if healed:  # the context's last token, taken back: the first generated token must re-spell it
            context, allowed = context[: -len(healed)], self._tokens_starting_with(healed)
        if suffix is None:
            ids = self.prompt_ids(lang, context, keep)
        else:
            ids = self.fim_prompt_ids(lang, context, suffix, keep, max_suffix_tokens)
        return Prompt(ids, healed, allowed)

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
    ) -> list[Completion]:
        """`num` completions of `context`: greedy when temperature is 0, else sampled (top-p). With a
        `suffix`, the completion fills in between `context` and `suffix` (the module docstring).
        `heal`: token healing of the context's last token (the module docstring). `on_step`, when
        given, is called after every generated token with each completion's text so far (not yet cut
        at `stop`); when it returns False, generation ends there and the unfinished ones stop as
        "cancelled" (a server whose client went away)."""
        _check_generation_args(max_new_tokens, temperature, top_p, num)
        _check_loop_guard(repetition_penalty, no_repeat_ngram_size)
        prompt = self.prepare(lang, context, max_new_tokens, max_context_tokens, suffix, max_suffix_tokens, heal)
        decoding = Decoding(max_new_tokens, temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        return self.generate([prompt] * num, [stop] * num, decoding, on_step)

    def complete_many(
        self, requests: list[dict], batch_size: int, decoding: Decoding, progress: Callable[[int], None] | None = None
    ) -> list[Completion]:
        """One greedy or sampled completion per request (each a dict of prepare()'s arguments and
        `stop`), `batch_size` prompts at a time: prompts of similar lengths go together, left-padded,
        and the answers come back in the requests' order. Batching is where a larger model's
        throughput is (one pass over its weights serves every row); each row decodes as complete()
        would decode it alone (tests/test_complete.py). `progress(n)` is told of each batch done."""
        _check_generation_args(decoding.max_new_tokens, decoding.temperature, decoding.top_p, 1)
        _check_loop_guard(decoding.repetition_penalty, decoding.no_repeat_ngram_size)
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
    ) -> list[Completion]:
        """Decode a batch of prompts (complete()'s loop, one row each). Shorter prompts are left-padded
        with their own first token, which the attention mask hides and the repetition penalty already
        counts, so a padded row decodes as it would alone. Greedy rows that are done leave the batch
        (and the cache), so that the longest completion does not keep the finished ones computing."""
        width = max(len(p.ids) for p in prompts)
        pads = np.array([width - len(p.ids) for p in prompts])
        sequence = np.array([[p.ids[0]] * pad + p.ids for p, pad in zip(prompts, pads)], dtype=np.int64)
        mask = np.array([[0] * pad + [1] * len(p.ids) for p, pad in zip(prompts, pads)]) if pads.any() else None
        checks = [StopCheck(self.tokenizer, stop, p.healed) for p, stop in zip(prompts, stops)]
        num = len(prompts)
        generated: list[list[int]] = [[] for _ in range(num)]
        logprobs: list[list[float]] = [[] for _ in range(num)]
        reasons: list[str | None] = [None] * num
        live = np.arange(num)  # the prompts still in the batch, in its row order
        d = decoding
        inputs, cache = sequence, None
        for step in range(d.max_new_tokens):
            logits, cache = self.runner.step(inputs, cache, mask)
            scores = logits.copy()  # logits stay the model's own: the confidence
            if d.repetition_penalty != 1.0:
                _penalize_repeats(scores, sequence, d.repetition_penalty)
            if d.no_repeat_ngram_size > 0:
                unpadded = [ids[pad:] for ids, pad in zip(sequence.tolist(), pads[live])]
                _ban_repeated_ngrams(scores, unpadded, d.no_repeat_ngram_size)
            if step == 0:  # the first token re-spells the healed one
                for row, p in enumerate(prompts):
                    if p.allowed is not None:
                        scores[row, ~p.allowed] = -np.inf
            tokens = _sample(scores, d.temperature, d.top_p, self.rng) if d.temperature > 0 else scores.argmax(-1)
            token_logprobs = _log_softmax(logits)[np.arange(len(live)), tokens]
            for row, token, logprob in zip(live.tolist(), tokens.tolist(), token_logprobs.tolist()):
                if reasons[row] is None:
                    generated[row].append(token)
                    logprobs[row].append(logprob)
                    reasons[row] = checks[row](generated[row])
            if all(reasons):
                break
            if on_step is not None and not on_step([self._text(ids, p.healed) for ids, p in zip(generated, prompts)]):
                reasons = [reason or "cancelled" for reason in reasons]
                break
            inputs = tokens[:, None].astype(np.int64)
            sequence = np.concatenate([sequence, inputs], axis=1)
            if mask is not None:
                mask = np.concatenate([mask, np.ones((len(live), 1), dtype=mask.dtype)], axis=1)
            keep = [i for i, row in enumerate(live) if reasons[row] is None]
            if d.temperature == 0 and len(keep) < len(live):  # (sampling keeps its rows: the same draws)
                live, inputs, sequence, cache = (
                    live[keep],
                    inputs[keep],
                    sequence[keep],
                    self.runner.select(cache, keep),
                )
                mask = mask[keep] if mask is not None else None
        return [
            self._completion(ids, row_logprobs, reason or "length", stop, p.healed)
            for ids, row_logprobs, reason, stop, p in zip(generated, logprobs, reasons, stops, prompts)
        ]

    def _text(self, ids: list[int], healed: str) -> str:
        """The text of generated ids, without the healed token's text the context already has."""
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[len(healed) :]

    def _completion(
        self, ids: list[int], logprobs: list[float], reason: str, stop: re.Pattern, healed: str
    ) -> Completion:
        return Completion(
            cut_at(stop, self._text(ids, healed)),
            sum(logprobs) / len(logprobs),
            len(ids),
            reason,
            ids,
            logprobs,
            healed,
        )

    def _healed_tail(self, context: str) -> str:
        """The text of the context's last token, when token healing can take it back."""
        ids = self.encode(context[-256:]) if context else []  # the tail is enough for the last token
        tail = self.tokenizer.decode(ids[-1:], clean_up_tokenization_spaces=False) if ids else ""
        if not tail or "\ufffd" in tail or tail in self.tokenizer.all_special_tokens or not context.endswith(tail):
            return ""
        return tail

    def _tokens_starting_with(self, text: str) -> np.ndarray:
        """A mask of the vocabulary's tokens whose text starts with `text`."""
        if self._token_texts is None:
            self._token_texts = [
                self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in range(len(self.tokenizer))
            ]
        mask = np.zeros(self.config.vocab_size, dtype=bool)
        mask[[i for i, t in enumerate(self._token_texts) if t.startswith(text) and i < len(mask)]] = True
        return mask


def _check_model_folder(folder: Path) -> None:
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


def _check_transformers_folder(folder: Path) -> None:
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


def _sample(scores: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row from the softmax of scores / temperature, cut to the top-p nucleus: the
    most likely tokens whose probabilities before them add up to less than top_p (the most likely
    always stays), as transformers' TopPLogitsWarper keeps them."""
    # In float64 (a temperature of 1e-50 is 0 in float32) and shifted to a maximum of 0 before the
    # division, so that a temperature near 0 gives the others -inf (an overflow, harmless: greedy), not NaN
    shifted = scores.astype(np.float64) - scores.max(-1, keepdims=True)
    with np.errstate(over="ignore"):
        probs = np.exp(_log_softmax(shifted / temperature))
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=-1)
    ranked[(np.cumsum(ranked, axis=-1) - ranked) >= top_p] = 0.0
    thresholds = rng.random((len(ranked), 1)) * ranked.sum(-1, keepdims=True)
    picks = (np.cumsum(ranked, axis=-1) >= thresholds).argmax(-1)
    return order[np.arange(len(order)), picks]


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _penalize_repeats(scores: np.ndarray, sequence: np.ndarray, penalty: float) -> None:
    """CTRL's repetition penalty, in place: every token of the row's sequence has its score divided
    by `penalty` where positive, multiplied where negative."""
    for row, ids in enumerate(sequence):
        seen = np.unique(ids)
        s = scores[row, seen]
        scores[row, seen] = np.where(s < 0, s * penalty, s / penalty)


def _ban_repeated_ngrams(scores: np.ndarray, sequences: list[list[int]], n: int) -> None:
    """In place: no token may complete an n-gram that the row's sequence already has."""
    for row, ids in enumerate(sequences):
        if len(ids) + 1 < n:
            continue
        tail = tuple(ids[len(ids) - n + 1 :])
        banned = {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == tail}
        scores[row, list(banned)] = -np.inf


def cut_at(pattern: re.Pattern, text: str) -> str:
    """`text` up to the first match of `pattern` (all of it when there is none)."""
    match = pattern.search(text)
    return text[: match.start()] if match else text


def _check_generation_args(max_new_tokens: int, temperature: float, top_p: float, num: int) -> None:
    if max_new_tokens <= 0:
        raise UserError(f"max_new_tokens: {max_new_tokens} must be positive")
    if not 0 <= temperature <= MAX_TEMPERATURE:  # also refuses NaN
        raise UserError(f"temperature: {temperature} must be between 0 (greedy) and {MAX_TEMPERATURE}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p: {top_p} must be in (0, 1]")
    if num < 1:
        raise UserError(f"num: {num} must be at least 1")
    if num > 1 and temperature == 0:
        raise UserError(f"num: {num} completions need sampling: give a temperature > 0 (greedy has one answer)")


def _check_loop_guard(repetition_penalty: float, no_repeat_ngram_size: int) -> None:
    if not repetition_penalty > 0:  # also rejects NaN
        raise UserError(f"repetition_penalty: {repetition_penalty} must be > 0 (1.0 = off)")
    if no_repeat_ngram_size < 0:
        raise UserError(f"no_repeat_ngram_size: {no_repeat_ngram_size} must be >= 0 (0 = off)")


def load_completer(model: str | None, params: Params | None) -> Completer:
    """`model`: a folder, a Hub id or a `models:/` URI; None = the registry's champion."""
    if model is None and params is None:
        raise UserError("no --model given and no params file to find the registry's champion")
    if model is None or model.startswith("models:/"):
        from autocoder.champion import champion_uri, local_model
        from autocoder.tracking import tracking_uri

        uri = model or champion_uri(params.evaluate.registered_model_name)
        found = local_model(tracking_uri(params.mlflow if params else MlflowParams()), uri)
        return logged_completer(*found) if found else _from_registry(uri, params)
    return Completer.from_pretrained(model)


def logged_completer(hf_dir: str | Path, config: dict) -> Completer:
    """The Completer of a registered model: its Hugging Face folder and the config it was logged with
    (autocoder.serving: the confidence gate's threshold)."""
    completer = Completer.from_pretrained(hf_dir)
    completer.confidence_threshold = config.get("confidence_threshold")
    return completer


def _from_registry(uri: str, params: Params | None) -> Completer:
    import mlflow
    from mlflow.exceptions import MlflowException

    from autocoder.tracking import configure

    store = configure(params.mlflow if params else MlflowParams())
    try:
        # suppress_warnings: MLflow's check of the logged pip requirements against the installed
        # packages scans every package's metadata (2.5 s of a cold start); the model runs in the
        # project's own environment, which `make` installs from requirements.lock
        model = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
    except MlflowException as e:
        raise UserError(
            f"model {uri!r}: not in the registry at {store} ({first_line(e)}); "
            "run the pipeline (`dvc repro`) or pass --model DIR"
        ) from None
    return model.unwrap_python_model().completer


def quiet_model_loading() -> None:
    """No "Loading weights" bar around a completion. transformers reads the variable when first
    imported; importing it here to switch the bar off would cost a second of the ONNX path's start,
    so only a transformers imported already (by the caller) is told directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def params_for(args) -> Params | None:
    """The params file; optional when --model names the model (e.g. outside the project)."""
    if args.model is not None and not Path(args.params).exists():
        return None
    return load_params(args.params)


def _completer_for(args, has_text: bool = True) -> Completer:
    """The model for `complete` or `interact`, once the arguments are known to be good: a bad one is
    refused before the model loads (seconds)."""
    params = params_for(args)
    evaluated = generation_settings(params.evaluate if params else None)  # what the model was measured with
    if args.max_new_tokens is None:
        args.max_new_tokens = evaluated["max_new_tokens"]
    if args.repetition_penalty is None:
        args.repetition_penalty = evaluated["repetition_penalty"]
    _check_generation_args(args.max_new_tokens, args.temperature, args.top_p, getattr(args, "num", 1))
    _check_loop_guard(args.repetition_penalty, 0)
    if args.lang is not None and params is not None and args.lang not in params.languages:
        raise UserError(
            f"--lang {args.lang!r}: not a language of {args.params} (it has: {', '.join(params.languages)})"
        )
    if not has_text:
        raise UserError("the prompt is empty: give the code to complete (or a --suffix to fill in before)")
    quiet_model_loading()
    return load_completer(args.model, params)


def complete_command(args) -> None:
    suffix = args.suffix_file.read() if args.suffix_file else args.suffix
    completer = _completer_for(args, has_text=bool(args.prompt.strip()) or bool(suffix))
    completions = completer.complete(
        args.lang,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        num=args.num,
        suffix=suffix,
        repetition_penalty=args.repetition_penalty,
    )
    if args.json:
        print(
            json.dumps(
                {"lang": args.lang, "prompt": args.prompt, "completions": [c.summary() for c in completions]}, indent=2
            )
        )
    else:  # a completion never contains a blank line, so one separates several
        print("\n\n".join(c.text for c in completions))


def _ask_language(completer: Completer) -> str:
    while True:
        lang = input(f"language ({', '.join(completer.languages)}): ").strip()
        if lang in completer.languages:
            return lang
        print(f"unknown language {lang!r}")


def interact_command(args) -> None:
    """The seed's REPL: choose a language, type code, read the completion; `change_lang`, `exit`.
    Ctrl-D (end of input) leaves it like `exit`; Ctrl-C leaves it too, with exit code 130 (as a shell
    reports an interrupted command), also while the model loads or a completion runs."""
    try:
        _repl(args)
    except EOFError:  # Ctrl-D, or the end of piped input
        print(file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _repl(args) -> None:
    import readline

    completer = _completer_for(args)
    history = Path.home() / HISTORY_FILE
    if history.exists():
        readline.read_history_file(history)
    readline.set_auto_history(False)  # added below, also when the lines come from a pipe
    if args.lang is not None:
        completer.prompt_ids(args.lang, "")  # an unknown language fails here, before the REPL
    try:
        lang = args.lang or _ask_language(completer)
        print("type code to complete it; 'change_lang' switches the language, 'exit' quits")
        while (context := input(f"{lang}>>> ")) != "exit":
            readline.add_history(context)
            if context == "change_lang":
                lang = _ask_language(completer)
            elif context.strip():
                [completion] = completer.complete(
                    lang,
                    context,
                    max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature,
                    top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty,
                )
                print(context + completion.text)
    finally:
        readline.set_history_length(1000)
        readline.write_history_file(history)
