"""Run one benchmark case once, optionally under torch.profiler (the timed steps only), and print its numbers.

    python benchmarks/profile_case.py mmpo-dpo 512 --batch 2 --steps 2 --profile benchmarks/profiles/mmpo-dpo-512.txt
    python benchmarks/profile_case.py mmpo-dpo 512 --override torch_compile=true

For development and diagnosis; the side-by-side numbers come from bench.py. Profiled timings are inflated by the
profiler's own overhead.
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
    ap.add_argument("length", type=int)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="mmpo config key (mmpo cases)")
    ap.add_argument("--profile", type=Path, default=None, help="write torch.profiler tables here")
    args = ap.parse_args()

    from mmpo.models.embedded import embedded_model_path

    model_path = str(embedded_model_path())
    L = args.length
    data = bench.build_data([L], {L: args.batch}, {L: args.steps}, args.warmup, model_path)
    trainer, task, variant = bench.CASES[args.case]
    spec = {"case": args.case, "trainer": trainer, "task": task, "variant": variant, "repeat": 0, "max_length": L,
            "batch_size": args.batch, "timed_steps": args.steps, "warmup_steps": args.warmup, "model_path": model_path,
            "data_mmpo": data[L]["mmpo"], "data_trl": data[L]["trl"], "threads": args.threads,
            "mmpo_overrides": {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.override)}}
    if args.profile:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        spec["profile_path"] = str(args.profile.resolve())
    log_dir = HERE / "logs"
    log_dir.mkdir(exist_ok=True)
    result = bench.run_child(spec, log_dir)
    result.update(bench.derive(result, bench.measure_matmul_in_subprocess(args.threads)))
    keep = ("case", "max_length", "batch_size", "timed_steps", "step_seconds", "setup_seconds", "timed", "pairs_per_s",
            "tokens_per_s", "peak_mib", "mfu", "policy_fwd_bwd_mfu", "mmpo_overrides")
    print(json.dumps({k: result[k] for k in keep}, indent=1))


if __name__ == "__main__":
    main()
