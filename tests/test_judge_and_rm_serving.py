"""Grading over HTTP: a reward model behind `mmpo serve`'s scoring endpoints, and the LLM-judge grader (and
`mmpo label --judge-url`) against `mmpo serve` on 127.0.0.1."""

from __future__ import annotations

import json
import math
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from mmpo.cli.main import main
from mmpo.errors import UserError
from mmpo.evaluation.judge_client import JudgeClient
from mmpo.graders import ScoreItem, load_grader
from mmpo.graders.judge import JudgeGrader, parse_rating, parse_verdict, verdict_probability_from_logprobs
from mmpo.models.reward import load_reward_model
from mmpo.models.chat import ChatModel
from mmpo.serving.server import make_server


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def _stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- a reward model served for remote grading ---------------------------------------------------------------

@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tiny_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-rm-serve")
    torch.manual_seed(4)
    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer)
    with torch.no_grad():
        model.score.weight.mul_(50)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_server(rm_dir):
    grader = load_grader(str(rm_dir), progress=False, max_length=128)
    server = make_server(reward=grader, port=0, quiet=True, name="tiny-rm")
    thread = _serve(server)
    yield server
    _stop(server, thread)


def test_score_endpoint_matches_local_rewards(rm_server, rm_dir):
    local = load_grader(str(rm_dir), progress=False, max_length=128)
    prompt = "What is 3 + 4?"
    responses = ["7", "3 + 4 = 7.", "It is twelve."]
    status, payload = _post(rm_server.url + "/score", {"model": "tiny-rm", "text_1": prompt, "text_2": responses})
    assert status == 200 and payload["object"] == "list" and payload["model"] == "tiny-rm"
    expected = local.score([ScoreItem([{"role": "user", "content": prompt}], r) for r in responses])
    assert [d["index"] for d in payload["data"]] == [0, 1, 2] and all(d["object"] == "score" for d in payload["data"])
    assert [d["score"] for d in payload["data"]] == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == 3
    # equal-length lists pair in order; /score without /v1 is the same endpoint
    status, pairwise = _post(rm_server.url.rsplit("/v1", 1)[0] + "/score", {"text_1": [prompt, prompt], "text_2": responses[:2]})
    assert status == 200 and [d["score"] for d in pairwise["data"]] == pytest.approx(expected[:2], abs=1e-5)
    assert payload["usage"]["prompt_tokens"] > 0


def test_pooling_endpoint_takes_conversations(rm_server, rm_dir):
    local = load_grader(str(rm_dir), progress=False, max_length=128)
    chat = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    status, one = _post(rm_server.url.rsplit("/v1", 1)[0] + "/pooling", {"messages": chat})
    assert status == 200 and one["data"][0]["object"] == "pooling"
    expected = local.score([ScoreItem(chat[:2], "4")])[0]
    assert one["data"][0]["data"] == [pytest.approx(expected, abs=1e-5)]
    status, many = _post(rm_server.url + "/pooling", {"input": [chat, chat[:2] + [{"role": "assistant", "content": "5"}]]})
    assert status == 200 and len(many["data"]) == 2 and many["data"][0]["data"][0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/score", {"text_1": ["a", "b"], "text_2": ["x", "y", "z"]}),
        ("/score", {"text_1": "a"}),
        ("/pooling", {"messages": [{"role": "user", "content": "no answer"}]}),
    ],
)
def test_reward_server_refuses_bad_requests(rm_server, path, body):
    status, payload = _post(rm_server.url + path, body)
    assert status == 400 and payload["error"]["message"]


# --- the LLM judge ---------------------------------------------------------------------------------------------

