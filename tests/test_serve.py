"""`mmpo serve`: the OpenAI-compatible server on a tiny random model (fast) and on the embedded model
driven by a real MT-bench judge pass (integration). All traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from mmpo.evaluation.judge_client import JudgeClient
from mmpo.models.chat import ChatModel
from mmpo.serving.server import make_server


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    """`tiny_model_dir` (conftest: a random 2-layer Llama, byte-level tokenizer, ChatML template) served
    in this process on a free port, with an API key."""
    chat = ChatModel.load(str(tiny_model_dir), device="cpu")
    server = make_server(chat, "127.0.0.1", 0, api_key="sekret", quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _call(url: str, body: dict | None = None, key: str | None = "sekret", raw: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_chat_completion_shape_usage_and_greedy_determinism(tiny_server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour {not a placeholder}."}]
    body = {"model": tiny_server.model_name, "messages": messages, "temperature": 0, "max_tokens": 7}
    status, first = _call(tiny_server.url + "/chat/completions", body)
    assert status == 200
    assert first["object"] == "chat.completion" and first["model"] == tiny_server.chat_model.name
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = first["usage"]
    # The prompt is the chat template's rendering; the server must count exactly those tokens.
    assert usage["prompt_tokens"] == len(tiny_server.chat_model.prompt_ids(messages))
    assert 0 <= usage["completion_tokens"] <= 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    _, second = _call(tiny_server.url + "/chat/completions", body)
    assert second["choices"][0]["message"]["content"] == choice["message"]["content"]  # greedy: same answer


def test_sampling_with_seed_is_reproducible_and_top_p_accepted(tiny_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "seed": 5}
    outs = [_call(tiny_server.url + "/chat/completions", body)[1]["choices"][0]["message"]["content"] for _ in range(2)]
    assert outs[0] == outs[1]


def test_models_endpoint_and_health(tiny_server):
    status, models = _call(tiny_server.url + "/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [tiny_server.chat_model.name]
    base = tiny_server.url.rsplit("/v1", 1)[0]
    status, health = _call(base + "/health", key=None)
    assert status == 200 and health["status"] == "ok"


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True, "logprobs": True}, 400, "logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, 400, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 129}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2, "stream": True}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_style_errors(tiny_server, body, status, param):
    got, payload = _call(tiny_server.url + "/chat/completions", body)
    assert got == status
    assert payload["error"]["param"] == param and payload["error"]["message"]


def test_unknown_model_name_is_a_404_and_the_served_name_or_an_alias_is_answered(tiny_model_dir):
    chat = ChatModel.load(str(tiny_model_dir), device="cpu")
    server = make_server(chat, "127.0.0.1", 0, quiet=True, name="served", aliases=("my-adapter",))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        status, payload = _call(server.url + "/chat/completions", {**body, "model": "gpt-4o"}, key=None)
        assert status == 404
        assert payload["error"]["code"] == "model_not_found" and payload["error"]["param"] == "model"
        assert "'gpt-4o'" in payload["error"]["message"] and "'served'" in payload["error"]["message"]
        for name in ("served", "my-adapter"):
            status, payload = _call(server.url + "/chat/completions", {**body, "model": name}, key=None)
            assert status == 200 and payload["model"] == "served"
        assert _call(server.url + "/chat/completions", body, key=None)[0] == 200  # no model field: the one served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_request_count_includes_every_answered_request(tiny_model_dir):
    chat = ChatModel.load(str(tiny_model_dir), device="cpu")
    server = make_server(chat, "127.0.0.1", 0, api_key="sekret", quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = server.url.rsplit("/v1", 1)[0]
        ok_body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        statuses = [
            _call(base + "/health", key=None)[0],
            _call(server.url + "/models")[0],
            _call(server.url + "/chat/completions", ok_body)[0],
            _call(server.url + "/chat/completions", ok_body)[0],
            _call(server.url + "/chat/completions", {"messages": []})[0],
            _call(server.url + "/chat/completions", ok_body, key="wrong")[0],
            _call(server.url + "/nowhere", ok_body)[0],
        ]
        assert statuses == [200, 200, 200, 200, 400, 401, 404]
        assert server.requests_served == 7 and server.requests_failed == 3
        assert server.request_summary() == "7 requests (4 ok, 3 errors)"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_auth_unknown_path_and_bad_json(tiny_server):
    ok_body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    assert _call(tiny_server.url + "/chat/completions", ok_body, key="wrong")[0] == 401
    assert _call(tiny_server.url + "/chat/completions", ok_body, key=None)[0] == 401
    assert _call(tiny_server.url + "/completions", ok_body)[0] == 404
    status, payload = _call(tiny_server.url + "/chat/completions", raw=b"{not json")
    assert status == 400 and "JSON" in payload["error"]["message"]


def test_prompt_longer_than_context_is_a_400(tiny_server):
    too_long = "x" * (tiny_server.chat_model.max_positions + 1)  # one token per byte
    status, payload = _call(tiny_server.url + "/chat/completions", {"messages": [{"role": "user", "content": too_long}]})
    assert status == 400 and "context" in payload["error"]["message"]


def test_max_tokens_over_the_context_is_a_400_and_no_limit_is_bounded(tiny_server):
    messages = [{"role": "user", "content": "hello"}]
    prompt = len(tiny_server.chat_model.prompt_ids(messages))
    context = tiny_server.chat_model.max_positions
    for key in ("max_tokens", "max_completion_tokens"):
        status, payload = _call(tiny_server.url + "/chat/completions", {"messages": messages, key: 100000})
        assert status == 400 and payload["error"]["param"] == key
        assert f"maximum context length is {context} tokens" in payload["error"]["message"]
        assert f"{prompt} in the messages, 100000 in the completion" in payload["error"]["message"]
    # a prompt that leaves exactly 3 tokens: 3 is allowed, 4 is not
    long = [{"role": "user", "content": "x" * (context - prompt - 3 + len("hello"))}]
    assert len(tiny_server.chat_model.prompt_ids(long)) == context - 3
    status, ok = _call(tiny_server.url + "/chat/completions", {"messages": long, "max_tokens": 3, "temperature": 0})
    assert status == 200 and ok["usage"]["total_tokens"] <= context
    assert _call(tiny_server.url + "/chat/completions", {"messages": long, "max_tokens": 4})[0] == 400


def _stream(url: str, body: dict, key: str = "sekret") -> tuple[int, str, list]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        ctype = response.headers.get("Content-Type")
        events = []
        for line in response.read().decode().split("\n\n"):
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return response.status, ctype, events


@pytest.mark.parametrize("stop", [None, ["a"], ["\u00e9t", "zz"]])
def test_streaming_chunks_join_to_the_plain_answer(tiny_server, stop):
    body = {"messages": [{"role": "user", "content": "Say something."}], "temperature": 0, "max_tokens": 40, "stop": stop}
    status, plain = _call(tiny_server.url + "/chat/completions", body)
    assert status == 200
    status, ctype, events = _stream(tiny_server.url + "/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and ctype == "text/event-stream"
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk, final = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]
    assert final["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"] and final["choices"][0]["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == plain["choices"][0]["message"]["content"]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2 or len(text) < 2


def test_logprobs_in_openai_shape(tiny_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 5, "logprobs": True, "top_logprobs": 4}
    status, payload = _call(tiny_server.url + "/chat/completions", body)
    assert status == 200
    content = payload["choices"][0]["logprobs"]["content"]
    assert len(content) == payload["usage"]["completion_tokens"]
    for position in content:
        top = position["top_logprobs"]
        assert len(top) == 4 and all(a["logprob"] >= b["logprob"] for a, b in zip(top, top[1:]))
        # greedy decoding picks the most likely token; its log-probability is the top one
        assert top[0]["token"] == position["token"] and top[0]["logprob"] == pytest.approx(position["logprob"])
        assert position["logprob"] <= 0 and math.exp(sum(math.exp(t["logprob"]) for t in top)) > 1


@pytest.fixture()
def impatient_server(tiny_model_dir):
    """The tiny model with a time limit that every generation passes after its first token."""
    chat = ChatModel.load(str(tiny_model_dir), device="cpu")
    server = make_server(chat, "127.0.0.1", 0, quiet=True, request_timeout=1e-6)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_request_time_limit_stops_generation(impatient_server):
    body = {"messages": [{"role": "user", "content": "go on"}], "temperature": 1.0, "seed": 1, "max_tokens": 900}
    for n in (1, 3):  # one answer, or n generated in one batch
        status, payload = _call(impatient_server.url + "/chat/completions", {**body, "n": n}, key=None)
        assert status == 504 and "time limit" in payload["error"]["message"]
    request = urllib.request.Request(impatient_server.url + "/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [e[len("data: "):] for e in response.read().decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    finals = [json.loads(e) for e in events[:-1]]
    assert finals[-2]["choices"][0]["finish_reason"] == "length" and "time limit" in finals[-1]["error"]["message"]


def test_generation_stops_when_the_client_disconnects(tiny_server):
    finished = []
    chat = tiny_server.chat_model
    original = chat.generate_n

    def recording_generate(**kwargs):
        completions = original(**kwargs)
        finished.extend(completions)
        return completions

    chat.generate_n = recording_generate
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "talk"}], "temperature": 1.0, "seed": 3,
                           "max_tokens": 900, "stop": ["\u0000never"]}).encode()
        host, port = tiny_server.server_address[:2]
        with socket.create_connection((host, port)) as conn:
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n"
                         b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for _ in range(600):  # bounded wait for the server to notice; not a timing assertion
            if finished:
                break
            time.sleep(0.05)
    finally:
        chat.generate_n = original
    assert finished and finished[0].finish_reason == "cancelled"
    assert finished[0].completion_tokens < 900


def test_judge_client_talks_to_the_server(tiny_server):
    client = JudgeClient(tiny_server.url, tiny_server.model_name, api_key="sekret", max_retries=0)
    text = client.complete([{"role": "user", "content": "Rate this."}], max_tokens=4)
    assert isinstance(text, str) and client.requests_sent == 1


# --- integration: `mmpo serve` on the embedded model, judged over HTTP -------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, deadline_s: float) -> None:
    """Poll /health until it answers, the process dies, or the deadline passes (bounded)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"mmpo serve exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mmpo serve not ready within {deadline_s} s")


