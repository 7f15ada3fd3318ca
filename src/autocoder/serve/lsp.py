"""`autocoder lsp`: completions in an editor's own language server client, over stdio (pygls).

Editors start a language server as a child process and speak JSON-RPC on its stdin and stdout, so
one command serves Neovim, VS Code, Helix, Emacs and the rest, with no plugin (the HTTP of
`autocoder serve` needs one per editor):

- `textDocument/completion`: one item, the completion at the cursor, listed with the client's other
  completions. Its `textEdit` replaces the identifier typed so far on the cursor's line with that
  identifier plus the completion, and `filterText` is the same text, so that the client's filtering
  by the typed prefix keeps it; `detail` gives its confidence. A list that shows it is complete (a
  client filters it as the user types on); an empty one (gated, or nothing generated) is
  incomplete, so the client asks again as typing goes on.
- `textDocument/inlineCompletion` (LSP 3.18, ghost text): the completion as the text to insert at
  the cursor.

What the model sees: the document before the cursor (its last MAX_PREFIX_CHARS characters; the
Completer keeps the nearest tokens that fit) and, when the model can fill in the middle and there
is text after the cursor, that text (its first MAX_SUFFIX_CHARS characters). The language is the
document's `languageId` when the model knows it, else the one of the file's extension (params.yaml's
languages), else the model's first. Generation is what `autocoder serve` does by default: the
settings the evaluate stage measured the model with (greedy, evaluate.max_new_tokens or
`--max-new-tokens`, its loop guard), stopping at a blank line; the
confidence gate (autocoder.gate: `--min-confidence`, else the registered model's threshold;
`--no-gate` turns it off) hides what an editor should not show.

An editor asks again after each keystroke, and an answer for text that has changed since is of no
use: a new completion request, or a change to its document, cancels the generation in flight or
waiting (it stops at its next token, or never starts) and its request answers ContentModified
(-32801), as LSP has a server say of a result made stale by an edit. A client's `$/cancelRequest`
cancels the generation too (pygls answers RequestCancelled, -32800). Generation runs in one worker
thread, one at a time, so the event loop keeps reading the editor's messages while the model runs.

The server completes the text the editor sent (didOpen, didChange) and never reads a file: a request
about a document the client has not opened is answered InvalidParams (-32602), naming its URI. An
error reply is one line, its message; the traceback of an unexpected one goes to stderr only.

The model loads once, before the server answers anything; a problem loading it is one line on
stderr and exit code 2. stdout carries JSON-RPC and nothing else: anything else written to it (a
print, a progress bar, a warning from C code) goes to stderr, which editors keep in their logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from importlib.metadata import version
from typing import BinaryIO
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument

from autocoder.complete import Completer, Completion
from autocoder.errors import UserError
from autocoder.format import BLANK_LINE, max_new_tokens_limit
from autocoder.params import Params, generation_settings
from autocoder.serve.jobs import Gate, Job, Worker, language

MAX_PREFIX_CHARS = 16_000  # far more than a model's context holds; the Completer cuts tokens itself
MAX_SUFFIX_CHARS = 4_000  # more than the quarter of the context the Completer gives a suffix
IDENTIFIER_TAIL = re.compile(r"[\w$]*\Z")  # the identifier being typed ($: Java's identifiers may have it)


class Completions:
    """The loaded model, its worker thread, the gate, and the jobs in flight; `server` is the
    pygls server that answers with them."""

    def __init__(
        self,
        completer: Completer,
        params: Params | None,
        settings: dict,
        gated: bool = True,
        min_confidence: float | None = None,
        cache_slots: int = 0,
    ):
        self.completer, self.params, self.settings = completer, params, settings
        self.worker = Worker(completer, cache_slots)
        self.gate = Gate(completer, gated, min_confidence)
        self.pending: dict[Job, str] = {}  # jobs queued or generating -> their document's URI
        self.server = self._build_server()

    def language(self, doc: TextDocument) -> str:
        if doc.language_id in self.completer.languages:
            return doc.language_id
        return language(self.completer, self.params, doc.path)

    def job(self, uri: str, position: types.Position) -> Job:
        """The job for a completion at `position`, registered as in flight; every job before it is
        cancelled (this request supersedes them)."""
        # The documents the client opened, keyed as pygls keys them: get_text_document would read an
        # unopened file:// URI from disk, completing (and so showing) any file the server can read.
        # An error, not an empty list: a request about a document never opened is the client's bug,
        # and an empty list would read as "nothing to complete here" (and, incomplete, be asked again).
        doc = self.server.workspace.text_documents.get(unquote(uri))
        if doc is None:
            raise JsonRpcInvalidParams(
                f"{uri} is not open: send textDocument/didOpen first (the server completes the editor's "
                "text, never a file's)"
            )
        offset = doc.offset_at_position(position)
        prefix, suffix = doc.source[:offset], doc.source[offset:]
        for job in self.pending:
            job.cancel()
        # nothing after the cursor: the left-to-right completion the model knows best
        suffix = suffix[:MAX_SUFFIX_CHARS] if self.completer.can_infill and suffix.strip() else None
        job = Job.of(self.language(doc), prefix[-MAX_PREFIX_CHARS:], suffix, BLANK_LINE, self.settings)
        self.pending[job] = uri
        return job

    async def run(self, job: Job) -> Completion | None:
        """The job's completion, None when there is nothing to show; ContentModified when the job was
        cancelled by a newer request or an edit."""
        try:
            [completion] = await self.worker.start(job)
        except asyncio.CancelledError:  # the client's $/cancelRequest (or shutdown): pygls cancelled the handler
            job.cancel()
            raise
        finally:
            del self.pending[job]
        if job.cancelled.is_set():
            raise JsonRpcContentModified("content modified: a newer request or an edit superseded this completion")
        if not completion.text.strip() or self.gate.hidden(job, completion):
            return None
        return completion

    def _build_server(self) -> LanguageServer:
        server = LanguageServer("autocoder", version("autocoder"), protocol_cls=_OneLineErrors)

        @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
        async def completion(params: types.CompletionParams) -> types.CompletionList:
            job = self.job(params.text_document.uri, params.position)
            typed = IDENTIFIER_TAIL.search(job.options["context"]).group()
            completion = await self.run(job)
            if completion is None:
                return types.CompletionList(is_incomplete=True, items=[])
            text = typed + completion.text
            at = params.position
            units = server.workspace.position_codec.client_num_units(typed)  # UTF-16 code units, usually
            start = types.Position(line=at.line, character=at.character - units)
            item = types.CompletionItem(
                label=next(line.strip() for line in text.split("\n") if line.strip()),
                text_edit=types.TextEdit(range=types.Range(start=start, end=at), new_text=text),
                filter_text=text,
                insert_text_format=types.InsertTextFormat.PlainText,
                detail=f"autocoder (confidence {completion.confidence:.2f}: mean token log-probability)",
            )
            return types.CompletionList(is_incomplete=False, items=[item])

        @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
        async def inline_completion(params: types.InlineCompletionParams) -> types.InlineCompletionList:
            completion = await self.run(self.job(params.text_document.uri, params.position))
            if completion is None:
                return types.InlineCompletionList(items=[])
            at = types.Range(start=params.position, end=params.position)
            return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=completion.text, range=at)])

        @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
        def did_change(params: types.DidChangeTextDocumentParams) -> None:
            for job, uri in self.pending.items():
                if uri == params.text_document.uri:
                    job.cancel()

        return server


class _OneLineErrors(LanguageServerProtocol):
    """pygls' protocol, less the Python traceback (the server's file paths and source lines) that it
    puts in the reply to a request whose handler raised (JsonRpcInternalError.of: `data.traceback`):
    an error reply is the first line of its message alone. pygls logs the traceback on stderr."""

    def _send_response(self, msg_id, result=None, error: types.ResponseError | None = None):
        # every reply pygls sends goes through here, whichever path built its error
        if error is not None:
            error = types.ResponseError(code=error.code, message=error.message.strip().split("\n", 1)[0])
        super()._send_response(msg_id, result, error)


def _stdout_for_rpc() -> BinaryIO:
    """The process's stdout, for JSON-RPC alone; from here on whatever else writes to file
    descriptor 1 (Python or C) writes to stderr."""
    sys.stdout.flush()
    rpc = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return rpc


def _log_to_stderr() -> None:
    """pygls' warnings and errors on stderr, less the ContentModified answers it logs as errors
    (a superseded request is how typing goes, not a fault)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(lambda record: not (record.exc_info and isinstance(record.exc_info[1], JsonRpcContentModified)))
    logger = logging.getLogger("pygls")
    logger.addHandler(handler)
    logger.propagate = False


