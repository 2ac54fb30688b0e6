"""`mmpo online` with sampler_urls: prompts spread over OpenAI-compatible servers (here small fake ones speaking
vLLM's shapes), a server that fails hands its prompts to the others, every server down stops the run in one
line with finished prompts kept, each round's LoRA adapter is loaded on the servers and the last one unloaded,
and grading runs prompts concurrently."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmpo.errors import UserError
from mmpo.io import read_jsonl
from mmpo.training.online import OnlineConfig, OnlineRun, train_online
from mmpo.evaluation.judge_client import parse_urls
from mmpo.training.sampling import SamplingSettings, ServerSampler


class FakeServer:
    """vLLM's shapes: /v1/models (base + loaded adapters with ``parent`` and ``root``), chat completions with ``n``
    and ``seed`` (answers depend on model, prompt, seed and index only), runtime LoRA load / unload. ``fail_chat``
    answers 500, a prompt containing ``reject`` 400 (over the context)."""

    def __init__(self, base: str = "tiny", fail_chat: bool = False, delay: float = 0.0, reply: str | None = None,
                 reject: str | None = None, fail_message: str = "boom"):
        self.base, self.fail_chat, self.delay, self.reply = base, fail_chat, delay, reply
        self.reject, self.fail_message = reject, fail_message  # reject: a prompt containing it is answered 400
        self.adapters: dict[str, str] = {}
        self.chats: list[dict] = []
        self.calls: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                data = [{"id": owner.base, "object": "model"}] + [
                    {"id": k, "object": "model", "parent": owner.base, "root": v} for k, v in owner.adapters.items()]
                self._send(200, {"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.calls.append((self.path, body))
                if self.path == "/v1/load_lora_adapter":
                    if body["lora_name"] in owner.adapters:
                        return self._send(400, {"error": {"message": "already loaded"}})
                    if not (Path(body["lora_path"]) / "adapter_config.json").is_file():
                        return self._send(400, {"error": {"message": "no adapter there"}})
                    owner.adapters[body["lora_name"]] = body["lora_path"]
                    return self._send(200, "Success")
                if self.path == "/v1/unload_lora_adapter":
                    owner.adapters.pop(body["lora_name"], None)
                    return self._send(200, "Success")
                if owner.fail_chat:
                    return self._send(500, {"error": {"message": owner.fail_message}})
                if owner.reject and owner.reject in body["messages"][-1]["content"]:
                    return self._send(400, {"error": {"message": "maximum context length is 96 tokens"}})
                if body["model"] not in (owner.base, *owner.adapters):
                    return self._send(404, {"error": {"message": "model not found", "code": "model_not_found"}})
                owner.chats.append(body)
                time.sleep(owner.delay)  # a server busy generating: the others get to take prompts
                prompt = body["messages"][-1]["content"]
                choices = [{"index": j, "message": {"role": "assistant", "content": owner.reply or
                                                    f"{body['model']}|{prompt[-3:]}|{body.get('seed')}|{j}|xyz{j}"}}
                           for j in range(body.get("n", 1))]
                self._send(200, {"choices": choices})

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def servers():
    made = []

    def make(**kw):
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for s in made:
        try:
            s.stop()
        except OSError:
            pass


def _prompts(n):
    return [[[{"role": "user", "content": f"prompt {i:03d}"}]] for i in range(n)]


def _dead_url():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def test_prompts_spread_over_servers_and_a_failing_one_hands_them_over(servers):
    a, b, broken = servers(delay=0.02), servers(delay=0.02), servers(fail_chat=True)
    got: dict[int, list[list[str]]] = {}
    sampler = ServerSampler([a.url, b.url, broken.url, _dead_url()], concurrency=2, retries=1, timeout=10)
    for s in sampler.servers:
        s.client.sleep = lambda _: None
    sampler.use("tiny", None)  # the base: its name read from /v1/models
    sampler.sample(_prompts(20), list(range(100, 120)), SamplingSettings(3, 1.0, 0.9, 8), got.__setitem__)
    assert sorted(got) == list(range(20))
    assert got[7] == [[f"tiny|007|107|{j}|xyz{j}" for j in range(3)]]  # n answers, the prompt's own seed
    assert len(a.chats) + len(b.chats) == 20 and a.chats and b.chats  # both healthy servers took prompts
    assert all(c["n"] == 3 and c["top_p"] == 0.9 and c["max_tokens"] == 8 and c["temperature"] == 1.0 for c in a.chats)
    assert [s.down is not None for s in sampler.servers] == [False, False, True, True]
    assert "HTTP 500" in sampler.servers[2].down and "refused" in sampler.servers[3].down


def test_every_server_down_stops_in_one_line_naming_them(servers):
    broken = servers(fail_chat=True)
    dead = _dead_url()
    sampler = ServerSampler([broken.url, dead], retries=0, timeout=10)
    sampler.model = "tiny"
    with pytest.raises(UserError) as e:
        sampler.sample(_prompts(3), [1, 2, 3], SamplingSettings(2, 1.0, 1.0, 4), lambda b, t: None)
    message = str(e.value)
    assert "\n" not in message and broken.url.removesuffix("/v1") in message and dead in message
    assert "rerun" in message


def test_sampler_urls_parse_and_bad_settings_are_refused(tmp_path):
    assert parse_urls("http://a:1/v1, http://b:2", "sampler_urls") == ["http://a:1/v1", "http://b:2"]
    for value, problem in (("a:1", "not a URL"), ("http://a:1,http://a:1/v1", "twice"), ("", "at least one")):
        with pytest.raises(UserError, match=problem):
            parse_urls(value, "sampler_urls")
    with pytest.raises(UserError, match="sampler_urls needs lora_r > 0"):
        OnlineConfig(prompts="p.jsonl", sampler_urls="http://a:1").validate()
    with pytest.raises(UserError, match="reference: adapter with sampler_urls"):
        OnlineConfig(prompts="p.jsonl", sampler_urls="http://a:1", lora_r=4, reference="adapter",
                     round_reference="previous").validate()
    with pytest.raises(UserError, match="sampler_concurrency"):
        OnlineConfig(prompts="p.jsonl", sampler_urls="http://a:1", lora_r=4, sampler_concurrency=0).validate()


def _write_prompts(path: Path, n: int, start: int = 0) -> str:
    path.write_text("".join(json.dumps({"prompt": f"Say something about the number {i:03d}."}) + "\n"
                            for i in range(start, start + n)))
    return str(path)


def _values(tiny_model_dir, tmp_path, urls, rounds=2):
    return {
        "model": str(tiny_model_dir), "prompts": _write_prompts(tmp_path / "p.jsonl", 6),
        "eval_prompts": _write_prompts(tmp_path / "e.jsonl", 2, start=100), "rounds": rounds, "prompts_per_round": 4,
        "samples_per_prompt": 3, "max_new_tokens": 8, "steps_per_round": 2, "per_device_train_batch_size": 2,
        "learning_rate": 1e-3, "max_length": 96, "reference": "precomputed", "gamma": 0.5, "lora_r": 4,
        "output_dir": str(tmp_path / "run"), "seed": 3, "bf16": False, "sampler_urls": ",".join(urls),
        "adapter_dir": str(tmp_path / "shared-adapters"), "grader_concurrency": 3,
    }


def _grade(reqs):
    return [float(sum(map(ord, r.response)) % 10) for r in reqs]


def test_rounds_sample_from_the_last_rounds_adapter_on_every_server(tiny_model_dir, tmp_path, monkeypatch, servers):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    from mmpo.config import load_config

    a, b = servers(), servers()
    values = _values(tiny_model_dir, tmp_path, [a.url, b.url])
    records = train_online(load_config(OnlineConfig, None, values), grader=_grade).details["rounds"]
    out = tmp_path / "run"
    assert [r["round"] for r in records] == [0, 1, 2] and all(r["train_steps"] == 2 for r in records[1:])
    state = json.loads((out / "round-1" / "adapter.json").read_text())
    r1, r2 = state["name"], json.loads((out / "round-2" / "adapter.json").read_text())["name"]
    assert r1.startswith("run-") and r1.endswith("-round-1") and r2.endswith("-round-2")
    # The adapter was copied to adapter_dir and the servers were pointed there.
    assert Path(state["path"]) == (tmp_path / "shared-adapters" / r1).resolve()
    assert (Path(state["path"]) / "adapter_config.json").is_file()
    assert sorted(state["loaded_on"]) == sorted(s.url.removesuffix("/v1") for s in (a, b))
    # Round 1 sampled from the base, round 2 from round 1's adapter (every one of its answers).
    for r, model in ((1, "tiny"), (2, r1)):
        samples = read_jsonl(out / f"round-{r}" / "samples.jsonl")
        assert len(samples) == 4 and all(x["answers"][0].startswith(f"{model}|") for x in samples)
    # After round 2 the servers hold round 2's adapter only: round 1's was unloaded when round 2's took over.
    assert a.adapters.keys() == b.adapters.keys() == {r2}
    # Round 2 trained round 1's adapter on: still one adapter on the starting model.
    cfg = json.loads((out / "round-2" / "policy" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    assert all(len(g["grades"]) == 3 for g in read_jsonl(out / "round-2" / "graded.jsonl"))

    # A server restarted (its adapters gone) and one more round: the adapter is loaded again, and nothing finished
    # is sampled again.
    a.adapters.clear()
    b.stop()
    asked = len(a.chats)
    values.update(rounds=3, sampler_urls=a.url)  # the servers may change between reruns
    records = train_online(load_config(OnlineConfig, None, values), grader=_grade).details["rounds"]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    samples = read_jsonl(out / "round-3" / "samples.jsonl")
    assert all(x["answers"][0].startswith(f"{r2}|") for x in samples)
    assert len(a.chats) - asked == 4 + 2  # round 3's prompts and held-out prompts, nothing else


def test_a_run_stopped_by_dead_servers_resumes_without_resampling(tiny_model_dir, tmp_path, monkeypatch, servers):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    from mmpo.config import load_config

    a = servers()
    values = {**_values(tiny_model_dir, tmp_path, [a.url], rounds=1), "eval_prompts": None, "sampler_retries": 0}
    config = load_config(OnlineConfig, None, values)
    config.validate()
    rows = [{"prompt": f"p{i}", "messages": [{"role": "user", "content": f"p{i:03d}"}]} for i in range(5)]
    run = OnlineRun(config, _grade, rows, [], tmp_path / "run")
    path = tmp_path / "run" / "samples.jsonl"
    original = run.get_sampler().sample

    def sample_then_die(batches, seeds, settings, on_batch, desc="sample"):
        def first_two_then_stop(k, texts):
            on_batch(k, texts)
            if len(read_jsonl(path)) == 2:
                a.fail_chat = True  # the only server breaks mid-round
        original(batches, seeds, settings, first_two_then_stop, desc)

    run.sampler.sample = sample_then_die
    run.sampler.concurrency = 1
    with pytest.raises(UserError, match="every sampling server failed"):
        run.generate(config.model, rows, path, 2, 1.0, "sample", "sample-1")
    kept = read_jsonl(path)
    assert len(kept) == 2
    a.fail_chat = False
    asked = len(a.chats)
    fresh = OnlineRun(config, _grade, rows, [], tmp_path / "run")
    got = fresh.generate(config.model, rows, path, 2, 1.0, "sample", "sample-1")
    assert [x["i"] for x in got] == [0, 1, 2, 3, 4] and got[:2] == sorted(kept, key=lambda x: x["i"])
    assert len(a.chats) - asked == 3  # only the prompts not yet on disk


def test_concurrent_grading_matches_one_at_a_time_and_resumes(tmp_path):
    samples = [{"batch": i, "i": i, "prompt": f"q{i}", "meta": {}, "answers": ["ab", f"abc{i}"]} for i in range(12)]
    threads = set()

    def grader(requests):
        threads.add(threading.get_ident())
        time.sleep(0.01)  # a grader waiting on its endpoint
        return [float(len(r.response)) for r in requests]

    one = OnlineRun(OnlineConfig(prompts="unused", grader_retry_wait=0.0), grader, [], [], tmp_path)
    serial, _ = one.grade(samples, tmp_path / "serial.jsonl", "grade")
    many = OnlineRun(OnlineConfig(prompts="unused", grader_retry_wait=0.0, grader_concurrency=4), grader, [], [], tmp_path)
    path = tmp_path / "many.jsonl"
    path.write_text(json.dumps({**samples[5], "grades": [2.0, 4.0]}) + "\n")  # graded before a crash
    threads.clear()
    parallel, _ = many.grade(samples, path, "grade")
    assert parallel == serial and len(threads) > 1
    assert sorted(x["i"] for x in read_jsonl(path)) == list(range(12))  # every prompt once


def test_a_judge_on_several_urls_spreads_requests_and_leaves_a_dead_one_out(servers):
    from mmpo.graders import ScoreItem, load_grader

    a, b = servers(reply="[[7]]"), servers(reply="[[7]]")
    dead = _dead_url()
    grader = load_grader(f"judge:tiny@{a.url},{dead},{b.url}", concurrency=2, cache_path=None, progress=False)
    items = [ScoreItem([{"role": "user", "content": f"q{i}"}], f"answer {i}", {}) for i in range(10)]
    assert grader.score(items) == [7.0] * 10
    assert a.chats and b.chats and len(a.chats) + len(b.chats) == 10
    assert list(grader.client.down) == [f"{dead}/v1/chat/completions"]


def _adapter(folder: Path, weights: bytes) -> str:
    """A stand-in LoRA adapter folder (what the fake server and the fingerprint read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return str(folder)


def test_a_prompt_the_servers_refuse_stops_in_one_line_without_marking_servers_down(servers):
    a, b = servers(reject="prompt 002"), servers(reject="prompt 002")
    got: dict[int, list[list[str]]] = {}
    sampler = ServerSampler([a.url, b.url], concurrency=1, retries=1, timeout=10)
    sampler.use("tiny", None)
    with pytest.raises(UserError) as e:
        sampler.sample(_prompts(5), list(range(5)), SamplingSettings(2, 1.0, 1.0, 4), got.__setitem__, desc="round 1")
    message = str(e.value)
    assert "\n" not in message and "prompt 002" in message and "maximum context length" in message
    assert any(s.url.removesuffix("/v1") in message for s in (a, b))
    assert all(s.down is None for s in sampler.servers)  # the prompt is the problem, not the servers
    assert 2 not in got


def test_a_server_error_mentioning_404_does_not_reload_the_adapter(servers, tmp_path):
    a = servers()
    sampler = ServerSampler([a.url], concurrency=1, retries=0, timeout=10)
    sampler.use("run-x-round-1", _adapter(tmp_path / "ad", b"w"))
    a.fail_chat, a.fail_message = True, "upstream at port 4041 failed"  # a 500 whose text holds "404"
    before = len(a.calls)
    with pytest.raises(UserError, match="every sampling server failed"):
        sampler.sample(_prompts(1), [1], SamplingSettings(2, 1.0, 1.0, 4), lambda b, t: None)
    assert [p for p, _ in a.calls[before:]] == ["/v1/chat/completions"]  # one try, no reload and retry


def test_an_adapter_listed_from_another_path_is_loaded_again(servers, tmp_path):
    a = servers()
    a.adapters["run-x-round-1"] = "/elsewhere/old-weights"  # left from an earlier run under the same name
    sampler = ServerSampler([a.url], retries=0, timeout=10)
    path = _adapter(tmp_path / "ad", b"w")
    sampler.use("run-x-round-1", path)
    assert a.adapters == {"run-x-round-1": path}


def _server_run(tmp_path, **kw) -> OnlineRun:
    config = OnlineConfig(prompts="unused", model=str(tmp_path / "base"), sampler_urls="http://127.0.0.1:1",
                          lora_r=4, **kw)
    return OnlineRun(config, _grade, [], [], tmp_path / "run")


def test_adapter_names_and_copies_follow_the_weights(tmp_path):
    run = _server_run(tmp_path, adapter_dir=str(tmp_path / "shared"))
    policy = _adapter(tmp_path / "run" / "round-1" / "policy", b"first weights")
    name, path = run.served_policy(policy)
    assert (Path(path) / "adapter_model.safetensors").read_bytes() == b"first weights"
    # The run is started over in the same output_dir (or adapter_dir is reused): new weights, same round.
    _adapter(tmp_path / "run" / "round-1" / "policy", b"other weights")
    name2, path2 = run.served_policy(policy)
    assert name2 != name and name2.endswith("-round-1") and path2 != path
    assert (Path(path2) / "adapter_model.safetensors").read_bytes() == b"other weights"
    assert run.served_policy(policy) == (name2, path2)  # the same weights: the same name and copy


def test_an_adapter_copy_made_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    import os
    import shutil

    run = _server_run(tmp_path, adapter_dir=str(tmp_path / "shared"))
    policy = _adapter(tmp_path / "run" / "round-1" / "policy", b"weights")
    real_replace = os.replace

    def racing_replace(src, dst):
        shutil.copytree(src, dst)  # the other process's copy lands first
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)
    name, path = run.served_policy(policy)
    monkeypatch.setattr(os, "replace", real_replace)
    assert Path(path) == (tmp_path / "shared" / name).resolve()
    assert (Path(path) / "adapter_model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [name]  # no temporary folder left


def test_a_rerun_unloads_its_own_adapters_left_on_the_servers(servers, tmp_path):
    import hashlib

    a = servers()
    run = _server_run(tmp_path)
    run.config.sampler_urls = [a.url]
    run_hash = hashlib.sha256(str((tmp_path / "run").resolve()).encode()).hexdigest()[:6]
    a.adapters[f"run-{run_hash}-round-1"] = "/old/run/round-1/policy"  # the last process's adapter
    a.adapters["another-run-round-1"] = "/other/policy"  # not this run's: left alone
    policy = _adapter(tmp_path / "run" / "round-2" / "policy", b"weights")
    run.use_policy(policy)
    name = json.loads((tmp_path / "run" / "round-2" / "adapter.json").read_text())["name"]
    assert a.adapters == {name: policy, "another-run-round-1": "/other/policy"}


def test_servers_refuse_an_adapter_model_and_a_shared_reward_model_refuses_threads(tmp_path):
    adapter = _adapter(tmp_path / "sft-adapter", b"w")
    with pytest.raises(UserError, match="is a LoRA adapter") as e:
        OnlineConfig(prompts="p.jsonl", model=adapter, sampler_urls="http://a:1", lora_r=4).validate()
    assert "\n" not in str(e.value)
    OnlineConfig(prompts="p.jsonl", model=adapter, lora_r=4).validate()  # sampled in process: it loads the adapter
    with pytest.raises(UserError, match="grader_concurrency > 1 with a reward_model grader"):
        OnlineConfig(prompts="p.jsonl", grader=f"reward_model:{tmp_path}", grader_concurrency=2).validate()
    with pytest.raises(UserError, match="grader_concurrency > 1 with a reward_model grader"):
        OnlineConfig(prompts="p.jsonl", grader={"kind": "reward_model", "path": str(tmp_path)},
                     grader_concurrency=2).validate()
    OnlineConfig(prompts="p.jsonl", grader="judge:m@http://a:1", grader_concurrency=4).validate()
    OnlineConfig(prompts="p.jsonl", grader=f"reward_model:{tmp_path}", grader_concurrency=1).validate()
