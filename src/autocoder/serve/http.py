"""`autocoder serve`: completions over HTTP, in the protocols editors' completion clients speak.

- OpenAI's completions, `POST /v1/completions` (`prompt`, `suffix`, `max_tokens`, `temperature`,
  `top_p`, `n`, `stop`, `logprobs`, `stream` as server-sent events) and `GET /v1/models`: Continue's
  OpenAI provider, llm-ls' `openai` backend (llm-vscode, llm.nvim) and Tabby's `openai/completion`
  model backend call these.
- llama.cpp's `POST /infill` (`input_prefix`, `input_suffix`, `n_predict`, ...) and `POST /completion`
  (`prompt`, `n_predict`, ...), answered as llama.cpp does (`content`, `stop_type`).
- `GET /health`: {"status": "ok"} with what was served.

The model loads once, at start-up. Generation runs in one worker thread, one request at a time (on a
CPU, two at once would each take about twice as long); requests wait in a queue of at most
`queue_size` and one beyond it gets a 503. A client that goes away stops its generation at the
next token, streamed or not.

Each request's language: its `language` field (one of the model's), else the extension of its
`filename` (by params.yaml's languages), else the model's first language. Unless a request says
otherwise, generation is what the evaluate stage measured the model with (params.generation_settings:
greedy, evaluate.max_new_tokens, its loop guard) and stops at a blank line; a request's `stop` strings
(at most 4, of at most 256 characters) replace that stop. A prompt laid out as
`<fim_prefix>P<fim_suffix>S<fim_middle>` (Tabby and llm-ls build it themselves) is the request with
prompt P and suffix S; any other special-token text in a prompt is its characters (Completer.encode).

The confidence gate (autocoder.gate) hides what an editor should not show: below the threshold
fitted with the registered model (or `--min-confidence`), too short, repeating the line above or the
text after the cursor; the answer then has empty text and says why in `gated` (next to
`confidence`), so a client can tell "nothing confident" from "nothing". The gate decides on the
whole completion, so while it is on a streamed answer comes in one event at its end, with the text
and `gated` of the unstreamed answer (`--no-gate` streams token by token).

Limits, so that no request can take the server from the others: a body over 1 MB is refused (413)
before it is parsed; prompt and suffix together at most 100,000 characters; temperature in [0, 2].
A bad request gets a 400 with OpenAI's error shape, {"error": {"message", "type", "param", "code"}},
`param` naming the top-level field; the server keeps serving, and /openapi.json documents these
answers. `--host` other than the loopback prints a warning; `--api-key` (or $AUTOCODER_API_KEY)
makes every route but /health require `Authorization: Bearer KEY`, as OpenAI's clients send it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from autocoder.complete import MAX_TEMPERATURE, Completer, Completion, cut_at
from autocoder.errors import UserError
from autocoder.format import BLANK_LINE, SPELLED_PSM, max_new_tokens_limit
from autocoder.params import Params, generation_settings
from autocoder.serve.jobs import Gate, Job, Worker, language

MAX_PROMPT_CHARS = 100_000  # of prompt + suffix: far more than the model's context ever sees
# A body this large is refused (413) before it is read whole or parsed: room for MAX_PROMPT_CHARS
# characters even when JSON spells each one as a 6-byte "\uXXXX" escape.
MAX_BODY_BYTES = 1_000_000
MAX_STOPS = 4  # as OpenAI allows
MAX_STOP_CHARS = 256  # each; a stop is matched against the text's tail after every token
MAX_CHOICES = 8
API_KEY_VARIABLE = "AUTOCODER_API_KEY"
OPEN_PATHS = {"/health"}  # answered without the API key, as llama.cpp's server answers /health


class ApiError(Exception):
    """A request the server refuses: its status, message and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class _Common(BaseModel):
    """What every completion request may carry besides its protocol's fields."""

    language: str | None = None  # one of the model's languages
    filename: str | None = None  # or the file being edited, whose extension names the language


