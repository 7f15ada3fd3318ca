"""`autocoder lsp` as a real process on stdio, spoken to by real language server clients: Neovim's
own (headless, driven by a Lua script) and pygls' LanguageClient. The shipped base model answers
what is compared with the Completer's text; a tiny random model that never stops makes the
generations that get cancelled."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient
from transformers import GPT2Config, GPT2LMHeadModel

from autocoder import gate
from autocoder.complete import Completer, Completion
from autocoder.params import generation_settings
from helpers import ROOT, VENV_BIN, base_params, kill_processes_in, profile
from services import require

pytestmark = pytest.mark.slow  # real server processes: not in `make test-fast`

BASE = ROOT / "models/autocoder-base"
MAX_NEW_TOKENS = 16  # the servers' --max-new-tokens: short generations keep the tests fast
CURSOR = "█"  # where the cursor is in the documents below
PYTHON = "def total_of(items):\n    total = 0\n    for item in items:\n        total += it█\n    return total\n"
JAVA = "public class Main {\n    public static void main(String[] args) {\n        System.out.print█\n    }\n}\n"
# One torch thread, in the servers and (the one_thread fixture) here: on a busy 2-core machine two
# threads wait for each other at every operation (a 16-token completion: 3 s instead of 0.1 s), and
# the texts compared are computed alike.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
AUTOCODER = str(VENV_BIN / "autocoder")

# Neovim 0.7's API: start the client, attach it to each file (didOpen, languageId = the filetype
# detected from the extension), put the cursor there and ask for completions as an editor does.
NEOVIM_SCRIPT = r"""
local config = vim.fn.json_decode(table.concat(vim.fn.readfile(vim.env.AUTOCODER_TEST_CONFIG), "\n"))
vim.o.virtualedit = "onemore"  -- the cursor after the line's last character, where typing leaves it
local function run()
  local id = vim.lsp.start_client({ name = "autocoder", cmd = config.cmd, root_dir = config.root })
  local client = vim.lsp.get_client_by_id(id)
  local received = {}
  for _, file in ipairs(config.files) do
    vim.cmd("edit " .. vim.fn.fnameescape(file.path))
    vim.lsp.buf_attach_client(0, id)
    assert(vim.wait(120000, function() return client.initialized end, 50), "the server did not initialize")
    vim.api.nvim_win_set_cursor(0, { file.line + 1, file.col })
    local params = vim.lsp.util.make_position_params()
    local answers = vim.lsp.buf_request_sync(0, "textDocument/completion", params, 120000)
    table.insert(received, { filetype = vim.bo.filetype, position = params.position, answer = answers and answers[id] })
  end
  return received
end
local ok, received = pcall(run)
vim.fn.writefile({ vim.fn.json_encode(ok and { received = received } or { error = tostring(received) }) }, config.out)
vim.cmd("qa!")
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with the shipped base's params (profiles/autocoder-base.yaml: the languages' extensions
    and the generation settings that base is evaluated with), where the servers run."""
    folder = tmp_path_factory.mktemp("lsp")
    base_params(folder)
    yield folder
    kill_processes_in(folder)  # a server a failed test left running


@pytest.fixture(scope="module")
def completer():
    return Completer.from_pretrained(BASE)


def _expected(completer: Completer, lang: str, prefix: str, suffix: str) -> Completion:
    """What the server should answer: the Completer's completion with the evaluated settings (the
    suffix only when there is text after the cursor)."""
    settings = {**generation_settings(profile("autocoder-base").evaluate), "max_new_tokens": MAX_NEW_TOKENS}
    [completion] = completer.complete(lang, prefix, suffix=suffix if suffix.strip() else None, **settings)
    return completion


def _position(prefix: str) -> tuple[int, int]:
    """The cursor's line and (ASCII text: character = byte) column after `prefix`."""
    return prefix.count("\n"), len(prefix.split("\n")[-1])