def lsp_command(args) -> None:
    """`autocoder lsp`: load the model once, then answer on stdin/stdout until the editor exits."""
    rpc = _stdout_for_rpc()  # before anything loads that could write to stdout
    from autocoder.complete.load import load_completer, params_for, quiet_model_loading

    if args.cache_slots < 0:
        raise UserError(f"--cache-slots: {args.cache_slots} must be 0 (no prompt cache) or more")
    quiet_model_loading()  # no "Loading weights" bar in the editor's log
    params = params_for(args)
    completer = load_completer(args.model, params)
    if not completer.languages:
        raise UserError(f"model {completer.name}: no language control tokens to prompt it with")
    # greedy, as the evaluate stage measured the model (and fitted the gate's threshold on)
    settings = generation_settings(params.evaluate if params else None)
    if args.max_new_tokens is not None:
        settings["max_new_tokens"] = args.max_new_tokens
    limit = max_new_tokens_limit(completer.config.max_position_embeddings)
    if not 1 <= settings["max_new_tokens"] <= limit:
        raise UserError(f"--max-new-tokens: {settings['max_new_tokens']} must be in 1..{limit} for this model")
    completions = Completions(completer, params, settings, not args.no_gate, args.min_confidence, args.cache_slots)
    _log_to_stderr()
    try:
        completions.server.start_io(sys.stdin.buffer, rpc)
    finally:  # the editor went away: a generation still running stops at its next token
        for job in completions.pending:
            job.cancel()
