"""Host time to build one batch: mmpo's collators against TRL's DPO collator.

    python benchmarks/collate.py [--baseline-src DIR] [--out benchmarks/collate]

With the model on a GPU, the trainer's main process builds each batch while the GPU waits (no loader workers by
default), so collation is part of every step. Timed here, in one process: ``SharedPromptCollator`` (shared prompt,
one row per pair; and packed), the two-row ``PairCollator`` and TRL's ``DataCollatorForPreference`` (the peer,
when trl is installed), each on the same random token lists at three shapes: the harness's CPU mixes (one pair of
~150 tokens), the GPU check's (8 pairs of ~820 tokens) and a larger batch (32 pairs of ~1,700). Some responses end
in the pad token, as real ones can. ``--baseline-src`` also times the collators of another checkout's ``src/``
(a before/after in the same run). Median of 30 calls after 3 warm-up, per collator, in turn.

Writes ``results.json`` and ``RESULTS.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
# name: (pairs per batch, prompt tokens, response tokens (low, high))
SHAPES = {"cpu-mix": (1, 40, (40, 70)), "gpu-check": (8, 113, (250, 400)), "large": (32, 300, (500, 1000))}
PAD = 0


def make_features(pairs: int, prompt: int, response: tuple[int, int], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(1, 49152) for _ in range(n)]

    features = []
    for i in range(pairs):
        chosen, rejected = tokens(rng.randint(*response)), tokens(rng.randint(*response))
        if i % 3 == 1:
            rejected.append(PAD)
        features.append({"prompt_ids": tokens(prompt), "chosen_ids": chosen, "rejected_ids": rejected, "p": 0.9,
                         "margin": 1.0, "row": i})
    return features


def load_collate(src: Path) -> Any:
    """``mmpo.data.collate`` from another source tree, under a module name of its own."""
    spec = importlib.util.spec_from_file_location("baseline_collate", src / "mmpo" / "data" / "collate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def collators(baseline: Any) -> dict[str, Callable[[list[dict[str, Any]]], Any]]:
    from mmpo.data.collate import PairCollator, SharedPromptCollator

    out: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
        "mmpo shared": SharedPromptCollator(PAD),
        "mmpo packed": SharedPromptCollator(PAD, pack=True),
        "mmpo two rows": PairCollator(PAD),
    }
    if baseline is not None:
        out["baseline shared"] = baseline.SharedPromptCollator(PAD)
        out["baseline packed"] = baseline.SharedPromptCollator(PAD, pack=True)
    try:
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        trl = DataCollatorForPreference(pad_token_id=PAD)
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
        out["TRL DPO"] = lambda features: trl([{k: f[k] for k in keys} for f in features])
    except ImportError:
        pass
    return out


def median_ms(collate: Callable[[list[dict[str, Any]]], Any], features: list[dict[str, Any]], calls: int) -> float:
    for _ in range(3):
        collate(features)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        collate(features)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to time as well")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "collate")
    args = ap.parse_args(argv)
    import torch

    baseline = load_collate(args.baseline_src) if args.baseline_src else None
    rows = []
    for shape, (pairs, prompt, response) in SHAPES.items():
        features = make_features(pairs, prompt, response, seed=len(rows))
        tokens = sum(len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features) / pairs
        for name, collate in collators(baseline).items():
            ms = median_ms(collate, features, args.calls)
            rows.append({"shape": shape, "pairs": pairs, "tokens_per_pair": round(tokens), "collator": name, "ms": ms})
            print(f"{shape:10s} {pairs:3d} pairs x {tokens:5.0f} tokens  {name:16s} {ms:8.2f} ms", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/collate.py " + " ".join(argv)
    meta = {"command": command.strip(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads",
            "baseline_src": str(args.baseline_src) if args.baseline_src else None}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    names = list(dict.fromkeys(r["collator"] for r in rows))
    peer = "TRL DPO" if "TRL DPO" in names else None
    lines = ["# Building one batch on the host: ms per batch (median of %d calls)" % args.calls, "",
             f"- **Command:** `{meta['command']}`", f"- **Date (UTC):** {meta['date_utc']}",
             f"- **Machine:** {meta['machine']}", "",
             "| shape | pairs | tokens/pair | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for shape in SHAPES:
        got = {r["collator"]: r for r in rows if r["shape"] == shape}
        first = next(iter(got.values()))
        cells = []
        for n in names:
            cell = f"{got[n]['ms']:.2f}"
            if peer and n != peer:
                cell += f" ({got[n]['ms'] / got[peer]['ms']:.2f}x TRL)"
            cells.append(cell)
        lines.append(f"| {shape} | {first['pairs']} | {first['tokens_per_pair']} | " + " | ".join(cells) + " |")
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/RESULTS.md")


if __name__ == "__main__":
    main(sys.argv[1:])