@pytest.mark.integration
def test_serve_embedded_model_and_judge_mt_bench_over_http(tmp_path, mt_bench):
    from mmpo.cli.main import main
    from mmpo.evaluation.mtbench import load_questions

    files = mt_bench
    questions = {q.question_id: q for q in load_questions(files.questions)}
    # A humanities question (general prompts) and a reasoning one (reference-guided prompts), chosen as the
    # two with the shortest judge prompts: a 135M model on a shared CPU reads ~25 tokens/s.
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as f:
        for qid in (152, 104):
            assert qid in questions, f"MT-bench question {qid} is not in {files.questions}"
            turns = [f"My answer to part {k + 1}: it depends." for k in range(2)]
            f.write(json.dumps({"question_id": qid, "model_id": "written-by-test", "choices": [{"index": 0, "turns": turns}]}) + "\n")

    port = _free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmpo.cli.main", "serve", "--model", "embedded", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}/health", deadline_s=300)
            out = tmp_path / "scores.json"
            code = main([
                "eval", "mtbench", "judge", "--answers", str(answers), "--judge-url", f"http://127.0.0.1:{port}/v1",
                "--judge-model", "embedded", "--out", str(out), "--limit", "2", "--judge-max-tokens", "8",
                "--max-retries", "1", "--timeout", "240",
            ])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    assert code == 0
    report = json.loads(out.read_text())
    served = log_path.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert report["turns_total"] == 4
    assert report["parsed"] + report["missing"] == report["turns_total"]
    assert report["missing_failed"] == 0  # every turn got an answer from the server ...
    assert served == 4 and report["http_requests"] == 4  # ... over HTTP, one request per turn
    judgments = [json.loads(line) for line in (tmp_path / "scores.judgments.jsonl").read_text().splitlines()]
    assert {j["prompt_name"] for j in judgments} == {"single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"}