def test_neovim_gets_the_completion_at_the_cursor(project, completer, tmp_path):
    nvim = require("nvim", "neovim", [shutil.which("nvim")])  # skips (fails in CI) without it
    files, docs = [], {"python": ("total.py", PYTHON), "java": ("Main.java", JAVA)}
    for name, doc in docs.values():
        prefix, suffix = doc.split(CURSOR)
        (tmp_path / name).write_text(prefix + suffix)
        line, col = _position(prefix)
        files.append({"path": str(tmp_path / name), "line": line, "col": col})
    config = {
        "cmd": [AUTOCODER, "lsp", "--model", str(BASE), "--max-new-tokens", str(MAX_NEW_TOKENS)],
        "root": str(project),
        "files": files,
        "out": str(tmp_path / "received.json"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "complete.lua").write_text(NEOVIM_SCRIPT)
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-c", f"luafile {tmp_path / 'complete.lua'}"],
        cwd=project,  # the server's too: params.yaml is there
        env={**ENV, "AUTOCODER_TEST_CONFIG": str(tmp_path / "config.json")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (tmp_path / "received.json").exists(), run.stderr
    received = json.loads((tmp_path / "received.json").read_text())
    assert "error" not in received, received

    for (lang, (_, doc)), got in zip(docs.items(), received["received"]):
        prefix, suffix = doc.split(CURSOR)
        line, col = _position(prefix)
        assert got["filetype"] == lang and got["position"] == {"line": line, "character": col}
        expected = _expected(completer, lang, prefix, suffix)
        assert gate.hidden(expected.text, expected.confidence, None, prefix, suffix) is None  # the gate shows it
        result = got["answer"]["result"]
        [item] = result["items"]
        typed = re.search(r"\w*\Z", prefix).group()  # "it", "print": the identifier typed so far
        assert typed and item["textEdit"]["newText"] == typed + expected.text
        assert item["textEdit"]["range"] == {
            "start": {"line": line, "character": col - len(typed)},
            "end": {"line": line, "character": col},
        }
        assert item["filterText"] == item["textEdit"]["newText"] and item["label"].startswith(typed)
        assert item["insertTextFormat"] == types.InsertTextFormat.PlainText and "autocoder" in item["detail"]
        assert result["isIncomplete"] is False


async def _start(cwd: Path, *args: str) -> tuple[LanguageClient, types.InitializeResult]:
    """pygls' client, initialized with an `autocoder lsp` process it started."""
    client = LanguageClient("autocoder-tests", "1")
    await client.start_io(AUTOCODER, "lsp", *args, cwd=cwd, env=ENV)
    params = types.InitializeParams(capabilities=types.ClientCapabilities(), root_uri=cwd.as_uri())
    result = await asyncio.wait_for(client.initialize_async(params), 180)
    client.initialized(types.InitializedParams())
    return client, result


async def _stop(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await asyncio.wait_for(client.stop(), 60)


def _open(client: LanguageClient, path: Path, language_id: str, doc: str) -> tuple[str, types.Position]:
    """Open `doc` (its CURSOR taken out) as `path`; its URI and the cursor's position."""
    prefix, suffix = doc.split(CURSOR)
    uri = path.as_uri()
    item = types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=prefix + suffix)
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=item))
    return uri, types.Position(*_position(prefix))


def test_pygls_client_inline_completion_language_and_gate(project, completer):
    async def session() -> None:
        client, initialized = await _start(project, "--model", str(BASE), "--max-new-tokens", str(MAX_NEW_TOKENS))
        try:
            capabilities = initialized.capabilities
            assert capabilities.completion_provider is not None and capabilities.inline_completion_provider is not None

            # inlineCompletion: the completion as the text to insert at the cursor
            doc = "import os\n\n\ndef list_files(path):\n    return os.█\n"
            uri, at = _open(client, project / "files.py", "python", doc)
            context = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
            inline = await client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri), position=at, context=context
                )
            )
            [item] = inline.items
            assert item.insert_text == _expected(completer, "python", *doc.split(CURSOR)).text
            assert item.range == types.Range(start=at, end=at)

            # a languageId the model does not know: the language of the file's extension
            doc = "public class Add {\n    public static int add(int a, int b) {\n        return a█\n"
            uri, at = _open(client, project / "Add.java", "plaintext", doc)
            answer = await client.text_document_completion_async(
                types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=at)
            )
            [item] = answer.items
            as_java, as_python = (_expected(completer, lang, *doc.split(CURSOR)).text for lang in ("java", "python"))
            assert item.text_edit.new_text == "a" + as_java and as_java != as_python

            # the gate hides a completion too short to show ("1"): an empty list, to be asked again
            doc = "def total_of(items):\n    total = 0\n    for item in items:\n        total += █\n"
            expected = _expected(completer, "python", *doc.split(CURSOR))
            assert gate.hidden(expected.text, expected.confidence, None, *doc.split(CURSOR)) == "too_short"
            uri, at = _open(client, project / "total.py", "python", doc)
            answer = await client.text_document_completion_async(
                types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=at)
            )
            assert len(answer.items) == 0 and answer.is_incomplete is True
        finally:
            await _stop(client)

    asyncio.run(session())