class OpenAIRequest(_Common):
    # OpenAI rejects an argument it does not know; so does this server.
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[str] = ""
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    # greedy unless asked: the model was evaluated so
    temperature: float = Field(0.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    stream: bool = False
    # Sent by OpenAI clients (Continue sends the penalties); accepted and not used.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    user: str | None = None
    seed: int | None = None
    stream_options: dict | None = None


class LlamaCppRequest(_Common):
    # llama.cpp ignores fields it does not use (sampling options this server does not have).
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""  # /completion: the text to continue; /infill: text appended to input_prefix
    input_prefix: str = ""
    input_suffix: str = ""
    n_predict: int = Field(-1, ge=-1)  # -1: the server's default
    temperature: float = Field(0.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    stream: bool = False


class Server:
    """The loaded model, its worker thread and its queue; `app` is the FastAPI application."""

    def __init__(
        self,
        completer: Completer,
        params: Params | None,
        model_name: str,
        queue_size: int,
        gated: bool = True,
        min_confidence: float | None = None,
        api_key: str | None = None,
        cache_slots: int = 0,
    ):
        self.completer, self.params, self.model_name = completer, params, model_name
        self.api_key = api_key
        self.gate = Gate(completer, gated, min_confidence)
        self.defaults = generation_settings(params.evaluate if params else None)
        self.queue_size = queue_size
        self.worker = Worker(completer, cache_slots)
        self.waiting = 0  # requests queued or generating (touched only on the event loop)
        self.counts: Counter = Counter()
        self.app = self._build_app()

    # ---- request -> job -----------------------------------------------------------------------------
    def language(self, req: _Common) -> str:
        if req.language is None:
            return language(self.completer, self.params, req.filename)
        if req.language not in self.completer.languages:
            known = ", ".join(self.completer.languages)
            raise ApiError(400, f"language {req.language!r}: the model knows {known}", "language")
        return req.language

    def job(self, req: _Common, prefix: str, suffix: str | None, max_tokens: int | None, stop, **sampling) -> Job:
        if suffix is None and self.completer.can_infill and (spelled := SPELLED_PSM.fullmatch(prefix)):
            # Tabby and llm-ls lay out the FIM prompt themselves: the same request as prompt + suffix
            prefix, suffix = spelled[1], spelled[2]
        if len(prefix) + len(suffix or "") > MAX_PROMPT_CHARS:
            raise ApiError(400, f"prompt and suffix: more than {MAX_PROMPT_CHARS} characters", "prompt")
        if suffix is not None and not self.completer.can_infill:
            raise ApiError(400, f"suffix: model {self.model_name} has no fill-in-the-middle tokens", "suffix")
        limit = max_new_tokens_limit(self.completer.config.max_position_embeddings)
        new_tokens = self.defaults["max_new_tokens"] if max_tokens is None else max_tokens
        if new_tokens > limit:
            raise ApiError(400, f"max_tokens: {new_tokens} is more than this model's limit of {limit}", "max_tokens")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ApiError(400, f"stop: at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters", "stop")
        if sampling.get("num", 1) > 1 and sampling.get("temperature", 0.0) == 0:
            raise ApiError(400, "n: more than one choice needs a temperature above 0 (greedy gives one)", "n")
        pattern = re.compile("|".join(map(re.escape, stops))) if stops else BLANK_LINE
        settings = {**self.defaults, "max_new_tokens": new_tokens, **sampling}
        return Job.of(self.language(req), prefix, suffix, pattern, settings, stops)

    # ---- running a job ----------------------------------------------------------------------------
    def start(self, job: Job) -> asyncio.Future:
        """Queue the job for the worker thread; it leaves the queue count when it has ended."""
        future = self.worker.start(job)
        future.add_done_callback(self._ended)
        return future

    def _ended(self, future: asyncio.Future) -> None:
        self.waiting -= 1
        failed = future.cancelled() or future.exception() is not None
        if failed or any(c.stop == "cancelled" for c in future.result()):
            self.counts["cancelled" if not failed else "failed"] += 1
        else:
            self.counts["served"] += 1

    async def run(self, job: Job, request: Request) -> list[Completion]:
        """Generate in the worker thread; cancel if the client disconnects while it waits or runs."""
        future = self.start(job)
        watcher = asyncio.ensure_future(_cancel_when_gone(request, job))
        try:
            return await future
        finally:
            watcher.cancel()

    def admit(self) -> None:
        if self.waiting >= self.queue_size:
            self.counts["busy"] += 1
            raise ApiError(503, f"busy: {self.waiting} requests are queued; retry later", kind="server_busy")
        self.waiting += 1

    def start_streamed(self, job: Job) -> tuple[asyncio.Future, asyncio.Queue]:
        """Start the job; after every token, each choice's settled text (_settled, matched in the
        worker thread: never on the event loop) goes to the returned queue. With the gate on there is
        nothing to send before the end (see stream), so nothing is matched either."""
        loop, updates = asyncio.get_running_loop(), asyncio.Queue()
        if not self.gate.on:
            stop, stops = job.options["stop"], job.stops

            def settle(texts: list[str]) -> None:  # in the worker thread
                loop.call_soon_threadsafe(updates.put_nowait, [_settled(text, stop, stops) for text in texts])

            job.on_texts = settle
        return self.start(job), updates

    async def stream(self, job: Job, future, updates, request: Request, chunks) -> AsyncIterator[str]:
        """Server-sent events: `chunks(deltas, completions)` makes the events' data from each choice's
        new settled text (and, at the end, the completions); the last event is data: [DONE].

        With the gate on, the gate decides on the whole completion (its mean log-probability), so the
        text is held until generation ends; then one event brings all of it, or nothing with `gated`
        saying why: the same text and `gated` as the unstreamed answer."""
        sent = [""] * job.options.get("num", 1)
        watcher = asyncio.ensure_future(_cancel_when_gone(request, job))
        future.add_done_callback(lambda _: updates.put_nowait(None))  # after the job's last texts
        try:
            while (settled := await updates.get()) is not None:
                deltas = [text[len(s) :] if text.startswith(s) else "" for text, s in zip(settled, sent)]
                sent = [s + delta for s, delta in zip(sent, deltas)]
                if any(deltas):
                    for data in chunks(deltas, None):
                        yield f"data: {json.dumps(data)}\n\n"
            try:
                completions = future.result()
            except UserError as e:  # the Completer's own checks: the status line has gone, so an event says it
                yield f"data: {json.dumps(_error_body(str(e), None))}\n\ndata: [DONE]\n\n"
                return
            rest = [c.text[len(s) :] if c.text.startswith(s) else "" for c, s in zip(completions, sent)]
            for data in chunks(rest, completions):
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away (the response is closed): stop generating
            job.cancel()
            watcher.cancel()

    # ---- the protocols ----------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        def authorize(request: Request) -> None:  # every route's dependency
            if self.api_key is None or request.url.path in OPEN_PATHS:
                return
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", kind="invalid_api_key")

        app = FastAPI(
            title="autocoder",
            docs_url=None,
            redoc_url=None,
            max_body_size=MAX_BODY_BYTES,
            dependencies=[Depends(authorize)],
        )
        app.openapi = lambda: _openapi(app)

        @app.exception_handler(ApiError)
        async def api_error(_, e: ApiError):
            return _error(e.status, e.message, e.param, e.kind)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_, e: StarletteHTTPException):  # 404, 405, 413 (MAX_BODY_BYTES): OpenAI's shape too
            kind = "request_too_large" if e.status_code == 413 else "invalid_request_error"
            # a 400 here: the body did not parse (not UTF-8, nested deeper than the parser goes)
            message = f"the body is not valid UTF-8 JSON ({e.detail})" if e.status_code == 400 else str(e.detail)
            return _error(e.status_code, message, None, kind)

        @app.exception_handler(RequestValidationError)
        async def invalid(_, e: RequestValidationError):
            first = e.errors()[0]
            if first.get("type") == "json_invalid":
                return _error(400, f"the body is not valid JSON ({first.get('msg')})", None)
            # OpenAI's `param` is the top-level field; pydantic's location goes on into union members
            # ("prompt.str") and list items
            loc = [part for part in first.get("loc", ()) if part != "body"]
            param = str(loc[0]) if loc else None
            message = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid")
            return _error(400, f"{param}: {message}" if param else message, param)

        @app.get("/health")
        async def health():
            return {"status": "ok", "model": self.model_name, "queued": self.waiting, **self.counts}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "autocoder"}]}

        @app.post("/v1/completions")
        async def completions(req: OpenAIRequest, request: Request):
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            if len(prompts) != 1:
                raise ApiError(400, "prompt: one prompt per request (a list of one string at most)", "prompt")
            sampling = {"temperature": req.temperature, "top_p": req.top_p, "num": req.n}
            job = self.job(req, prompts[0], req.suffix, req.max_tokens, req.stop, **sampling)
            return await self._answer(job, request, req.stream, _OpenAIShape(self, req, job))

        async def llama_cpp(req: LlamaCppRequest, request: Request, infill: bool):
            prefix = req.input_prefix + req.prompt if infill else req.prompt
            max_tokens = None if req.n_predict == -1 else req.n_predict
            if max_tokens == 0:
                raise ApiError(400, "n_predict: 0 generates nothing", "n_predict")
            sampling = {"temperature": req.temperature, "top_p": req.top_p}
            job = self.job(req, prefix, req.input_suffix if infill else None, max_tokens, req.stop, **sampling)
            return await self._answer(job, request, req.stream, _LlamaCppShape(self, job, prefix))

        @app.post("/infill")
        async def infill(req: LlamaCppRequest, request: Request):
            return await llama_cpp(req, request, infill=True)

        @app.post("/completion")
        async def completion(req: LlamaCppRequest, request: Request):
            return await llama_cpp(req, request, infill=False)

        return app

    async def _answer(self, job: Job, request: Request, stream: bool, shape):
        self.admit()
        if stream:
            events = self.stream(job, *self.start_streamed(job), request, shape.chunks)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            completions = await self.run(job, request)
        except UserError as e:  # the Completer's own checks
            raise ApiError(400, str(e)) from None
        if any(c.stop == "cancelled" for c in completions):
            return JSONResponse({"error": {"message": "cancelled: the client went away"}}, status_code=499)
        return shape.body(completions)


