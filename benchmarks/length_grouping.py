"""What ``group_by_length: true`` saves where a step's pairs are padded to a common width.

    python benchmarks/length_grouping.py [--pairs 512] [--batch 4] [--max-length 512] [--steps 6] [--rounds 2]
                                         [--out benchmarks/length-grouping]

Data: ``--pairs`` real pairs from alpaca_graded (``pairs.real_pairs``), cut at ``--max-length`` by mmpo's tokenizer
step (``over_length: truncate``), tokenized with the embedded model's tokenizer.

1. **Counted** (exact, no clock): positions fed to the model over one epoch (rows x row width, summed over the
   steps) against the pairs' own tokens, in each batch layout mmpo builds: two rows per pair (``prefix_sharing:
   false``), one shared row per pair (prefix sharing without packing: what a GPU runs), and packed shared rows
   (the CPU default), in shuffled order (the trainers' default) and length-grouped order, over 5 seeds.
2. **Measured**: steps of ``mmpo rm`` and ``mmpo dpo`` on the embedded model in the GPU layout (``packing:
   false``), shuffled against grouped, each run its own process (``bench.run_child``). An epoch is too long to time
   here, so each run trains 1 + ``--steps`` steps drawn at random (the same step numbers for both orders, fixed
   seed) from that order's epoch; the first is a warm-up and the mean of the rest estimates the order's mean step.
   The orders alternate, reversed every other round.

Writes ``results.json`` and ``RESULTS.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEEDS = (0, 1, 2, 3, 4)


def layouts(pad: int) -> dict[str, Any]:
    from mmpo.data.collate import PairCollator, SharedPromptCollator
    from mmpo.models.shared_prefix import SPAN_PACK_TOKENS

    return {
        "two rows per pair": PairCollator(pad_token_id=pad),
        "one shared row per pair (GPU default)": SharedPromptCollator(pad_token_id=pad),
        "packed shared rows (CPU default)": SharedPromptCollator(pad_token_id=pad, pack=True, pack_budget=SPAN_PACK_TOKENS),
    }


def positions(batch: dict[str, torch.Tensor]) -> int:
    """Positions a batch feeds the model: every token tensor's rows x width."""
    return sum(v.numel() for k, v in batch.items() if k.endswith("input_ids"))


def orders(features: list[dict[str, Any]], batch: int, seed: int) -> dict[str, list[int]]:
    """One epoch's pair order, shuffled and length-grouped, from ``seed``."""
    from mmpo.data.sampler import LengthGroupedPairSampler, pair_tokens

    shuffled = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    grouped = list(LengthGroupedPairSampler([pair_tokens(f) for f in features], batch, seed))
    return {"shuffled": shuffled, "grouped": grouped}


def steps_of(order: list[int], batch: int) -> list[list[int]]:
    return [order[k:k + batch] for k in range(0, len(order) - batch + 1, batch)]


def count(features: list[dict[str, Any]], batch: int, pad: int) -> list[dict[str, Any]]:
    """Positions per epoch, per layout, order and seed, over the tokens each layout must hold."""
    rows = []
    shared_tokens = sum(len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)
    two_row_tokens = shared_tokens + sum(len(f["prompt_ids"]) for f in features)
    for name, collate in layouts(pad).items():
        tokens = two_row_tokens if name.startswith("two rows") else shared_tokens
        for seed in SEEDS:
            for order_name, order in orders(features, batch, seed).items():
                total = sum(positions(collate([features[i] for i in step])) for step in steps_of(order, batch))
                rows.append({"layout": name, "order": order_name, "seed": seed, "positions": total, "tokens": tokens,
                             "padding_share": 1 - tokens / total})
    return rows


