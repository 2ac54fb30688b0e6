"""`mmpo serve --enable-lora`: vLLM's runtime LoRA API (load, list, use, unload adapters by name) and ``n``
answers per chat request, on the tiny Llama of conftest. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mmpo.models.chat import ChatModel
from mmpo.serving.server import make_server

PROMPT = [{"role": "user", "content": "Tell me a story."}]


def _adapter(base_dir: Path, out: Path, seed: int, model=None) -> Path:
    """A LoRA adapter saved as `mmpo dpo` saves one (merge_lora: false), with random nonzero B so that it
    changes the model's answers, and dropout, so an adapter left in training mode would answer at random."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from mmpo.models.loading import get_lora_model, load_tokenizer
    from mmpo.models.policy import save_policy

    base = model if model is not None else AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_lora_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1.0)
    assert save_policy(peft_model, load_tokenizer(str(base_dir)), out, merge_lora=False) == "adapter"
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Two adapters of the tiny model, one of a wider model (hidden 48), and a folder that is no adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=262, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    (root / "plain").mkdir()
    return {
        "a1": _adapter(tiny_model_dir, root / "a1", seed=1),
        "a2": _adapter(tiny_model_dir, root / "a2", seed=2),
        "wider": _adapter(tiny_model_dir, root / "wider", seed=3, model=wider),
        "plain": root / "plain",
    }


@pytest.fixture(scope="module")
def greedy(tiny_model_dir, adapters):
    """The greedy answer to PROMPT of the base model and of each adapter merged into it (ChatModel.load merges
    an adapter directory): what the server must answer for each model id."""
    def answer(path) -> str:
        return ChatModel.load(str(path), device="cpu").generate(PROMPT, max_new_tokens=16, temperature=0).text

    out = {"base": answer(tiny_model_dir), "a1": answer(adapters["a1"]), "a2": answer(adapters["a2"])}
    assert len(set(out.values())) == 3, "the adapters must change the greedy answer for these tests to mean anything"
    return out