def test_parsers():
    assert [parse_verdict(t) for t in ("A", " B.", "[[A]]", "Response B is better", "**A**", "a", "a cat", "AB", "[[A]] or [[B]]", "")] == \
        ["A", "B", "A", "B", "A", "A", None, None, None, None]
    assert [parse_rating(t) for t in ("[[7]]", "Rating: [[8.5]]", "6", "[[11]]", "good")] == [7.0, 8.5, None, None, None]
    lp = [{"token": " ", "logprob": -0.1}, {"token": "A", "logprob": -0.2, "top_logprobs": [
        {"token": "A", "logprob": -0.2}, {"token": " B", "logprob": -1.9}, {"token": "a", "logprob": -3.0}, {"token": "x", "logprob": -4}]}]
    pa, pb = math.exp(-0.2) + math.exp(-3.0), math.exp(-1.9)
    assert verdict_probability_from_logprobs(lp) == pytest.approx(pa / (pa + pb))
    assert verdict_probability_from_logprobs([{"token": "x", "logprob": -1, "top_logprobs": [{"token": "x", "logprob": -1}]}]) is None


class _CannedClient:
    """Answers the judge's requests from a function of the messages (no network), to check the averaging."""

    url = "canned"

    def __init__(self, answer):
        self.answer = answer
        self.payloads = []

    def request(self, payload):
        self.payloads.append(payload)
        return self.answer(payload)


def test_both_orders_are_averaged():
    def answer(payload):
        user = payload["messages"][-1]["content"]
        p_a = 0.8 if user.index("good") < user.index("bad") else 0.3  # 0.8 when "good" is A, 0.3 when "bad" is A
        return {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "logprob": math.log(p_a),
                "top_logprobs": [{"token": "A", "logprob": math.log(p_a)}, {"token": "B", "logprob": math.log(1 - p_a)}]}]}}]}

    client = _CannedClient(answer)
    grader = JudgeGrader("http://unused", "m", client=client, progress=False, concurrency=1)
    prompt = [{"role": "user", "content": "q"}]
    logit = math.log(0.8 / 0.2) - math.log(0.3 / 0.7)
    assert grader.compare(prompt, "good answer", "bad answer") == pytest.approx(1 / (1 + math.exp(-logit / 2)))  # logit: the default
    assert len(client.payloads) == 2 and all(p["logprobs"] and p["top_logprobs"] == 20 for p in client.payloads)
    firsts = [p["messages"][-1]["content"].split("[Response B]")[0] for p in client.payloads]
    assert "good answer" in firsts[0] and "bad answer" in firsts[1]  # the two orders were asked
    by_probability = JudgeGrader("http://unused", "m", client=_CannedClient(answer), progress=False, concurrency=1, averaging="probability")
    assert by_probability.compare(prompt, "good answer", "bad answer") == pytest.approx((0.8 + 1 - 0.3) / 2)
    assert by_probability.fingerprint != grader.fingerprint  # a cache made one way is not read the other way


def _position(token: str, alternatives: dict[str, float]) -> dict:
    """One entry of ``choices[0].logprobs.content``: the generated ``token`` and its top alternatives."""
    return {"token": token, "logprob": math.log(alternatives[token]),
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()]}


def _response_letter_judge(p_good: float, first_alternatives: dict[str, float]):
    """A judge that answers "Response A" / "Response B", naming the good answer's letter; where it writes the
    letter, the good one's letter has probability ``p_good``. At the first position ("Response") only
    ``first_alternatives`` are offered, the same whichever order: they say nothing about the verdict."""
    def answer(payload):
        user = payload["messages"][-1]["content"]
        good = "A" if user.index("good") < user.index("bad") else "B"
        bad = "B" if good == "A" else "A"
        content = [_position("Response", first_alternatives), _position(" " + good, {" " + good: p_good, " " + bad: 1 - p_good})]
        return {"choices": [{"message": {"content": "Response " + good}, "logprobs": {"content": content}}]}

    return answer


