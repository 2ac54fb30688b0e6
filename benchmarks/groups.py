"""``layout: groups`` against pairs made from the same responses: tokens per step and a reward model's step time.

    python -m benchmarks groups --k 4 8 --steps 3 --out groups.jsonl

The data are ``alpaca_graded`` (600 instructions, up to 18 graded outputs each), read and tokenized by mmpo's own
pipeline with the embedded model's tokenizer (prompt + response cut to ``--max-length``). For each ``k``, groups
of exactly ``k`` responses (:func:`load_groups`) are compared with the ``C(k, 2)`` pairs of each group, oriented
as the pair pipeline orients them:

* ``groups``: one span ``[prompt | r_1 | ... | r_k]`` per group (the prompt once per group);
* ``pairs``: one span ``[prompt | chosen | rejected]`` per pair (prefix sharing, the default pair layout: the
  prompt once per pair, each response once per pair it is in, ``k - 1`` times).

Tokens per step are the positions the model reads for ``--groups-per-step`` groups' worth of responses (real
tokens, no padding), averaged over every such group of the data. Step time is one optimizer step (forward,
backward, AdamW) of the embedded reward model (SmolLM2-135M with a new head) on the first ``--steps`` steps'
batches, collated as a run on this device collates them (packed under span attention on a CPU), with the
listwise loss on groups and MMPO on pairs, on one model: after one untimed warm-up step the two layouts alternate
step by step on the same responses; reported as the median (and range) over the timed steps, for the whole step
and for forward + backward alone (the optimizer step costs the same in both). Writes one JSON line per (k,
layout) to ``--out`` and a table to stdout.
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
    """Tokenized ``alpaca_graded`` groups of exactly ``k`` responses (every prompt's, no held-out split): each
    prompt's responses (:func:`mmpo.data.groups.make_groups`, unsplit) cut into consecutive blocks of ``k``, the
    rest left out, so every k gets a group from nearly every prompt."""
    from mmpo.data.groups import make_groups
    from mmpo.data.pipeline import load_pairs
    from mmpo.data.records import PreferenceGroup
    from mmpo.data.tokenize import tokenize_group

    pairs, _ = load_pairs("alpaca_graded")
    cache: dict = {}
    out = []
    for whole in make_groups(pairs, 10**6, seed):
        for start in range(0, len(whole.responses) - k + 1, k):
            group = PreferenceGroup(whole.prompt, whole.responses[start:start + k], whole.scores[start:start + k],
                                    whole.source, whole.row)
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


def timed_step(model: Any, optimizer: Any, collate: Any, features: list[dict[str, Any]], device: str, bf16: bool) -> dict[str, float]:
    """One optimizer step: seconds for forward + backward and for the whole step, and the positions fed (the
    batch's ``input_ids``, padding included)."""
    batch = {key: v.to(device) for key, v in collate(features).items()}
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = step_loss(model, batch)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()  # synchronises
    return {"step_s": time.perf_counter() - t0, "fwd_bwd_s": t1 - t0, "fed": int(batch["input_ids"].numel())}


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
    ap.add_argument("--time-k", type=int, nargs="*", default=None, help="the k whose steps are timed (default: every k; "
                    "the others report tokens only)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = native_bf16(device)
    if device == "cpu":
        from mmpo.host_memory import keep_freed_host_memory

        keep_freed_host_memory()  # as a CPU run does (keep_host_memory: true)
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
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps({"k": k, "layout": "tokens", "groups": len(groups), "max_length": args.max_length,
                                    "groups_per_step": per_step, "group_tokens_per_step": group_tokens,
                                    "pair_tokens_per_step": pair_tokens_, "two_row_tokens_per_step": two_row}) + "\n")
        if args.time_k is not None and k not in args.time_k:
            continue
        # One model and optimizer; after a warm-up step (AdamW allocates its state) the layouts alternate step by
        # step on the same responses, so a busy machine slows both alike.
        torch.manual_seed(0)
        model = load_reward_model(args.model, tokenizer).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        collate = shared_prompt_collator(model, tokenizer.pad_token_id, "auto")
        timed_step(model, optimizer, collate, steps[0], device, bf16)
        runs: dict[str, list[dict[str, float]]] = {"groups": [], "pairs": []}
        for step in steps[1: args.steps + 1]:
            runs["groups"].append(timed_step(model, optimizer, collate, step, device, bf16))
            runs["pairs"].append(timed_step(model, optimizer, collate, [p for g in step for p in pairs_of(g)], device, bf16))
        for layout, results in runs.items():
            step_s, fwd_bwd = [r["step_s"] for r in results], [r["fwd_bwd_s"] for r in results]
            row = {"k": k, "layout": layout, "device": device, "bf16": bf16, "groups_per_step": per_step,
                   "max_length": args.max_length, "groups": len(groups),
                   "tokens_per_step": group_tokens if layout == "groups" else pair_tokens_,
                   "timed_steps": len(results), "step_s": step_s, "fwd_bwd_s": fwd_bwd,
                   "median_s": statistics.median(step_s), "median_fwd_bwd_s": statistics.median(fwd_bwd),
                   "positions_fed_per_step": statistics.mean(r["fed"] for r in results)}
            print(f"  {layout:6s} step {row['median_s']:.2f} s median ({min(step_s):.2f}-{max(step_s):.2f}), forward + "
                  f"backward {row['median_fwd_bwd_s']:.2f} s ({min(fwd_bwd):.2f}-{max(fwd_bwd):.2f}), positions fed "
                  f"{row['positions_fed_per_step']:.0f}", flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        del model, optimizer


if __name__ == "__main__":
    main()