def _start(tiny_model_dir, **kwargs):
    server = make_server(ChatModel.load(str(tiny_model_dir), device="cpu"), "127.0.0.1", 0, quiet=True, name="base",
                         root=str(tiny_model_dir), **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture()
def lora_server(tiny_model_dir):
    server, thread = _start(tiny_model_dir, enable_lora=True)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _request(url: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _json(url: str, body: dict | None = None) -> tuple[int, dict]:
    status, text = _request(url, body)
    return status, json.loads(text)


def _load(server, name: str, path) -> tuple[int, str]:
    return _request(server.url + "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})


def _unload(server, name: str) -> tuple[int, str]:
    return _request(server.url + "/unload_lora_adapter", {"lora_name": name})


def _answer(server, model: str, **extra) -> str:
    status, payload = _json(server.url + "/chat/completions", {"model": model, "messages": PROMPT, "max_tokens": 16, "temperature": 0, **extra})
    assert status == 200, payload
    assert payload["model"] == model
    return payload["choices"][0]["message"]["content"]


def test_load_list_use_and_unload_adapters_as_vllm_does(lora_server, adapters, greedy):
    assert _answer(lora_server, "base") == greedy["base"]
    assert _load(lora_server, "a1", adapters["a1"]) == (200, "Success: LoRA adapter 'a1' added successfully.")
    assert _load(lora_server, "a2", adapters["a2"])[0] == 200
    status, models = _json(lora_server.url + "/models")
    assert status == 200
    cards = {m["id"]: m for m in models["data"]}
    assert list(cards) == ["base", "a1", "a2"]
    assert cards["base"]["parent"] is None
    assert (cards["a1"]["parent"], cards["a1"]["root"]) == ("base", str(adapters["a1"]))
    # Each id answers with its own weights; the base runs with every adapter off.
    assert _answer(lora_server, "a1") == greedy["a1"]
    assert _answer(lora_server, "a2") == greedy["a2"]
    assert _answer(lora_server, "base") == greedy["base"]
    assert _answer(lora_server, "a1") == greedy["a1"]

    assert _unload(lora_server, "a1") == (200, "Success: LoRA adapter 'a1' removed successfully.")
    status, payload = _json(lora_server.url + "/chat/completions", {"model": "a1", "messages": PROMPT})
    assert status == 404 and payload["error"]["code"] == "model_not_found" and "'a2'" in payload["error"]["message"]
    assert [m["id"] for m in _json(lora_server.url + "/models")[1]["data"]] == ["base", "a2"]
    assert _answer(lora_server, "a2") == greedy["a2"]
    # The last adapter out: the bare base model again, and a name can be loaded anew.
    assert _unload(lora_server, "a2")[0] == 200
    assert _answer(lora_server, "base") == greedy["base"]
    assert _load(lora_server, "a1", adapters["a1"])[0] == 200
    assert _answer(lora_server, "a1") == greedy["a1"]
    # Load and unload requests are counted like any other (one is made by _answer / _json per call above).
    assert lora_server.requests_served == 16 and lora_server.requests_failed == 1


def test_bad_adapter_requests_are_refused_and_leave_the_model_as_it_was(lora_server, adapters, greedy):
    status, text = _load(lora_server, "w", adapters["wider"])  # first load: the base is not wrapped yet
    error = json.loads(text)["error"]
    assert status == 400 and "does not fit" in error["message"] and str(adapters["wider"]) in error["message"]
    assert _answer(lora_server, "base") == greedy["base"]
    assert _load(lora_server, "a1", adapters["a1"])[0] == 200
    assert _load(lora_server, "w", adapters["wider"])[0] == 400  # beside a loaded adapter
    assert _answer(lora_server, "a1") == greedy["a1"] and _answer(lora_server, "base") == greedy["base"]
    assert [m["id"] for m in _json(lora_server.url + "/models")[1]["data"]] == ["base", "a1"]

    status, text = _load(lora_server, "a1", adapters["a2"])
    assert status == 400 and "already been loaded" in json.loads(text)["error"]["message"]
    assert _answer(lora_server, "a1") == greedy["a1"]
    missing = adapters["plain"] / "nowhere"
    status, text = _load(lora_server, "m", missing)
    assert status == 404 and str(missing) in json.loads(text)["error"]["message"]
    status, text = _load(lora_server, "p", adapters["plain"])
    assert status == 400 and "adapter_config.json" in json.loads(text)["error"]["message"]
    assert _load(lora_server, "base", adapters["a2"])[0] == 400  # the base model's id
    status, payload = _json(lora_server.url + "/load_lora_adapter", {"lora_name": "x"})
    assert status == 400 and payload["error"]["param"] == "lora_path"
    status, payload = _json(lora_server.url + "/unload_lora_adapter", {"lora_name": "never-loaded"})
    assert status == 404 and "cannot be found" in payload["error"]["message"]


def test_runtime_lora_needs_enable_lora(tiny_model_dir, adapters):
    server, thread = _start(tiny_model_dir)
    try:
        for status, text in (_load(server, "a1", adapters["a1"]), _unload(server, "a1")):
            assert status == 404 and "--enable-lora" in json.loads(text)["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_concurrent_requests_for_base_and_adapter_get_their_own_answers(lora_server, adapters, greedy):
    assert _load(lora_server, "a1", adapters["a1"])[0] == 200
    answers: dict[str, list[str]] = {"base": [], "a1": []}

    def ask(model: str) -> None:
        for _ in range(4):
            answers[model].append(_answer(lora_server, model))

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("base", "a1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == {"base": [greedy["base"]] * 4, "a1": [greedy["a1"]] * 4}


def _choices(server, **body) -> tuple[list[dict], dict]:
    status, payload = _json(server.url + "/chat/completions", {"messages": PROMPT, "max_tokens": 12, **body})
    assert status == 200, payload
    return payload["choices"], payload["usage"]


def test_n_choices_seeded_sampling_and_usage(lora_server):
    choices, usage = _choices(lora_server, n=3, temperature=1.0, top_p=0.95, seed=11)
    assert [c["index"] for c in choices] == [0, 1, 2]
    texts = [c["message"]["content"] for c in choices]
    assert len(set(texts)) > 1  # three samples, not one answer copied
    assert all(c["finish_reason"] in ("stop", "length") for c in choices)
    assert usage["prompt_tokens"] == len(lora_server.chat_model.prompt_ids(PROMPT))
    assert 0 < usage["completion_tokens"] <= 3 * 12 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again, _ = _choices(lora_server, n=3, temperature=1.0, top_p=0.95, seed=11)
    assert [c["message"]["content"] for c in again] == texts
    other, _ = _choices(lora_server, n=3, temperature=1.0, top_p=0.95, seed=12)
    assert [c["message"]["content"] for c in other] != texts


def test_n_choices_greedy_stop_logprobs_and_adapter(lora_server, adapters, greedy):
    one, _ = _choices(lora_server, temperature=0, max_tokens=16, stop=["e"])
    many, usage = _choices(lora_server, n=2, temperature=0, max_tokens=16, stop=["e"])
    assert [c["message"]["content"] for c in many] == [one[0]["message"]["content"]] * 2
    assert [c["finish_reason"] for c in many] == [one[0]["finish_reason"]] * 2
    sampled, usage = _choices(lora_server, n=2, temperature=1.0, seed=3, logprobs=True, top_logprobs=2)
    per_choice = [len(c["logprobs"]["content"]) for c in sampled]
    assert sum(per_choice) == usage["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 2 for c in sampled for t in c["logprobs"]["content"])
    assert _load(lora_server, "a1", adapters["a1"])[0] == 200
    adapted, _ = _choices(lora_server, model="a1", n=2, temperature=0, max_tokens=16)
    assert [c["message"]["content"] for c in adapted] == [greedy["a1"]] * 2


def test_serve_cli_loads_lora_modules_and_counts_requests(tiny_model_dir, adapters, subprocess_env, capsys):
    from mmpo.cli.main import main

    assert main(["serve", "--model", str(tiny_model_dir), "--lora-modules", f"a1={adapters['a1']}"]) != 0
    assert "--lora-modules needs --enable-lora" in capsys.readouterr().err
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmpo.cli.main", "serve", "--model", str(tiny_model_dir), "--port", "0", "--device", "cpu",
         "--quiet", "--enable-lora", "--lora-modules", f"a1={adapters['a1']}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env,
    )
    try:
        line = proc.stdout.readline()  # printed once the model and the adapters are loaded
        assert "listening on" in line and "load_lora_adapter" in line, line + proc.stderr.read()
        url = line.split("listening on ", 1)[1].split()[0]
        assert [m["id"] for m in _json(url + "/models")[1]["data"]] == [tiny_model_dir.name, "a1"]
        assert _load(type("S", (), {"url": url}), "a2", adapters["a2"])[0] == 200
        assert _request(url + "/chat/completions", {"model": "gone", "messages": PROMPT})[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert "stopped after 3 requests (2 ok, 1 errors)" in err