@pytest.mark.parametrize("first_alternatives", [
    {"Response": 0.99, "A": 0.006, "B": 0.004},  # both letters there, at low probability
    {"Response": 0.99, "A": 0.01},  # one letter only
])
def test_verdict_read_where_the_letter_is_generated(first_alternatives):
    answer = _response_letter_judge(0.99, first_alternatives)
    one = answer({"messages": [{"role": "user", "content": "[Response A]\nbad\n[Response B]\ngood"}]})
    assert verdict_probability_from_logprobs(one["choices"][0]["logprobs"]["content"]) == pytest.approx(0.01)
    prompt = [{"role": "user", "content": "q"}]
    for averaging in ("logit", "probability"):
        grader = JudgeGrader("http://unused", "m", client=_CannedClient(answer), progress=False, concurrency=1, averaging=averaging)
        assert grader.compare(prompt, "good answer", "bad answer") == pytest.approx(0.99)
        assert grader.compare(prompt, "bad answer", "good answer") == pytest.approx(0.01)


def test_verdict_position_rules():
    bracketed = [_position("I", {"I": 0.9, "A": 0.1}), _position(" pick", {" pick": 1.0}), _position(" [[", {" [[": 1.0}),
                 _position("B", {"B": 0.7, "A": 0.3}), _position("]]", {"]]": 1.0})]
    assert verdict_probability_from_logprobs(bracketed) == pytest.approx(0.3)
    no_verdict = [_position("Both", {"Both": 0.9, "A": 0.1}), _position(" tie", {" tie": 1.0})]
    assert verdict_probability_from_logprobs(no_verdict) is None
    # the letter's position offers neither letter: the grader reads the verdict from the text
    odd = [_position("B", {"B": 1.0}) | {"top_logprobs": [{"token": "x", "logprob": -0.1}]}]
    assert verdict_probability_from_logprobs(odd) is None
    client = _CannedClient(lambda payload: {"choices": [{"message": {"content": "B"}, "logprobs": {"content": odd}}]})
    grader = JudgeGrader("http://unused", "m", client=client, progress=False, concurrency=1)
    assert grader._p_first([{"role": "user", "content": "q"}]) == 0.0


def _biased_judge(true_logit: float, bias: float):
    """A judge whose logit of "A" is the shown-as-A answer's true logit plus a constant position ``bias``."""
    def answer(payload):
        user = payload["messages"][-1]["content"]
        good_is_a = user.index("good") < user.index("bad")
        p_a = 1 / (1 + math.exp(-((true_logit if good_is_a else -true_logit) + bias)))
        return {"choices": [{"message": {"content": "A" if p_a >= 0.5 else "B"},
                             "logprobs": {"content": [_position("A" if p_a >= 0.5 else "B", {"A": p_a, "B": 1 - p_a})]}}]}

    return answer


def test_logit_averaging_cancels_a_constant_position_bias():
    prompt = [{"role": "user", "content": "q"}]
    judge = _biased_judge(true_logit=1.0, bias=1.0)
    by_logit = JudgeGrader("http://unused", "m", client=_CannedClient(judge), progress=False, concurrency=1)
    assert by_logit.averaging == "logit"  # the default
    assert by_logit.compare(prompt, "good answer", "bad answer") == pytest.approx(1 / (1 + math.exp(-1.0)))  # 0.731
    by_probability = JudgeGrader("http://unused", "m", client=_CannedClient(judge), progress=False, concurrency=1, averaging="probability")
    p = by_probability.compare(prompt, "good answer", "bad answer")
    assert p == pytest.approx((1 / (1 + math.exp(-2.0)) + 0.5) / 2) and round(p, 3) == 0.690  # pulled toward 0.5
    with pytest.raises(UserError, match="averaging"):
        JudgeGrader("http://unused", "m", client=_CannedClient(judge), averaging="mean")


