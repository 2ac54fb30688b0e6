"""`mmpo online` sampling on two real `mmpo serve --enable-lora` processes: round 2 samples from round 1's LoRA
adapter, which both servers list and which answers differently from the base model at temperature 0, and a
server killed in the middle of round 2's sampling hands its prompts to the other, so the run finishes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mmpo.io import read_jsonl
from mmpo.training import online
from mmpo.training.online import OnlineConfig, train_online
from mmpo.training.sampling import ServerSampler


def _serve(model: Path, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "mmpo.cli.main", "serve", "--model", str(model), "--port", "0",
                             "--device", "cpu", "--quiet", "--enable-lora"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, proc.stdout.readline()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _greedy(url: str, model: str, prompt: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                       "max_tokens": 12}).encode()
    request = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_two_rounds_on_two_mmpo_serve_processes_survive_a_killed_server(tiny_model_dir, tmp_path, monkeypatch, subprocess_env):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    procs = [_serve(tiny_model_dir, subprocess_env) for _ in range(2)]
    try:
        lines = [line for _, line in procs]
        assert all("listening on" in line for line in lines), lines
        urls = [line.split("listening on ", 1)[1].split()[0] for line in lines]  # http://127.0.0.1:PORT/v1
        seen: dict = {}

        class KillingSampler(ServerSampler):
            """Kills the second server once round 2 has its first answer, after reading what both servers hold."""

            def sample(self, batches, seeds, settings, on_batch, desc="sample"):
                if not desc.startswith("round 2/2 sample"):
                    return super().sample(batches, seeds, settings, on_batch, desc)

                def then_kill(k, texts):
                    on_batch(k, texts)
                    if "models" not in seen:
                        seen["model"] = self.model
                        seen["models"] = [[m["id"] for m in _get(u + "/models")["data"]] for u in urls]
                        prompt = "Say something about the number 3."
                        seen["greedy"] = (_greedy(urls[0], self.base_model, prompt), _greedy(urls[0], self.model, prompt))
                        procs[1][0].kill()

                return super().sample(batches, seeds, settings, then_kill, desc)

        monkeypatch.setattr(online, "make_sampler", lambda c: KillingSampler(
            c.sampler_urls, model=c.sampler_model, concurrency=c.sampler_concurrency, retries=c.sampler_retries,
            timeout=c.sampler_timeout))
        prompts = tmp_path / "p.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n" for i in range(8)))
        values = {
            "model": str(tiny_model_dir), "prompts": str(prompts), "rounds": 2, "prompts_per_round": 6,
            "samples_per_prompt": 3, "max_new_tokens": 8, "steps_per_round": 4, "per_device_train_batch_size": 4,
            "learning_rate": 0.05, "max_length": 96, "reference": "precomputed", "gamma": 0.5, "lora_r": 8,
            "output_dir": str(tmp_path / "run"), "seed": 3, "bf16": False, "sampler_urls": urls,
            "adapter_dir": str(tmp_path / "adapters"), "sampler_concurrency": 2, "sampler_retries": 1,
            "grader_concurrency": 2,
        }
        from mmpo.config import load_config

        records = train_online(load_config(OnlineConfig, None, values),
                               grader=lambda reqs: [float(min(10, len(set(r.response)))) for r in reqs]).details["rounds"]
        out = tmp_path / "run"
        r1 = json.loads((out / "round-1" / "adapter.json").read_text())["name"]
        # Round 2 sampled from round 1's adapter, loaded on both servers.
        assert seen["model"] == r1
        assert all(r1 in ids for ids in seen["models"]), seen["models"]
        base_answer, adapter_answer = seen["greedy"]
        assert base_answer != adapter_answer
        # The killed server's prompts went to the other: the round finished with every prompt answered.
        assert [r["round"] for r in records] == [0, 1, 2] and records[2]["train_steps"] == 4
        assert procs[1][0].poll() is not None
        assert sorted(x["i"] for x in read_jsonl(out / "round-2" / "samples.jsonl")) == list(range(6))
        ids = [m["id"] for m in _get(urls[0] + "/models")["data"]]
        r2 = json.loads((out / "round-2" / "adapter.json").read_text())["name"]
        assert ids == [tiny_model_dir.name, r2]  # round 1's adapter unloaded
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.communicate(timeout=60)