def write_rows(pairs: list[dict[str, Any]], path: Path) -> Path:
    from pairs import write_pairs

    return write_pairs(pairs, path)["mmpo"]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=["rm", "dpo"], choices=["rm", "dpo"])
    ap.add_argument("--out", type=Path, default=HERE / "length-grouping")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from --out's results.json")
    args = ap.parse_args(argv)
    if args.render:
        (args.out / "RESULTS.md").write_text(render(json.loads((args.out / "results.json").read_text())))
        return

    from transformers import AutoTokenizer

    import bench
    from mmpo.data.sources import PairOptions, load_pairs
    from mmpo.data.tokenize import tokenize_pair
    from mmpo.models.embedded import embedded_model_path
    from mmpo.paths import cache_dir
    from pairs import real_pairs

    t0 = time.perf_counter()
    model_path = str(embedded_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    L, B = args.max_length, args.batch
    raw = real_pairs(tokenizer, bench.find_real_data(None), args.pairs, L, seed=0)
    root = cache_dir() / "bench" / f"length-grouping-L{L}-n{args.pairs}"
    all_file = write_rows(raw, root / "all")
    loaded, _ = load_pairs(str(all_file), PairOptions())
    features = [tokenize_pair(tokenizer, p, L, L // 2, over_length="truncate").__dict__ for p in loaded]
    assert len(features) == len(raw), "every pair fits once cut"
    counted = count(features, B, tokenizer.pad_token_id)
    print(f"counted {len(counted)} layout/order/seed cases ({time.perf_counter() - t0:.0f} s)", flush=True)

    # Measured: the same step numbers drawn from each order's epoch (seed 0).
    epoch = orders(features, B, 0)
    n_steps = len(features) // B
    picked = random.Random(1).sample(range(n_steps), 1 + args.steps)
    files, sampled = {}, {}
    for name, order in epoch.items():
        chosen_steps = [steps_of(order, B)[k] for k in picked]
        files[name] = write_rows([raw[i] for step in chosen_steps for i in step], root / name)
        sampled[name] = {
            "step_numbers": picked,
            "positions_per_step_gpu_layout": [positions(layouts(tokenizer.pad_token_id)["one shared row per pair (GPU default)"](
                [features[i] for i in step])) for step in chosen_steps[1:]],
        }
    runs = []
    overrides = {"packing": False, "over_length": "truncate"}
    for r in range(args.rounds):
        for task in args.tasks:
            for name in (["shuffled", "grouped"] if r % 2 == 0 else ["grouped", "shuffled"]):
                data = {"max_length": L, "batch": B, "files": {task: {"mmpo": str(files[name]), "trl": str(files[name])}}}
                spec = bench.case_spec(f"mmpo-{task}", "real", data, r, args.steps, 1, model_path, None, overrides)
                result = bench.run_child(spec, HERE / "logs")
                s = result["timed_seconds"] / result["timed_steps"]
                runs.append({"task": task, "order": name, "round": r, "seconds_per_step": s,
                             "peak_rss_mib": result["peak_rss_mib"], "ran_with": result.get("mixed_precision")})
                print(f"round {r} {task} {name}: {s:.2f} s/step", flush=True)

    meta = {"command": "python benchmarks/length_grouping.py " + " ".join(argv), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "minutes": (time.perf_counter() - t0) / 60, "machine": bench.machine_description(), "versions": bench.versions(),
            "mmpo_checkout": bench.checkout(), "pairs": len(features), "batch": B, "max_length": L, "seeds": list(SEEDS),
            "load_1min_end": os.getloadavg()[0], "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    blob = {"meta": meta, "counted": counted, "sampled": sampled, "runs": runs}
    (args.out / "results.json").write_text(json.dumps(blob, indent=1))
    (args.out / "RESULTS.md").write_text(render(blob))
    print(f"wrote {args.out / 'RESULTS.md'}")


def render(blob: dict[str, Any]) -> str:
    meta, counted, runs = blob["meta"], blob["counted"], blob["runs"]
    lines = [
        "# group_by_length: padding counted, steps timed",
        "",
        f"- **Command:** `{meta['command']}` (in the bench venv, `PYTHONPATH=src`)",
        f"- **Date (UTC):** {meta['date_utc']}, {meta['minutes']:.1f} minutes; mmpo at {meta['mmpo_checkout']}",
        f"- **Machine:** {meta['machine']}; 1-minute load at the end {meta['load_1min_end']:.2f}",
        f"- **Data:** {meta['pairs']} real pairs from alpaca_graded, max length {meta['max_length']} (responses cut by "
        f"mmpo), {meta['batch']} pairs a step, the embedded model's tokenizer.",
        "",
        "## Counted: positions per epoch (rows x width over all steps) / the pairs' own tokens",
        "",
        f"Seeds {', '.join(map(str, meta['seeds']))}; mean over seeds (min-max). Padding share: 1 - tokens / positions.",
        "",
        "| layout | shuffled | grouped | grouped / shuffled | padding share shuffled | grouped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for layout in dict.fromkeys(r["layout"] for r in counted):
        def pick(order: str) -> list[dict[str, Any]]:
            return [r for r in counted if r["layout"] == layout and r["order"] == order]

        sh, gr = pick("shuffled"), pick("grouped")
        ratio = lambda rs: [r["positions"] / r["tokens"] for r in rs]  # noqa: E731
        per_seed = [g["positions"] / s["positions"] for s, g in zip(sh, gr)]
        share = lambda rs: statistics.mean(r["padding_share"] for r in rs)  # noqa: E731
        lines.append(f"| {layout} | {statistics.mean(ratio(sh)):.3f} ({min(ratio(sh)):.3f}-{max(ratio(sh)):.3f}) | "
                     f"{statistics.mean(ratio(gr)):.3f} ({min(ratio(gr)):.3f}-{max(ratio(gr)):.3f}) | "
                     f"{statistics.mean(per_seed):.3f} ({min(per_seed):.3f}-{max(per_seed):.3f}) | "
                     f"{share(sh):.1%} | {share(gr):.1%} |")
    if runs:
        lines += ["", "## Measured: steps in the GPU layout (one shared row per pair, `packing: false`), bf16 autocast on this CPU", "",
                  "Each run trains a warm-up step and then the sampled steps of its order (step numbers "
                  f"{blob['sampled']['shuffled']['step_numbers'][1:]} of the epoch's {meta['pairs'] // meta['batch']}).", "",
                  "| task | order | s/step per round | mean s/step | positions per step (mean) | ms per position |",
                  "|---|---|---|---:|---:|---:|"]
        means, per_pos = {}, {}
        for task in dict.fromkeys(r["task"] for r in runs):
            for order in ("shuffled", "grouped"):
                rs = [r for r in runs if r["task"] == task and r["order"] == order]
                means[task, order] = statistics.mean(r["seconds_per_step"] for r in rs)
                pos = statistics.mean(blob["sampled"][order]["positions_per_step_gpu_layout"])
                per_pos[task, order] = means[task, order] / pos
                per_round = ", ".join(f"{r['seconds_per_step']:.2f}" for r in rs)
                lines.append(f"| {task} | {order} | {per_round} | {means[task, order]:.2f} | {pos:.0f} | "
                             f"{1000 * per_pos[task, order]:.2f} |")
        # The sampled steps' positions need not match the epoch's ratio; the counted epoch ratio times the measured
        # cost per position estimates the epoch.
        gpu = [r for r in counted if r["layout"].startswith("one shared row")]
        epoch_ratio = statistics.mean(g["positions"] / s["positions"] for s, g in
                                      zip([r for r in gpu if r["order"] == "shuffled"], [r for r in gpu if r["order"] == "grouped"]))
        lines.append("")
        for task in dict.fromkeys(r["task"] for r in runs):
            sampled_ratio = means[task, "shuffled"] / means[task, "grouped"]
            epoch = per_pos[task, "shuffled"] / (per_pos[task, "grouped"] * epoch_ratio)
            lines.append(f"- {task}: the sampled grouped steps ran {sampled_ratio:.2f}x as fast as the shuffled ones, but they "
                         f"held {statistics.mean(blob['sampled']['grouped']['positions_per_step_gpu_layout']) / statistics.mean(blob['sampled']['shuffled']['positions_per_step_gpu_layout']):.2f}x "
                         f"the positions where a whole epoch holds {epoch_ratio:.2f}x; with the measured cost per position, an "
                         f"epoch: {epoch:.2f}x as fast.")
    lines += ["", "What this does not show: the effect on training quality (grouping changes which pairs share a step; "
              "transformers' grouping keeps random mega-batches for that reason), and GPU timings (the layout is the "
              "GPU's, the clock this CPU's)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