def test_samples_when_no_logprobs_and_unparseable_counts_as_missing():
    prompt = [{"role": "user", "content": "q"}]
    # auto: the first request asks for logprobs, gets none, and the grader samples from then on
    probe = _CannedClient(lambda payload: {"choices": [{"message": {"content": "A"}}]})
    auto = JudgeGrader("http://unused", "m", client=probe, progress=False, concurrency=1, samples=2)
    assert auto.compare(prompt, "x", "y") == pytest.approx(0.5)
    assert probe.payloads[0].get("logprobs") is True and all("logprobs" not in p for p in probe.payloads[1:])
    assert len(probe.payloads) == 1 + 2 + 2 and auto.stats["sampled_orders"] == 2
    # forward: 3 of 5 verdicts say A; backward: 1 of 5
    answers2 = iter(["A", "A", "B", "A", "B"] + ["B", "B", "A", "B", "B"] + ["what?"] * 10)
    client2 = _CannedClient(lambda payload: {"choices": [{"message": {"content": next(answers2)}}]})
    grader2 = JudgeGrader("http://unused", "m", client=client2, progress=False, concurrency=1, samples=5, verdict_from="samples",
                          averaging="probability")
    assert grader2.compare(prompt, "x", "y") == pytest.approx((3 / 5 + 1 - 1 / 5) / 2)
    assert [p["seed"] for p in client2.payloads] == [0, 1, 2, 3, 4] * 2 and all(p["temperature"] == 1.0 for p in client2.payloads)
    assert grader2.compare(prompt, "x", "z") is None  # nothing readable: missing, not 0.5
    assert grader2.stats["unparseable"] == 1 and grader2.stats["pairs_missing"] == 1


