"""`autocoder serve` as a real process on 127.0.0.1 with the shipped base model, spoken to by the real
`openai` client and by plain HTTP as llama.cpp's clients speak it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx  # what openai 3 and MLflow use (the httpx API)
import openai
import pytest

from autocoder.complete import Completer
from helpers import ROOT, VENV_BIN, base_params

pytestmark = pytest.mark.slow  # real server processes: not in `make test-fast`

BASE = ROOT / "models/autocoder-base"
PREFIX = "def total_of(items):\n    total = 0\n    for item in items:\n"
SUFFIX = "\n    return total\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`autocoder serve --model BASE` in its own process group, up once /health answers."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(VENV_BIN / "autocoder"), "serve", "--model", str(BASE), "--port", str(self.port), *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:  # not listening yet
                pass
            assert time.monotonic() < deadline, "the server did not come up in time"
            time.sleep(0.3)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # In a folder with the shipped base's params (profiles/autocoder-base.yaml): its languages'
    # extensions and the generation settings that base is evaluated with (repetition penalty 1.1).
    folder = tmp_path_factory.mktemp("serve")
    base_params(folder)
    served = Served(folder, "--no-gate")  # the texts are compared with the Completer's
    yield served
    served.stop()


@pytest.fixture(scope="module")
def completer():
    return Completer.from_pretrained(BASE)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_fills_in_the_middle_as_the_completer_does(client, completer):
    answer = client.completions.create(model="autocoder", prompt=PREFIX, suffix=SUFFIX, max_tokens=16)
    [choice] = answer.choices
    [expected] = completer.complete("python", PREFIX, suffix=SUFFIX, max_new_tokens=16, repetition_penalty=1.1)
    assert choice.text == expected.text and choice.text.strip()
    assert choice.finish_reason == ("length" if expected.stop == "length" else "stop")
    assert answer.object == "text_completion" and answer.usage.completion_tokens == expected.n_tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    [left_only] = completer.complete("python", PREFIX, max_new_tokens=16, repetition_penalty=1.1)
    assert left_only.text != expected.text  # the suffix reached the prompt


def test_stop_strings_logprobs_and_several_choices(client):
    answer = client.completions.create(
        model="autocoder", prompt="def add(a, b):\n    return", max_tokens=24, stop=["\n"], logprobs=1
    )
    [choice] = answer.choices
    assert "\n" not in choice.text and choice.finish_reason == "stop"
    assert "".join(choice.logprobs.tokens) == choice.text and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    sampled = client.completions.create(model="autocoder", prompt="import ", max_tokens=4, n=3, temperature=0.8)
    assert sorted(c.index for c in sampled.choices) == [0, 1, 2]


def test_streamed_text_is_the_unstreamed_text(client):
    kwargs = {"model": "autocoder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 24}
    whole = client.completions.create(**kwargs).choices[0]
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert len(chunks) > 1 and "".join(c.choices[0].text for c in chunks) == whole.text
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_llama_cpp_infill_and_completion(server, completer):
    answer = httpx.post(
        f"{server.url}/infill",
        json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16, "cache_prompt": True},
        timeout=60,
    ).json()
    [expected] = completer.complete("python", PREFIX, suffix=SUFFIX, max_new_tokens=16, repetition_penalty=1.1)
    assert answer["content"] == expected.text and answer["stop"] is True
    assert answer["stop_type"] == {"eos": "eos", "length": "limit", "pattern": "word"}[expected.stop]
    assert answer["tokens_predicted"] == expected.n_tokens
    java_prompt = "public int add(int a, int b) {\n"
    by_name = httpx.post(
        f"{server.url}/completion", json={"prompt": java_prompt, "n_predict": 12, "filename": "Add.java"}, timeout=60
    ).json()
    [as_java] = completer.complete("java", java_prompt, max_new_tokens=12, repetition_penalty=1.1)
    [as_python] = completer.complete("python", java_prompt, max_new_tokens=12, repetition_penalty=1.1)
    assert by_name["content"] == as_java.text != as_python.text  # the file's extension named the language


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": "def f", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"prompt": "def f", "max_tokens": 100_000}, "max_tokens"),
        ("/v1/completions", {"prompt": "def f", "language": "cobol"}, "language"),
        ("/v1/completions", {"prompt": "x" * 100_001}, "prompt"),
        ("/v1/completions", {"prompt": "def f", "frobnicate": True}, "frobnicate"),
        ("/v1/completions", {"prompt": "def f", "n": 2}, "n"),
        ("/v1/completions", {"prompt": "def f", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/infill", {"input_prefix": "def f", "n_predict": 0}, "n_predict"),
    ],
)
def test_bad_requests_get_a_400_naming_the_field(server, path, body, param):
    response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"] and error["type"] == "invalid_request_error"


def test_bad_json_is_a_400_and_the_server_keeps_serving(server, client):
    response = httpx.post(
        f"{server.url}/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    assert client.completions.create(model="autocoder", prompt="def f", max_tokens=2).choices[0].text is not None
    assert httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["object"] == "model"


def test_concurrent_clients_are_all_answered(server):
    results: list[int] = []

    def ask(i: int) -> None:
        body = {"prompt": f"def f{i}(x):\n    return", "max_tokens": 8}
        results.append(httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8


def test_a_client_that_goes_away_stops_its_generation(server):
    before = server.health().get("cancelled", 0)
    body = {"prompt": "#", "max_tokens": 120, "stream": True, "stop": ["\x00"]}  # a stop it will not meet
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        next(response.iter_lines())  # the first event: generation is under way; then hang up
    deadline = time.monotonic() + 30
    while server.health().get("cancelled", 0) == before:
        assert time.monotonic() < deadline, server.health()
        time.sleep(0.1)
    assert server.health()["queued"] == 0


def test_the_gate_hides_what_is_below_its_threshold_and_says_why(tmp_path, completer):
    served = Served(tmp_path, "--min-confidence", "-0.0001")  # above any mean log-probability but a certain one's
    try:
        answer = httpx.post(f"{served.url}/v1/completions", json={"prompt": PREFIX, "max_tokens": 8}, timeout=60).json()
        [choice] = answer["choices"]
        assert choice["text"] == "" and choice["gated"] == "low_confidence" and choice["confidence"] < -0.0001
        infill = httpx.post(
            f"{served.url}/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8}, timeout=60
        ).json()
        assert infill["content"] == "" and infill["gated"] == "low_confidence"
        streamed = httpx.post(
            f"{served.url}/v1/completions", json={"prompt": PREFIX, "max_tokens": 8, "stream": True}, timeout=60
        ).text
        events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
        assert len(events) == 1 and events[0]["choices"][0]["gated"] == "low_confidence"
    finally:
        served.stop()


def test_a_full_queue_answers_503_and_the_rest_are_served(tmp_path):
    served = Served(tmp_path, "--queue-size", "1")
    try:
        codes: list[int] = []

        def ask() -> None:
            body = {"prompt": "def f(x):\n    return", "max_tokens": 48, "stop": ["\x00"]}
            codes.append(httpx.post(f"{served.url}/v1/completions", json=body, timeout=120).status_code)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        assert served.health()["busy"] == codes.count(503)
    finally:
        served.stop()


def test_serve_binds_only_the_loopback_by_default():
    help_text = subprocess.run(
        [sys.executable, "-m", "autocoder.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "(default: 127.0.0.1)" in " ".join(help_text.split())


def test_a_prompt_with_the_fim_tokens_spelled_out_infills(client, completer):
    """Tabby and llm-ls build the FIM prompt themselves and send it as `prompt`: the same request
    as `prompt` + `suffix`."""
    spelled = f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    answer = client.completions.create(model="autocoder", prompt=spelled, max_tokens=16)
    [expected] = completer.complete("python", PREFIX, suffix=SUFFIX, max_new_tokens=16, repetition_penalty=1.1)
    assert answer.choices[0].text == expected.text


def test_special_token_text_in_a_prompt_is_text(client, completer):
    """A literal <|endoftext|> or <fim_prefix> typed in code is not the token: only the server places those."""
    prompt = 'EOS = "<|endoftext|>"\nFIM = "<fim_prefix>"\n'
    answer = client.completions.create(model="autocoder", prompt=prompt, max_tokens=8)
    [expected] = completer.complete("python", prompt, max_new_tokens=8, repetition_penalty=1.1)
    assert answer.choices[0].text == expected.text
    ids = completer.prompt_ids("python", prompt)
    specials = {completer.tokenizer.eos_token_id, *completer.fim_ids}
    assert not specials & set(ids) and answer.usage.prompt_tokens == len(ids) - 1  # less the control token


def _post_raw(server, path: str, body: bytes, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60, **kwargs
    )


def test_a_lone_surrogate_is_replaced_and_answered(server, completer):
    """JSON's \\ud800 is no character: it is read as U+FFFD (Completer.encode), streamed or not."""
    [expected] = completer.complete("python", "def f\ufffd(", max_new_tokens=8, repetition_penalty=1.1)
    whole = _post_raw(server, "/v1/completions", b'{"prompt": "def f\\ud800(", "max_tokens": 8}')
    assert whole.status_code == 200 and whole.json()["choices"][0]["text"] == expected.text
    streamed = _post_raw(server, "/v1/completions", b'{"prompt": "def f\\ud800(", "max_tokens": 8, "stream": true}')
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == expected.text and streamed.text.endswith("[DONE]\n\n")
    infill = _post_raw(
        server, "/infill", b'{"input_prefix": "def f\\udfff(", "input_suffix": "x\\ud800", "n_predict": 4}'
    )
    assert infill.status_code == 200 and "content" in infill.json()


