"""The pair layouts against each other in one process: a training step (forward, backward, AdamW) per layout.

    python -m benchmarks layouts --shape smollm2-135m --out results.jsonl      # on the device it finds (CUDA first)

What it isolates: the cost of the layout and attention kernel alone, on the same pairs, the same randomly
initialised model shape and the same step (mmpo's own scoring functions and losses), with no trainer around them:

* ``two_rows``: chosen and rejected each in its own right-padded row (how TRL and most trainers batch pairs);
* ``shared``: one row per pair ``[prompt | chosen | rejected]`` (each prompt once), the shared mask;
* ``packed``: several pairs per row up to the longest pair's length, no padding to speak of;

each under SDPA (a dense boolean mask) and, on CUDA, FlexAttention (a block-sparse ``BlockMask``). Pairs are token
ids of random lengths (``--mix``), so every layout sees identical tokens. Times are per optimizer step after
``--warmup`` steps (CUDA: synchronised), peak memory is ``torch.cuda.max_memory_allocated`` (CUDA) or the
process's peak resident set. Writes one JSON line per (task, layout, attention) to ``--out`` and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path
from typing import Any

import torch

SHAPES = {
    # Dimensions of published models; the weights here are random (speed does not depend on them).
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True),
}
# (prompt, chosen, rejected) token-length ranges as fractions of --max-length.
MIXES = {
    "mixed": ((0.02, 0.30), (0.05, 0.60), (0.05, 0.60)),
    "prompt-heavy": ((0.25, 0.50), (0.05, 0.30), (0.05, 0.30)),
}


def make_features(mix: str, n: int, max_length: int, vocab: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    (p0, p1), (c0, c1), (r0, r1) = MIXES[mix]

    def ids(lo: float, hi: float) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(max(1, int(rng.uniform(lo, hi) * max_length)))]

    return [{"prompt_ids": ids(p0, p1), "chosen_ids": ids(c0, c1), "rejected_ids": ids(r0, r1),
             "p": rng.uniform(0.5, 1.0), "margin": None, "row": i} for i in range(n)]


def build(shape: str, task: str, attn: str, device: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], pad_token_id=0, max_position_embeddings=8192)
    config.num_labels = 1
    cls = AutoModelForSequenceClassification if task == "rm" else AutoModelForCausalLM
    return cls.from_config(config, attn_implementation=attn, dtype=torch.float32).to(device).train()


def step_loss(model: Any, task: str, batching: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from mmpo.losses import mmpo_loss

    n = batch["p"].shape[0]
    if task == "rm":
        scores = batching.rewards(model, batch)
    else:
        scores = 0.1 * batching.logps(model, batch)[0]  # beta * (log pi - log pi_ref) with a zero reference: the same work per step
    return mmpo_loss(scores[:n], scores[n:], batch["p"]).mean()


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(shape: str, task: str, layout: str, attn: str, batches: list[list[dict]], warmup: int, device: str) -> dict:
    from mmpo.data.collate import PairCollator, SharedPromptCollator
    from mmpo.models.batching import PairBatching
    from mmpo.precision import native_bf16

    batching = {"two_rows": PairBatching.two_rows(PairCollator(pad_token_id=0)),
                "shared": PairBatching.shared_prompt(SharedPromptCollator(pad_token_id=0)),
                "packed": PairBatching.shared_prompt(SharedPromptCollator(pad_token_id=0, pack=True))}[layout]
    model = build(shape, task, attn, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
    bf16 = native_bf16(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens, losses = [], [], []
    for i, features in enumerate(batches):
        batch = {k: v.to(device) for k, v in batching(features).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(model, task, batching, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronises
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch["input_ids"].numel()))
    timed = times[warmup:]
    out = {"shape": shape, "task": task, "layout": layout, "attn": attn, "device": device, "bf16": bf16,
           "steps": len(timed), "s_per_step": sum(timed) / len(timed), "min_s": min(timed), "max_s": max(timed),
           "tokens_fed_per_step": sum(tokens[warmup:]) / len(timed), "peak_mib": peak_mib(device),
           "first_loss": losses[0]}
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks layouts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=list(SHAPES))
    ap.add_argument("--mix", default="mixed", choices=list(MIXES))
    ap.add_argument("--tasks", nargs="+", default=["dpo", "rm"])
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (FlexAttention compiles in them)")
    ap.add_argument("--attn", nargs="+", default=None, help="default: sdpa, and flex_attention on CUDA")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attns = args.attn or (["sdpa", "flex_attention"] if device == "cuda" else ["sdpa"])
    vocab = SHAPES[args.shape]["vocab_size"]
    # The same batches for every case.
    batches = [make_features(args.mix, args.pairs, args.max_length, vocab, seed) for seed in range(args.warmup + args.steps)]
    share = sum(len(f["prompt_ids"]) for b in batches for f in b) * 2 / sum(
        2 * len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for b in batches for f in b)
    print(f"{args.shape} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), mix {args.mix}: "
          f"{args.pairs} pairs/step, max length {args.max_length}, prompts {share:.0%} of the two-row tokens", flush=True)
    rows = []
    for task in args.tasks:
        for layout in ("two_rows", "shared", "packed"):
            for attn in attns:
                r = run_case(args.shape, task, layout, attn, batches, args.warmup, device)
                r.update(mix=args.mix, pairs=args.pairs, max_length=args.max_length, prompt_share=share)
                rows.append(r)
                base = next(x for x in rows if x["task"] == task and x["layout"] == "two_rows" and x["attn"] == attns[0])
                print(f"{task:3s} {layout:8s} {attn:15s} {r['s_per_step'] * 1e3:8.1f} ms/step "
                      f"({r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}) {base['s_per_step'] / r['s_per_step']:5.2f}x two_rows/{attns[0]} "
                      f"tokens fed {r['tokens_fed_per_step']:7.0f} peak {r['peak_mib']:7.0f} MiB loss {r['first_loss']:.5f}", flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")