async def _cancel_when_gone(request: Request, job: Job) -> None:
    """Cancel the job when its client disconnects: once the body is read, the next message the ASGI
    server sends is http.disconnect. (Waiting costs nothing; polling is_disconnected for every queued
    request woke the event loop hundreds of times a second under load.)"""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def _settled(text: str, stop: re.Pattern, stops: list[str]) -> str:
    """The part of a completion's text so far that no later token can take back: cut at the stop,
    less a tail that could still become one (the start of a stop string, or a line break followed
    only by blanks for the default blank-line stop) or is half a character."""
    text = cut_at(stop, text)
    if stops:
        hold = max((k for s in stops for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), default=0)
    else:
        tail = re.search(r"\n[ \t]*\Z", text)
        hold = len(text) - tail.start() if tail else 0
    settled = text[: len(text) - hold]
    return settled.rstrip("\ufffd")


def _error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _error(status: int, message: str, param: str | None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(_error_body(message, param, kind), status_code=status)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the error answers this server gives (400 and the rest in OpenAI's
    error shape) in place of FastAPI's 422, which it never sends."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        error = {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        errors = {
            "400": "a field is missing, unknown or out of range (`param` names it), or the body is not JSON",
            "401": "missing or wrong API key (only with --api-key)",
            "413": f"a body over {MAX_BODY_BYTES} bytes",
            "503": "busy: the queue is full",
        }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                if path not in OPEN_PATHS and path != "/v1/models":
                    operation["responses"].update({code: {"description": why, **error} for code, why in errors.items()})
                    # with "stream": true, server-sent events ("data: {...}" lines, then "data: [DONE]")
                    operation["responses"]["200"]["content"]["text/event-stream"] = {"schema": {}}
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        nullable = {"param": ["string", "null"], "code": ["string", "null"]}  # as OpenAI sends them
        fields = {k: {"type": nullable.get(k, "string")} for k in ("message", "type", "param", "code")}
        message = {"type": "object", "properties": fields, "required": list(fields)}
        schemas["Error"] = {"type": "object", "properties": {"error": message}, "required": ["error"]}
        app.openapi_schema = schema
    return app.openapi_schema