@pytest.mark.parametrize(
    "path, body",
    [
        ("/completion", b'{"prompt": "def f", "temperature": 1e308}'),
        ("/completion", b'{"prompt": "def f", "temperature": Infinity}'),
        ("/infill", b'{"input_prefix": "def f", "temperature": NaN}'),
        ("/v1/completions", b'{"prompt": "def f", "temperature": 2.5}'),
    ],
)
def test_temperatures_out_of_range_are_refused(server, path, body):
    response = _post_raw(server, path, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", response.text


def test_a_temperature_near_zero_samples_the_greedy_answer(client):
    kwargs = {"model": "autocoder", "prompt": PREFIX, "max_tokens": 8}
    greedy = client.completions.create(**kwargs).choices[0].text
    assert greedy and client.completions.create(**kwargs, temperature=1e-50).choices[0].text == greedy


def test_bodies_that_do_not_parse_get_openai_errors_not_fastapis(server):
    too_deep = b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for body in (too_deep, b'{"prompt": "\xff\xfe"}'):
        response = _post_raw(server, "/v1/completions", body)
        assert response.status_code == 400 and "detail" not in response.json(), response.text
        assert "JSON" in response.json()["error"]["message"]
    for prompt in (5, ["a", 5]):  # pydantic's location goes into the union ("prompt.str")
        error = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt}, timeout=30).json()["error"]
        assert error["param"] == "prompt", error
    assert httpx.get(f"{server.url}/nowhere", timeout=10).json()["error"]["message"] == "Not Found"


