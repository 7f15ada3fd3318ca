"""Prompt building: what the model sees of a request, in the model folder's prompt format
(autocoder.format, read from its config.json: control and fill-in-the-middle tokens, the context
budget): our finetune's models are prompted as their training windows start, [control token] +
ids(context), the seed's checkpoints with the text "<python> " + context. With a `suffix`, a model of
ours whose tokenizer has the FIM tokens is prompted in PSM order, as its FIM training examples are laid
out up to the middle; the model writes the middle, then eos. The seed format and tokenizers without
the FIM tokens (GPT-2) cannot infill: a suffix is then a UserError.

User text is text: the context and suffix are encoded with special-token parsing off, so a literal
"<|endoftext|>" or "<fim_prefix>" typed in code is its characters, not the token (only the prompt
builder places special tokens); a lone surrogate (JSON's "\ud800", a command-line byte that is not
UTF-8) becomes U+FFFD, as a UTF-8 decoder with errors="replace" does, instead of failing the request.

Token healing (on by default): a tokenizer made for code spells a newline and the next line's
indentation as one token, so a context that ends at a line break ends with a bare "\n" token that
left-to-right training never saw before indented code, and the model answers with a blank line. The
context's last token is taken back and the first generated token must start with its text
(Guidance's token healing); the completion is what follows that text. The same holds for the prefix
of a fill-in-the-middle prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from autocoder.errors import UserError
from autocoder.format import (
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    SUFFIX_SHARE,
    PromptFormat,
    anchored_start,
    context_room,
    prompt,
    psm_prompt,
)

LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass
class Prompt:
    """A prompt ready to decode (PromptBuilder.prepare)."""

    ids: list[int]
    healed: str  # the context's last token, taken back (token healing): the completion re-spells it first
    allowed: np.ndarray | None  # the tokens the first generated one may be (token healing), or None: all


class PromptBuilder:
    """The prompts of one model: its tokenizer, its prompt format and its positions."""

    def __init__(self, tokenizer, config, name: str):
        self.tokenizer, self.config, self.name = tokenizer, config, name
        self._token_texts: list[str] | None = None  # each token's text, for token healing
        self.format = PromptFormat.read(config, tokenizer)
        self.languages = self.format.control_ids(tokenizer)  # language -> control token id
        self.fim_ids = self.format.fim_ids(tokenizer)  # None: this model cannot fill in the middle

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
        max_new_tokens: int,
        max_context_tokens: int | None = None,
        suffix: str | None = None,
        max_suffix_tokens: int | None = None,
        heal: bool = True,
        anchor: bool = False,
    ) -> Prompt:
        """The prompt of one completion (complete's arguments): its ids, cut to the context room, and
        what token healing took back. `anchor`: the context starts at an anchored line
        (format.anchored_start), so that the prompts of successive keystrokes share a prefix."""
        positions = self.config.max_position_embeddings
        room = context_room(positions, max_new_tokens, infill=suffix is not None)
        if room <= 0:
            raise UserError(
                f"max_new_tokens {max_new_tokens} leaves no room for a context in the model's {positions} positions"
            )
        keep = min(room, max_context_tokens or room)
        if anchor:
            context = self._anchored(context, keep, suffix, max_suffix_tokens)
        healed, allowed = (self._healed_tail(context) if heal else ""), None
        if healed:  # the context's last token, taken back: the first generated token must re-spell it
            context, allowed = context[: -len(healed)], self._tokens_starting_with(healed)
        if suffix is None:
            ids = self.prompt_ids(lang, context, keep)
        else:
            ids = self.fim_prompt_ids(lang, context, suffix, keep, max_suffix_tokens)
        return Prompt(ids, healed, allowed)

    def _anchored(self, context: str, keep: int, suffix: str | None, max_suffix_tokens: int | None) -> str:
        """The context from its anchored start: what fits in `keep` tokens less the suffix's share."""
        if suffix is not None:
            share = keep // SUFFIX_SHARE if max_suffix_tokens is None else min(max_suffix_tokens, keep)
            keep -= min(share, len(self.encode(suffix)))
        start = anchored_start(context, lambda at: len(self.encode(self.format.context_text(context[at:]))) <= keep)
        return context if start is None else context[start:]

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