class _OpenAIShape:
    """OpenAI's text_completion objects."""

    def __init__(self, server: Server, req: OpenAIRequest, job: Job):
        self.server, self.req, self.job = server, req, job
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def _object(self, choices: list[dict], usage: dict | None = None) -> dict:
        body = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.server.model_name,
            "choices": choices,
        }
        return {**body, "usage": usage} if usage is not None else body

    def _choice(self, i: int, text: str, completion: Completion | None) -> dict:
        if completion is None:  # a streamed piece
            return {"text": text, "index": i, "logprobs": None, "finish_reason": None}
        gated = self.server.gate.hidden(self.job, completion)
        logprobs = _logprobs(self.server.completer, completion) if self.req.logprobs is not None and not gated else None
        return {
            "text": "" if gated else text,
            "index": i,
            "logprobs": logprobs,
            "finish_reason": "length" if completion.stop == "length" else "stop",
            "confidence": completion.confidence,
            "gated": gated,  # why nothing is shown (autocoder.gate), or null
        }

    def body(self, completions: list[Completion]) -> dict:
        choices = [self._choice(i, c.text, c) for i, c in enumerate(completions)]
        return self._object(choices, _usage(self.server.completer, self.job, completions))

    def chunks(self, texts: list[str], completions: list[Completion] | None):
        for i, text in enumerate(texts):
            completion = completions[i] if completions else None
            if text or completion is not None:
                yield self._object([self._choice(i, text, completion)])


