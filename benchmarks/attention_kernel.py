"""Span attention under bf16 autocast on the CPU: SDPA's bfloat16 kernel against Float32CausalAttention.

    python benchmarks/attention_kernel.py [--steps 14] [--out benchmarks/attention-kernel]

Two measurements, in one process each way round, on this machine:

* **kernel**: one attention forward + backward at SmolLM2-135M's head layout (2 rows, 9 query / 3 key-value
  heads of 64) and several row lengths: SDPA on bfloat16 inputs (what autocast runs) against
  ``mmpo.models.shared_prefix.Float32CausalAttention`` on the same inputs; median of 25 calls, 3 warm-up.
* **training steps**: the embedded model as a reward model and as a policy, one pair a step at three shapes
  (prompt / response tokens like the harness's synthetic, prompt-heavy and real mixes), bf16 autocast, fused
  AdamW, clipping at 1.0, the host settings of mmpo's CPU runs (``mmpo.host_memory.prepare_host``); each step's batch is trained once with the span attention's float32 path switched off
  and once on, in alternating order, so both see the same batches and the same drift of the machine. Reported:
  median step times and the median of the per-step ratios (off / on), first 2 steps left out.

Writes ``results.json`` and ``RESULTS.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

SHAPES = {"synthetic": (33, 90), "prompt-heavy": (72, 80), "real": (61, 190)}  # prompt, response tokens
SKIP = 2


def kernel_times(lengths: list[int]) -> list[dict[str, Any]]:
    from mmpo.models.shared_prefix import Float32CausalAttention

    def sdpa_bf16(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def float32(q, k, v):
        return Float32CausalAttention.apply(q, k, v, None)

    rows = []
    for length in lengths:
        torch.manual_seed(0)
        q = torch.randn(2, 9, length, 64, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(2, 3, length, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        grad = torch.randn(2, 9, length, 64, dtype=torch.bfloat16)
        times: dict[str, list[float]] = {"sdpa_bf16": [], "float32": []}
        for i in range(28):
            for name, fn in (("sdpa_bf16", sdpa_bf16), ("float32", float32)):
                start = time.perf_counter()
                fn(q, k, v).backward(grad)
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t[3:]) * 1e3 for name, t in times.items()}
        rows.append({"length": length, "sdpa_bf16_ms": med["sdpa_bf16"], "float32_ms": med["float32"],
                     "ratio": med["sdpa_bf16"] / med["float32"]})
        print(f"kernel L={length}: bf16 {med['sdpa_bf16']:.2f} ms, float32 {med['float32']:.2f} ms", flush=True)
    return rows


def training_steps(task: str, shape: str, steps: int) -> dict[str, Any]:
    import mmpo.models.shared_prefix as sp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmpo.data.collate import SharedPromptCollator
    from mmpo.models.embedded import embedded_model_path
    from mmpo.models.logps import shared_response_logps
    from mmpo.models.reward import load_reward_model, shared_sequence_rewards

    path = str(embedded_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if task == "rm":
        model = load_reward_model(path, tokenizer)
        score: Callable[[Any], torch.Tensor] = lambda b: shared_sequence_rewards(model, b)  # noqa: E731
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        score = lambda b: 0.1 * shared_response_logps(model, b)[0]  # noqa: E731
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    collate = SharedPromptCollator(pad_token_id=tokenizer.pad_token_id)
    prompt, response = SHAPES[shape]
    rng = random.Random(0)
    tokens = lambda n: [rng.randrange(1000, 40000) for _ in range(n)]  # noqa: E731

    def step(batch) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rewards = score(batch)
        (-F.logsigmoid(rewards[0] - rewards[1])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    on = sp._bfloat16_on_cpu
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for i in range(steps):
            pair = {"prompt_ids": tokens(prompt), "chosen_ids": tokens(response + rng.randrange(-8, 8)),
                    "rejected_ids": tokens(response + rng.randrange(-8, 8)), "p": 0.7, "margin": 1.0}
            batch = collate([pair])
            for which in (("off", "on") if i % 2 == 0 else ("on", "off")):
                sp._bfloat16_on_cpu = on if which == "on" else (lambda value: False)
                times[which].append(step(batch))
    finally:
        sp._bfloat16_on_cpu = on
    off, on_ = times["off"][SKIP:], times["on"][SKIP:]
    result = {"task": task, "shape": shape, "prompt_tokens": prompt, "response_tokens": response,
              "off_s": statistics.median(off), "on_s": statistics.median(on_),
              "ratio": statistics.median(a / b for a, b in zip(off, on_)),
              "ratio_range": [min(a / b for a, b in zip(off, on_)), max(a / b for a, b in zip(off, on_))],
              "steps_off": times["off"], "steps_on": times["on"]}
    print(f"{task} {shape}: off {result['off_s']:.3f} s, on {result['on_s']:.3f} s, x{result['ratio']:.3f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--out", default="benchmarks/attention-kernel")
    args = parser.parse_args()
    from types import SimpleNamespace

    from mmpo.host_memory import prepare_host

    prepare_host(SimpleNamespace())  # as mmpo's CPU runs do: keep freed memory, bound the kernel caches
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    load_before = os.getloadavg()[0]
    kernel = kernel_times([64, 128, 192, 256, 384])
    steps = [training_steps(task, shape, args.steps) for task in ("rm", "dpo") for shape in SHAPES]
    meta = {"command": f"python benchmarks/attention_kernel.py --steps {args.steps} --out {args.out}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "minutes": (time.time() - started) / 60,
            "load_before": load_before, "load_after": os.getloadavg()[0], "torch": torch.__version__,
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "kernel": kernel, "steps": steps}, indent=1) + "\n")
    lines = [
        "# Span attention under bf16 autocast: SDPA's bfloat16 kernel vs float32 (Float32CausalAttention)", "",
        f"- **Command:** `{meta['command']}`",
        f"- **Date (UTC):** {meta['date']}, {meta['minutes']:.1f} minutes; torch {meta['torch']}, {meta['cpus']} CPUs; "
        f"1-minute load {meta['load_before']:.2f} before, {meta['load_after']:.2f} after",
        "- What is measured: see the docstring of `benchmarks/attention_kernel.py`.", "",
        "## One attention forward + backward (2 rows, 9 / 3 heads of 64)", "",
        "| row length | SDPA bf16 ms | float32 ms | bf16 / float32 |", "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['length']} | {r['sdpa_bf16_ms']:.2f} | {r['float32_ms']:.2f} | {r['ratio']:.2f} |" for r in kernel]
    lines += ["", f"## Training steps on the embedded model, one pair a step ({args.steps} steps each way, first {SKIP} left out)", "",
              "| task | shape | prompt + response tokens | float32 path off s | on s | off / on (median) | range |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['shape']} | {r['prompt_tokens']} + ~{r['response_tokens']} | {r['off_s']:.3f} | {r['on_s']:.3f} | "
              f"{r['ratio']:.3f} | {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f} |" for r in steps]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
