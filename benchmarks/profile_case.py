"""Run one benchmark case once and print its numbers; with ``--profile``, one more step after the timed window runs
under torch.profiler (CPU ops by self time) and its tables are written there.

    python benchmarks/profile_case.py mmpo-dpo --mix real:256:2 --profile /tmp/mmpo-dpo.txt
    python benchmarks/profile_case.py mmpo-dpo --mix prompt-heavy:256:2 --override prefix_sharing=false

For development and diagnosis; the side-by-side numbers come from bench.py (whose last repeat profiles every run
the same way). Profiled timings are inflated by the profiler's own overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402

import bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=list(bench.CASES))
    ap.add_argument("--mix", default="synthetic:256:2", help="NAME:MAX_LENGTH:PAIRS_PER_STEP")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="mmpo config key (mmpo cases)")
    ap.add_argument("--real-data", default=None)
    ap.add_argument("--profile", type=Path, default=None, help="write torch.profiler tables here")
    args = ap.parse_args()

    from mmpo.models.embedded import embedded_model_path

    model_path = str(embedded_model_path())
    mixes = bench.parse_mixes([args.mix])
    (mix, (L, batch)), = mixes.items()
    real = bench.find_real_data(args.real_data) if mix == "real" else None
    d = bench.build_data(mixes, args.warmup + args.steps + 1, model_path, real)[mix]
    c = bench.CASES[args.case]
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.override)}
    spec = {"case": args.case, "mix": mix, "repeat": 0, "trainer": c["trainer"], "task": c["task"], "variant": c["variant"],
            "max_length": L, "batch_size": batch, "timed_steps": args.steps, "warmup_steps": args.warmup,
            "model_path": model_path, "data_mmpo": d["files"][c["task"]]["mmpo"], "data_trl": d["files"][c["task"]]["trl"],
            "threads": args.threads, "trl_overrides": c.get("trl_overrides", {}),
            "mmpo_overrides": {**c.get("mmpo_overrides", {}), **overrides} if c["trainer"] == "mmpo" else {}}
    if args.profile:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        spec["profile_path"] = str(args.profile.resolve())
    log_dir = HERE / "logs"
    log_dir.mkdir(exist_ok=True)
    result = bench.run_child(spec, log_dir)
    result.update(bench.derive(result, d["mean_tokens_per_pair"]))
    keep = ("case", "mix", "max_length", "batch_size", "step_seconds", "seconds_per_step", "setup_seconds", "pairs_per_s",
            "tokens_per_s", "peak_mib", "mixed_precision", "param_dtype", "gradient_checkpointing", "models_held",
            "mmpo_overrides", "trl_overrides", "profile")
    print(json.dumps({k: result[k] for k in keep if k in result}, indent=1))


if __name__ == "__main__":
    main()