class _LlamaCppShape:
    """llama.cpp's /completion and /infill answers."""

    def __init__(self, server: Server, job: Job, prompt: str):
        self.server, self.job, self.prompt = server, job, prompt

    def _stop_type(self, completion: Completion) -> str:
        return {"eos": "eos", "length": "limit", "pattern": "word"}.get(completion.stop, "none")

    def _final(self, content: str, completion: Completion) -> dict:
        usage = _usage(self.server.completer, self.job, [completion])
        gated = self.server.gate.hidden(self.job, completion)
        return {
            "content": "" if gated else content,
            "confidence": completion.confidence,
            "gated": gated,
            "stop": True,
            "stop_type": self._stop_type(completion),
            "stopping_word": "",
            "tokens_predicted": usage["completion_tokens"],
            "tokens_evaluated": usage["prompt_tokens"],
            "tokens_cached": usage["prompt_tokens_details"]["cached_tokens"],
            "model": self.server.model_name,
        }

    def body(self, completions: list[Completion]) -> dict:
        return self._final(completions[0].text, completions[0])

    def chunks(self, texts: list[str], completions: list[Completion] | None):
        if completions is not None:
            yield self._final(texts[0], completions[0])
        elif texts[0]:
            yield {"content": texts[0], "stop": False}


def _usage(completer: Completer, job: Job, completions: list[Completion]) -> dict:
    """Token counts as OpenAI reports them; the prompt's as tokenized, before the context is cut to fit,
    and of those, the ones the prompt cache held (`prompt_tokens_details.cached_tokens`)."""
    encode = completer.encode
    prompt = len(encode(job.options["context"])) + len(encode(job.options["suffix"] or ""))
    generated = sum(c.n_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": job.cached_tokens},
    }


def _logprobs(completer: Completer, completion: Completion) -> dict:
    """OpenAI's legacy logprobs object for the tokens that make up the returned text (a healed token's
    text that the prompt already has left out of the first one)."""
    tokens, offsets, logprobs, at = [], [], [], -len(completion.healed)
    for token_id, logprob in zip(completion.token_ids, completion.token_logprobs):
        if at >= len(completion.text):
            break
        text = completer.tokenizer.decode([token_id], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        shown = text[max(0, -at) :][: max(0, len(completion.text) - max(at, 0))]
        if shown:
            tokens.append(shown)
            offsets.append(max(at, 0))
            logprobs.append(logprob)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def serve_command(args) -> None:
    """`autocoder serve`: load the model once, then answer on --host:--port until interrupted."""
    import uvicorn

    from autocoder.complete.load import load_completer, params_for, quiet_model_loading

    quiet_model_loading()
    if args.queue_size < 1:
        raise UserError(f"--queue-size: {args.queue_size} must be at least 1")
    if args.cache_slots < 0:
        raise UserError(f"--cache-slots: {args.cache_slots} must be 0 (no prompt cache) or more")
    params = params_for(args)
    completer = load_completer(args.model, params)
    name = args.model or (f"models:/{params.evaluate.registered_model_name}@champion" if params else "autocoder")
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    if not _is_loopback(args.host):
        protection = "the API key is required" if api_key else f"no API key (--api-key or {API_KEY_VARIABLE})"
        print(
            f"autocoder serve: warning: listening on {args.host}, not the loopback: any machine that can reach "
            f"this port can use the model, and {protection}; the traffic is not encrypted",
            file=sys.stderr,
            flush=True,
        )
    server = Server(
        completer, params, name, args.queue_size, not args.no_gate, args.min_confidence, api_key, args.cache_slots
    )
    print(
        f"autocoder serve: {name} on http://{args.host}:{args.port} (OpenAI /v1/completions, llama.cpp "
        "/infill and /completion)",
        flush=True,
    )
    uvicorn.run(server.app, host=args.host, port=args.port, log_level="warning")
