"""Scoring pairs (``mmpo eval pairs``, RewardBench, the reward-model grader): shared prompt against two rows.

    python benchmarks/scoring.py [--pairs 16] [--max-length 256] [--rounds 3] [--out benchmarks/scoring]

The embedded SmolLM2-135M-Instruct scores real pairs from ../shared/data/alpaca_graded (as in the harness's
``real`` mix) as a policy (reference-free implicit reward) and as a reward model (a fresh, untrained head: the
time does not depend on it), through ``mmpo.evaluation.scoring.score_with_models`` with ``prefix_sharing`` on
(the default: each prompt encoded once, pairs packed where attention runs per pair) and off (two rows a pair), alternating within each round so both see the same drift of the machine. Reported: the
median time of a whole pass over the pairs, the median of the per-round ratios, and the largest difference
between the two layouts' scores (they compute the same numbers up to summation order).

Writes ``results.json`` and ``RESULTS.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--real-data", default=None)
    ap.add_argument("--out", type=Path, default=HERE / "scoring")
    args = ap.parse_args(argv)

    import torch

    from bench import find_real_data
    from mmpo.data.sources import load_pairs
    from mmpo.evaluation.scoring import load_scoring_model, score_with_models
    from mmpo.models.embedded import embedded_model_path
    from pairs import real_pairs, token_stats, write_pairs

    model_path = str(embedded_model_path())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        _, tokenizer, _ = load_scoring_model(model_path, kind="policy")
        rows = real_pairs(tokenizer, find_real_data(args.real_data), args.pairs, args.max_length)
        stats = token_stats(rows, args.max_length)
        pairs, _ = load_pairs(str(write_pairs(rows, Path(tmp))["mmpo"]))
        for kind in ("policy", "reward"):
            torch.manual_seed(0)
            model, tokenizer, _ = load_scoring_model(model_path, kind=kind)
            times: dict[bool, list[float]] = {True: [], False: []}
            scores = {}
            for r in range(args.rounds + 1):  # round 0 warms up (allocations, kernel selection)
                for shared in ((True, False) if r % 2 else (False, True)):
                    t = time.perf_counter()
                    scores[shared] = score_with_models(model, tokenizer, pairs, kind, beta=0.1, batch_size=args.batch_size,
                                                       max_length=args.max_length, progress=False, prefix_sharing=shared)
                    if r:
                        times[shared].append(time.perf_counter() - t)
            diff = max(abs(a - b) for x, y in zip(scores[True], scores[False]) for a, b in zip(x, y))
            ratios = [two / one for one, two in zip(times[True], times[False])]
            results.append({"kind": kind, "one_row_s": statistics.median(times[True]), "two_rows_s": statistics.median(times[False]),
                            "ratio": statistics.median(ratios), "ratios": ratios, "max_abs_score_diff": diff})
            print(f"{kind:7s} shared {results[-1]['one_row_s']:6.2f} s  two rows {results[-1]['two_rows_s']:6.2f} s  "
                  f"{results[-1]['ratio']:.2f}x  max |score diff| {diff:.2e}", flush=True)
            del model
    command = "python benchmarks/scoring.py " + " ".join(argv)
    meta = {"command": command.strip(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads",
            "load_1min": os.getloadavg()[0], "pairs": args.pairs, "max_length": args.max_length,
            "batch_size": args.batch_size, "rounds": args.rounds, "tokens": stats}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    lines = ["# Scoring pairs: shared prompt (packed rows) against two rows per pair", "",
             f"- **Command:** `{meta['command']}`", f"- **Date (UTC):** {meta['date_utc']}",
             f"- **Machine:** {meta['machine']}; 1-minute load {meta['load_1min']:.2f} at the end",
             f"- **Data:** {args.pairs} real pairs (alpaca_graded), max length {args.max_length}, batches of "
             f"{args.batch_size} pairs; token statistics: `{json.dumps(stats)}`",
             f"- **Model:** the embedded SmolLM2-135M-Instruct, float32 (scoring's dtype on a CPU); "
             f"{args.rounds} timed rounds after one warm-up, layouts alternating", "",
             "| scorer | shared prompt, packed, s/pass | two rows, s/pass | speed-up (median of rounds) | rounds | max abs score difference |",
             "|---|---:|---:|---:|---|---:|"]
    for r in results:
        lines.append(f"| {r['kind']} | {r['one_row_s']:.2f} | {r['two_rows_s']:.2f} | {r['ratio']:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['max_abs_score_diff']:.1e} |")
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/RESULTS.md")


if __name__ == "__main__":
    main(sys.argv[1:])