def test_the_openapi_spec_documents_the_errors_the_server_sends(server):
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    responses = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert "422" not in responses and {"400", "413", "503"} <= set(responses)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(server, client):
    from autocoder.serve.http import MAX_BODY_BYTES

    body = b'{"prompt": "def f", "user": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    response = _post_raw(server, "/v1/completions", body)
    assert response.status_code == 413, response.text
    assert client.completions.create(model="autocoder", prompt="def f", max_tokens=2).choices[0].text is not None


def test_a_long_or_fifth_stop_is_refused(server):
    from autocoder.serve.http import MAX_STOP_CHARS

    for stop in (["x" * (MAX_STOP_CHARS + 1)], ["a", "b", "c", "d", "e"], [""]):
        response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "def f", "stop": stop}, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["param"] == "stop", response.text
    fine = httpx.post(
        f"{server.url}/completion", json={"prompt": "def f", "stop": ["x" * MAX_STOP_CHARS] * 4}, timeout=60
    )
    assert fine.status_code == 200


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The gate on (the default: a model folder has no fitted threshold, so the filters only), an
    API key from the environment, every interface."""
    folder = tmp_path_factory.mktemp("guarded")
    base_params(folder)
    served = Served(folder, "--host", "0.0.0.0", env={"AUTOCODER_API_KEY": "s3cret"})
    yield served
    served.stop()


def test_a_gated_stream_is_the_unstreamed_answer(guarded):
    """Streaming with the gate on used to send an empty text with gated: null."""
    auth = {"Authorization": "Bearer s3cret"}
    for body in ({"prompt": "def add(a, b):\n", "max_tokens": 32}, {"prompt": "x", "max_tokens": 1}):
        whole = httpx.post(f"{guarded.url}/v1/completions", json=body, headers=auth, timeout=60).json()["choices"][0]
        streamed = httpx.post(
            f"{guarded.url}/v1/completions", json={**body, "stream": True}, headers=auth, timeout=60
        ).text
        events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
        assert len(events) == 1 and events[0]["choices"][0]["text"] == whole["text"]
        assert events[0]["choices"][0]["gated"] == whole["gated"]
    assert whole["gated"] == "too_short"  # the second: one token is too short to show
    infill = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16}
    whole = httpx.post(f"{guarded.url}/infill", json=infill, headers=auth, timeout=60).json()
    streamed = httpx.post(f"{guarded.url}/infill", json={**infill, "stream": True}, headers=auth, timeout=60).text
    events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(e["content"] for e in events) == whole["content"] and whole["content"]


def test_an_api_key_guards_every_route_but_health(guarded):
    assert "warning: listening on 0.0.0.0" in guarded.proc.stderr.readline()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = httpx.post(f"{guarded.url}/v1/completions", json={"prompt": "x"}, headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_api_key"
    assert httpx.get(f"{guarded.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{guarded.url}/health", timeout=10).status_code == 200
    client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="s3cret", max_retries=0, timeout=60)
    assert client.completions.create(model="autocoder", prompt="def f", max_tokens=2).choices


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_before_any_text_stops_its_generation(guarded, stream):
    """Unstreamed, or streamed with the gate on (nothing is sent before the end): the server learns
    of the hang-up from the connection, not from a write. The request waits behind others, so that it
    is still queued when its client hangs up."""
    auth = {"Authorization": "Bearer s3cret"}
    busy = {"prompt": "#", "max_tokens": 128, "stop": ["\x00"]}  # a stop it will not meet
    ahead = [
        threading.Thread(
            target=httpx.post,
            args=(f"{guarded.url}/v1/completions",),
            kwargs={"json": busy, "headers": auth, "timeout": 60},
        )
        for _ in range(4)
    ]
    before = guarded.health().get("cancelled", 0)
    for thread in ahead:
        thread.start()
    time.sleep(0.2)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{guarded.url}/v1/completions", json={**busy, "stream": stream}, headers=auth, timeout=0.3)
    for thread in ahead:
        thread.join()
    deadline = time.monotonic() + 30
    while guarded.health().get("cancelled", 0) == before:
        assert time.monotonic() < deadline, guarded.health()
        time.sleep(0.1)


def test_the_replay_benchmark_sends_what_an_editor_sends_and_the_cache_keeps_the_answers(server, completer):
    """benchmarks/replay.py's requests, as the server receives them: each answer is the Completer's
    own on that prompt and suffix (anchored, as the server's prompt cache prompts), and after the
    first keystroke the server reuses what it prefilled for the one before."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import replay
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = (ROOT / "src/autocoder/complete/cache.py").read_text()
    requests = replay.typing_requests([("python", text)], n_lines=1, seed=1)
    assert len(requests) >= 3 and all(r["prompt"] and r["target"] for r in requests)
    answers = [replay.ask(server.url, r) for r in requests]
    prompts = []  # the ids the server prompted with
    for request, answer in zip(requests, answers):
        [expected] = completer.complete(
            "python",
            request["prompt"],
            suffix=request["suffix"],
            stop=re.compile(re.escape("\n")),
            max_new_tokens=32,
            repetition_penalty=1.1,
            anchor=True,
        )
        prompts.append(completer.prepare("python", request["prompt"], 32, suffix=request["suffix"], anchor=True).ids)
        assert answer["text"] == expected.text
        assert answer["prompt"] == len(completer.encode(request["prompt"])) + len(completer.encode(request["suffix"]))
    # the window moves on when the client's cut crosses a line (a miss then); the suffix, after the
    # prefix in the PSM prompt, runs every time
    assert sum(a["cached"] for a in answers[1:]) > 0.5 * sum(len(ids) for ids in prompts[1:])
