"""``layout: groups`` against pairs made from the same responses: tokens per step and a reward model's step time.

    python -m benchmarks groups --k 4 8 --steps 3 --out groups.jsonl

The data are ``alpaca_graded`` (600 instructions, up to 18 graded outputs each), read and tokenized by mmpo's own
pipeline with the embedded model's tokenizer (prompt + response cut to ``--max-length``). For each ``k`` the
training groups of exactly ``k`` responses (``group_size: k``, :func:`mmpo.data.groups.make_groups`) are compared
with the ``C(k, 2)`` pairs of each group, oriented as the pair pipeline orients them:

* ``groups``: one span ``[prompt | r_1 | ... | r_k]`` per group (the prompt once per group);
* ``pairs``: one span ``[prompt | chosen | rejected]`` per pair (prefix sharing, the default pair layout: the
  prompt once per pair, each response once per pair it is in, ``k - 1`` times).

Tokens per step are the positions the model reads for ``--groups-per-step`` groups' worth of responses (real
tokens, no padding), averaged over every such group of the data. Step time is one optimizer step (forward,
backward, AdamW) of the embedded reward model (SmolLM2-135M with a new head) on the first ``--steps`` steps'
batches, collated as a run on this device collates them (packed under span attention on a CPU), with the
listwise loss on groups and MMPO on pairs; reported as the median (and range) over the timed steps after one
untimed warm-up step. Writes one JSON line per (k, layout) to ``--out`` and a table to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def load_groups(k: int, max_length: int, seed: int, tokenizer: Any) -> list[dict[str, Any]]:
    """The tokenized ``alpaca_graded`` groups of exactly ``k`` responses (every prompt's, no held-out split)."""
    from mmpo.data.groups import make_groups
    from mmpo.data.pipeline import load_pairs
    from mmpo.data.tokenize import tokenize_group

    pairs, _ = load_pairs("alpaca_graded")
    cache: dict = {}
    out = []
    for group in make_groups(pairs, k, seed):
        if len(group.responses) != k:
            continue
        feature = tokenize_group(tokenizer, group, max_length, max_length // 2, "truncate", cache)
        if feature is not None and len(feature["response_ids"]) == k:
            out.append(feature)
    return out


def pairs_of(group: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``C(k, 2)`` pairs of a group's responses, chosen = the higher score, ``p = sigmoid(margin)``."""
    out = []
    for a, b in itertools.combinations(range(len(group["scores"])), 2):
        if group["scores"][b] > group["scores"][a]:
            a, b = b, a
        margin = group["scores"][a] - group["scores"][b]
        out.append({"prompt_ids": group["prompt_ids"], "chosen_ids": group["response_ids"][a],
                    "rejected_ids": group["response_ids"][b], "p": 1 / (1 + math.exp(-margin)), "margin": margin,
                    "row": group["row"]})
    return out


def span_tokens(feature: dict[str, Any]) -> int:
    from mmpo.data.sampler import pair_tokens

    return pair_tokens(feature)


def step_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from mmpo.losses import listwise_soft_loss, mmpo_loss
    from mmpo.models.reward import shared_sequence_rewards

    rewards = shared_sequence_rewards(model, batch)
    if "group_mask" in batch:
        grouped = rewards.view(batch["group_mask"].shape[1], -1).t()
        return listwise_soft_loss(grouped, batch["scores"], 1.0, batch["group_mask"]).mean()
    n = batch["p"].shape[0]
    return mmpo_loss(rewards[:n], rewards[n:], batch["p"]).mean()


def time_steps(model: Any, collate: Any, batches: list[list[dict[str, Any]]], device: str, bf16: bool) -> tuple[list[float], list[int]]:
    """Seconds per optimizer step and positions fed (the batch's ``input_ids``, padding included) per step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times, fed = [], []
    for features in batches:
        batch = {key: v.to(device) for key, v in collate(features).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # synchronises
        times.append(time.perf_counter() - t0)
        fed.append(int(batch["input_ids"].numel()))
    return times, fed


def main(argv: list[str] | None = None) -> None:
    from mmpo.models.loading import load_tokenizer
    from mmpo.models.reward import load_reward_model
    from mmpo.models.shared_prefix import shared_prompt_collator
    from mmpo.precision import native_bf16

    ap = argparse.ArgumentParser(prog="python -m benchmarks groups", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8], help="responses per group")
    ap.add_argument("--groups-per-step", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256, help="tokens per prompt + response")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per (k, layout), after one warm-up step")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = native_bf16(device)
    tokenizer = load_tokenizer(args.model, None, False)
    print(f"{args.model} reward model on {device} (bf16 autocast {bf16}), alpaca_graded cut at {args.max_length} tokens, "
          f"{args.groups_per_step} group(s) a step; {args.steps} timed steps after 1 warm-up (shared machine: noisy)", flush=True)
    for k in args.k:
        groups = load_groups(k, args.max_length, args.seed, tokenizer)
        per_step = args.groups_per_step
        steps = [groups[i: i + per_step] for i in range(0, len(groups) - per_step + 1, per_step)]
        group_tokens = statistics.mean(sum(span_tokens(g) for g in step) for step in steps)
        pair_tokens_ = statistics.mean(sum(span_tokens(p) for g in step for p in pairs_of(g)) for step in steps)
        two_row = statistics.mean(sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])
                                      for g in step for p in pairs_of(g)) for step in steps)
        print(f"k={k}: {len(groups)} groups; tokens per step: groups {group_tokens:.0f}, pairs (shared prompt) "
              f"{pair_tokens_:.0f} ({pair_tokens_ / group_tokens:.2f}x), pairs (two rows) {two_row:.0f} "
              f"({two_row / group_tokens:.2f}x)", flush=True)
        timed = steps[: args.steps + 1]
        for layout in ("groups", "pairs"):
            torch.manual_seed(0)
            model = load_reward_model(args.model, tokenizer).to(device).train()
            collate = shared_prompt_collator(model, tokenizer.pad_token_id, "auto")
            batches = timed if layout == "groups" else [[p for g in step for p in pairs_of(g)] for step in timed]
            times, fed = time_steps(model, collate, batches, device, bf16)
            row = {"k": k, "layout": layout, "device": device, "bf16": bf16, "groups_per_step": per_step,
                   "max_length": args.max_length, "groups": len(groups),
                   "tokens_per_step": group_tokens if layout == "groups" else pair_tokens_,
                   "two_row_tokens_per_step": two_row, "timed_steps": len(times) - 1,
                   "median_s": statistics.median(times[1:]), "min_s": min(times[1:]), "max_s": max(times[1:]),
                   "positions_fed_per_timed_step": statistics.mean(fed[1:])}
            print(f"  {layout:6s} step {row['median_s']:.2f} s median ({row['min_s']:.2f}-{row['max_s']:.2f}), "
                  f"positions fed {row['positions_fed_per_timed_step']:.0f}", flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            del model


if __name__ == "__main__":
    main()
