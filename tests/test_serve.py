"""`mmpo serve`: the OpenAI-compatible server on a tiny random model (fast) and on the embedded model
driven by a real MT-bench judge pass (integration). All traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
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
from mmpo.serving.chat_model import ChatModel
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
    body = {"model": "anything", "messages": messages, "temperature": 0, "max_tokens": 7}
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
        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_style_errors(tiny_server, body, status, param):
    got, payload = _call(tiny_server.url + "/chat/completions", body)
    assert got == status
    assert payload["error"]["param"] == param and payload["error"]["message"]


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


def test_judge_client_talks_to_the_server(tiny_server):
    client = JudgeClient(tiny_server.url, "tiny", api_key="sekret", max_retries=0)
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
def test_serve_embedded_model_and_judge_mt_bench_over_http(tmp_path):
    from mmpo.cli.main import main
    from mmpo.evaluation.mtbench import load_questions, mt_bench_files
    from mmpo.errors import UserError

    try:
        files = mt_bench_files()
    except UserError as e:
        pytest.skip(str(e))
    questions = {q.question_id: q for q in load_questions(files.questions)}
    # A humanities question (general prompts) and a reasoning one (reference-guided prompts), chosen as the
    # two with the shortest judge prompts: a 135M model on a shared CPU reads ~25 tokens/s.
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as f:
        for qid in (152, 104):
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