def test_a_newer_request_or_an_edit_cancels_the_generation(project, tiny_model_dir):
    """A tiny random model never meets a blank line: each generation would run all its 128 tokens."""

    async def session() -> None:
        client, _ = await _start(project, "--model", str(tiny_model_dir), "--max-new-tokens", "128", "--no-gate")
        try:
            uri, at = _open(client, project / "f.py", "python", "def f(x):\n█")
            document = types.TextDocumentIdentifier(uri)
            first = asyncio.wrap_future(client.text_document_completion(types.CompletionParams(document, at)))
            # typing goes on: the edit comes before the first answer can, then the next request
            change = types.TextDocumentContentChangeWholeDocument(text="def f(x):\n    ")
            document_now = types.VersionedTextDocumentIdentifier(version=2, uri=uri)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(text_document=document_now, content_changes=[change])
            )
            at = types.Position(1, 4)
            second = asyncio.wrap_future(client.text_document_completion(types.CompletionParams(document, at)))
            with pytest.raises(JsonRpcException) as stale:
                await first
            assert stale.value.code == types.LSPErrorCodes.ContentModified
            [item] = (await second).items
            assert item.text_edit.range.end == at and item.text_edit.new_text.strip()

            # the client cancels: $/cancelRequest
            third = client.protocol.send_request_async(
                types.TEXT_DOCUMENT_COMPLETION, types.CompletionParams(document, at), msg_id="third"
            )
            client.cancel_request(types.CancelParams(id="third"))
            with pytest.raises(JsonRpcException) as cancelled:
                await third
            assert cancelled.value.code == types.LSPErrorCodes.RequestCancelled
        finally:
            await _stop(client)

    asyncio.run(session())


def test_a_model_that_does_not_load_is_one_line_on_stderr(project):
    proc = subprocess.run(
        [AUTOCODER, "lsp", "--model", "/nonexistent"],
        cwd=project,
        env=ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("autocoder lsp: ") and "/nonexistent" in line


def test_a_document_the_client_did_not_open_is_refused_not_read_from_disk(project, tiny_model_dir):
    """The server completes the editor's text, never a file: pygls' workspace would read an unopened
    file:// URI from disk (and so complete any file the server's user can read)."""
    on_disk = project / "on_disk.py"
    on_disk.write_text("def f(x):\n")

    async def session() -> None:
        client, _ = await _start(project, "--model", str(tiny_model_dir), "--max-new-tokens", "4", "--no-gate")
        try:
            document, at = types.TextDocumentIdentifier(on_disk.as_uri()), types.Position(1, 0)
            context = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
            for request in (
                client.text_document_completion_async(types.CompletionParams(document, at)),
                client.text_document_inline_completion_async(types.InlineCompletionParams(context, document, at)),
            ):
                with pytest.raises(JsonRpcException) as refused:
                    await request
                assert refused.value.code == types.ErrorCodes.InvalidParams
                assert on_disk.as_uri() in refused.value.message and "didOpen" in refused.value.message
        finally:
            await _stop(client)

    asyncio.run(session())


def test_an_error_reply_is_one_line_without_the_traceback(project, gpt2_tokenizer, tmp_path):
    """A model whose embeddings are smaller than its tokenizer (the control tokens' ids are past
    them) fails every generation: the reply says why in one line; the traceback, with the server's
    file paths, stays in its stderr."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=gpt2_tokenizer.eos_token_id + 1)
    model_dir = tmp_path / "short-embeddings"
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)

    async def session() -> bytes:
        client, _ = await _start(project, "--model", str(model_dir), "--max-new-tokens", "4", "--no-gate")
        try:
            uri, at = _open(client, project / "g.py", "python", "def g(x):\n█")
            with pytest.raises(JsonRpcException) as failed:
                await client.text_document_completion_async(
                    types.CompletionParams(types.TextDocumentIdentifier(uri), at)
                )
            error = failed.value
            assert error.code == types.ErrorCodes.InternalError
            assert error.message and "\n" not in error.message and error.data is None, (error.message, error.data)
        finally:
            await _stop(client)
        return await client._server.stderr.read()  # pygls' client starts the server with stderr piped

    stderr = asyncio.run(session()).decode()
    assert "Traceback (most recent call last)" in stderr and "IndexError" in stderr