@pytest.fixture(scope="module")
def always_a_judge(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """`mmpo serve` with a tiny Llama built to answer "A" then stop, whatever it is shown: a judge with pure
    position bias. Attention and MLP outputs are zeroed, so each next token depends on the current one only:
    after "A" comes EOS, after any other token "A" (logit 10 * 5.66) with "B" just below (9 * 5.66)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    vocab = tiny_tokenizer.get_vocab()
    a_id, b_id, eos = vocab["A"], vocab["B"], tiny_tokenizer.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        emb[a_id, 0], emb[a_id, 1] = 0.0, 1.0
        model.model.norm.weight.fill_(1.0)
        head = model.lm_head.weight
        head.zero_()
        head[a_id, 0], head[b_id, 0], head[eos, 1] = 10.0, 9.0, 10.0
    path = tmp_path_factory.mktemp("always-a")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    server = make_server(ChatModel.load(str(path), device="cpu"), "127.0.0.1", 0, quiet=True, name="judge")
    thread = _serve(server)
    yield server
    _stop(server, thread)


def test_judge_against_mmpo_serve_logprobs_and_samples(always_a_judge):
    prompt = [{"role": "user", "content": "Which is right: 2 + 2 = 4 or 5?"}]
    client = JudgeClient(always_a_judge.url, "judge", max_retries=0)
    reply = client.request({"messages": [{"role": "user", "content": "x"}], "temperature": 0, "max_tokens": 4, "logprobs": True, "top_logprobs": 5})
    assert reply["choices"][0]["message"]["content"] == "A"
    lp = JudgeGrader(always_a_judge.url, "judge", progress=False, concurrency=1)
    one_order = lp._p_first([{"role": "user", "content": "anything"}])
    assert one_order > 0.99  # the judge's own preference for "A" ...
    assert lp.compare(prompt, "4", "5") == pytest.approx(0.5, abs=1e-9)  # ... cancels over the two orders
    assert lp.stats["logprobs_orders"] == 3 and lp.stats["sampled_orders"] == 0
    sampled = JudgeGrader(always_a_judge.url, "judge", progress=False, concurrency=1, verdict_from="samples", samples=3)
    assert sampled.compare(prompt, "4", "5") == pytest.approx(0.5)
    assert sampled.stats["sampled_orders"] == 2


def test_label_with_judge_over_http(always_a_judge, tmp_path, write_jsonl):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "score_chosen": 9, "score_rejected": 1} for i in range(3)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "judged.jsonl"
    assert main(["label", "--data", str(data), "--out", str(out), "--judge-url", always_a_judge.url, "--judge-model", "judge",
                 "--judge-concurrency", "1"]) == 0
    labeled = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["p_chosen"] for r in labeled] == [pytest.approx(0.5)] * 3
    assert all(r["original_score_chosen"] == 9 and "score_chosen" not in r for r in labeled)
    summary = json.loads((tmp_path / "judged.label.json").read_text())
    assert summary["labeled"] == 3 and summary["judge"]["logprobs_orders"] == 6
    cache_lines = (tmp_path / "judged.cache.jsonl").read_text().splitlines()
    assert len(cache_lines) == 3
    # a rerun reads the cache: no request reaches the server
    served = always_a_judge.requests_served
    assert main(["label", "--data", str(data), "--out", str(out), "--judge-url", always_a_judge.url, "--judge-model", "judge"]) == 0
    assert always_a_judge.requests_served == served
    # the other averaging is another grader: its grades are asked for, not read from the first one's cache
    assert main(["label", "--data", str(data), "--out", str(out), "--judge-url", always_a_judge.url, "--judge-model", "judge",
                 "--judge-averaging", "probability", "--overwrite"]) == 0
    assert always_a_judge.requests_served == served + 6
    assert [json.loads(line)["p_chosen"] for line in out.read_text().splitlines()] == [pytest.approx(0.5)] * 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Always503(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.dumps({"error": {"message": "overloaded"}}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_failing_endpoint_is_missing_after_retries(tmp_path, write_jsonl):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    thread = _serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        sleeps = []
        client = JudgeClient(url, "m", max_retries=2, sleep=sleeps.append)
        grader = JudgeGrader(url, "m", client=client, progress=False, concurrency=1)
        assert grader.compare([{"role": "user", "content": "q"}], "a", "b") is None
        assert client.requests_sent == 3 and sleeps == [1.0, 2.0]  # retried with backoff, then missing
        assert grader.stats["requests_failed"] == 1 and grader.stats["pairs_missing"] == 1
        # the CLI reports the rows it could not label instead of dropping them or inventing a probability
        data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "r", "chosen": "c", "rejected": "d"}])
        out = tmp_path / "o.jsonl"
        assert main(["label", "--data", str(data), "--out", str(out), "--judge-url", url, "--judge-model", "m", "--max-retries", "0"]) == 1
        assert out.read_text() == ""
        missing = [json.loads(line) for line in (tmp_path / "o.unlabeled.jsonl").read_text().splitlines()]
        assert [m["prompt"] for m in missing] == ["q", "r"] and all("judge" in m["label_error"] for m in missing)
    finally:
        _stop(server, thread)


def test_label_at_a_closed_port_stops_at_once_naming_the_url(tmp_path, write_jsonl, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(6)])
    out = tmp_path / "o.jsonl"
    code = main(["label", "--data", str(data), "--out", str(out), "--judge-url", url, "--judge-model", "m"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{url}/chat/completions refused the connection" in err[0]
    assert not out.exists()  # no empty output file


@pytest.mark.slow
def test_mmpo_serve_command_detects_a_reward_model(rm_dir, tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "mmpo.cli.main", "serve", "--model", str(rm_dir), "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # "listening on" is printed once the model is loaded and the port bound
            seen.append(line)
            if "listening on" in line:
                break
        assert "listening on" in line and "reward model" in line, "".join(seen)
        url = line.split("listening on ", 1)[1].split()[0]
        status, payload = _post(url + "/score", {"text_1": "hi", "text_2": ["a", "b"]})
        assert status == 200 and len(payload["data"]) == 2
        status, _ = _post(url + "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_judge_rating_scores_and_missing():
    replies = iter(["[[7]]", "I cannot rate this."])
    client = _CannedClient(lambda payload: {"choices": [{"message": {"content": next(replies)}}]})
    grader = JudgeGrader("http://unused", "m", client=client, progress=False, concurrency=1)
    prompt = [{"role": "user", "content": "q"}]
    assert grader.score([ScoreItem(prompt, "first"), ScoreItem(prompt, "second")]) == [7.0, None]
    assert grader.stats["unparseable"] == 1 and all(p["temperature"] == 0.0 for p in client.payloads)
