"""keep_host_memory on and off: step time and page faults of mmpo rm / dpo runs, alternating processes.

    python benchmarks/host_memory.py [--rounds 3] [--steps 9] [--out benchmarks/host-memory]

Each round runs, per task, one process with ``keep_host_memory: false`` and one with true (the default), through
the harness's own run (``bench.run_child`` / ``child.py``) on its synthetic mix (1 pair a step, max length 128,
embedded model, mmpo's defaults otherwise). Per process: the median step time and minor page faults of steps 4
to the end (the first steps allocate Adam's state and warm up). Writes ``results.json`` and ``RESULTS.md`` with
the per-round ratios off / on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = 3  # steps left out of the medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/host-memory")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from bench import build_data, case_spec, run_child

    from mmpo.models.embedded import embedded_model_path

    model = str(embedded_model_path())
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = build_data({"synthetic": (128, 1)}, args.steps, model, None)["synthetic"]
    runs = []
    for r in range(args.rounds):
        for task in ("rm", "dpo"):
            for keep in ((False, True) if r % 2 == 0 else (True, False)):
                spec = case_spec(f"mmpo-{task}", "synthetic", data, r, args.steps - 1, 1, model,
                                 mmpo_overrides={"keep_host_memory": keep})
                spec["case"] = f"mmpo-{task}-keep-{str(keep).lower()}"
                result = run_child(spec, out / "logs")
                seconds, faults = result["step_seconds"][SKIP:], result["step_faults"][SKIP:]
                rec = {"round": r, "task": task, "keep_host_memory": keep,
                       "median_step_s": statistics.median(seconds), "median_faults": statistics.median(faults),
                       "peak_rss_mib": result["peak_rss_mib"], "step_seconds": result["step_seconds"],
                       "step_faults": result["step_faults"]}
                runs.append(rec)
                print(f"round {r} {task} keep={keep}: {rec['median_step_s']:.3f} s/step, "
                      f"{rec['median_faults']:.0f} faults/step, peak {rec['peak_rss_mib']:.0f} MiB", flush=True)
    command = f"python benchmarks/host_memory.py --rounds {args.rounds} --steps {args.steps} --out {args.out}"
    meta = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "minutes": (time.time() - started) / 60, "load_before": os.getloadavg()[0]}
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    lines = ["# keep_host_memory off / on", "", f"- **Command:** `{command}`",
             f"- **Date (UTC):** {meta['date']}, {meta['minutes']:.1f} minutes",
             "- Each process: the embedded model, the harness's synthetic pairs, 1 pair a step, max length 128, "
             f"mmpo's defaults otherwise; medians over steps {SKIP + 1} to {args.steps}.", "",
             "| task | round | off: s/step | on: s/step | off / on | off: faults/step | on: faults/step | "
             "off / on: peak MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task in ("rm", "dpo"):
        for r in range(args.rounds):
            off, on = (next(x for x in runs if x["round"] == r and x["task"] == task and x["keep_host_memory"] is k)
                       for k in (False, True))
            lines.append(f"| {task} | {r} | {off['median_step_s']:.3f} | {on['median_step_s']:.3f} | "
                         f"{off['median_step_s'] / on['median_step_s']:.2f}x | {off['median_faults']:.0f} | "
                         f"{on['median_faults']:.0f} | {off['peak_rss_mib']:.0f} / {on['peak_rss_mib']:.0f} |")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/RESULTS.md")


if __name__ == "__main__":
    main()
