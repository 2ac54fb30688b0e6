"""keep_host_memory on and off: step time and page faults of mmpo rm / dpo runs, alternating processes.

    python benchmarks/host_memory.py [--rounds 3] [--steps 9] [--out benchmarks/host-memory]

Each round runs, per task, one process with ``keep_host_memory: false`` and one with true (the default), on the
benchmark's synthetic mix (1 pair a step, max length 128, embedded model, bf16 autocast where the CPU has it).
Per process: the median step time and minor page faults of steps 4 to the end (the first steps allocate Adam's
state and warm up). Writes ``results.json`` and ``RESULTS.md`` with the per-round ratios off / on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import transformers
from transformers import TrainerCallback
spec = json.loads(sys.argv[1])
marks = []
def mark():
    marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        mark()
original = transformers.Trainer.train
def train(self, *a, **k):
    self.add_callback(Clock())
    self.args.train_sampling_strategy = "sequential"
    mark()
    return original(self, *a, **k)
transformers.Trainer.train = train
from mmpo.config import DPOConfig, RMConfig, load_config
overrides = dict(model=spec["model"], data=spec["data"], max_length=128, per_device_train_batch_size=1,
                 max_steps=spec["steps"], save_steps=10**6, output_dir=spec["out"], logging_steps=10**6, resume=False,
                 seed=42, eval_split=0.0, keep_host_memory=spec["keep"])
if spec["task"] == "dpo":
    from mmpo.training.dpo import train_policy
    train_policy(load_config(DPOConfig, overrides=overrides))
else:
    from mmpo.training.rm import train_reward_model
    train_reward_model(load_config(RMConfig, overrides=overrides))
steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
print("RESULT " + json.dumps(steps))
"""


def run(task: str, keep: bool, steps: int, model: str, data: str) -> list[tuple[float, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"task": task, "keep": keep, "steps": steps, "model": model, "data": data, "out": str(Path(tmp) / "out")}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{task} keep={keep} failed:\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return [tuple(s) for s in json.loads(line[len("RESULT "):])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/host-memory")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from pairs import make_pairs, write_pairs

    from mmpo.models.embedded import embedded_model_path

    model = str(embedded_model_path())
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer

        # The harness's synthetic mix at max length 128 (bench.build_data), one pair a step.
        pairs = make_pairs(AutoTokenizer.from_pretrained(model), args.steps, 128, seed=128)
        data = str(write_pairs(pairs, Path(tmp))["mmpo"])
        rounds = []
        for r in range(args.rounds):
            for task in ("rm", "dpo"):
                for keep in ((False, True) if r % 2 == 0 else (True, False)):
                    steps = run(task, keep, args.steps, model, str(data))[3:]
                    rec = {"round": r, "task": task, "keep_host_memory": keep,
                           "median_step_s": statistics.median(s for s, _ in steps),
                           "median_faults": statistics.median(f for _, f in steps), "steps": steps}
                    rounds.append(rec)
                    print(f"round {r} {task} keep={keep}: {rec['median_step_s']:.3f} s/step, "
                          f"{rec['median_faults']:.0f} faults/step", flush=True)
    command = f"python benchmarks/host_memory.py --rounds {args.rounds} --steps {args.steps} --out {args.out}"
    meta = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "minutes": (time.time() - started) / 60, "load_before": os.getloadavg()[0]}
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": rounds}, indent=1))
    lines = [f"# keep_host_memory off / on", "", f"- **Command:** `{command}`", f"- **Date (UTC):** {meta['date']}, "
             f"{meta['minutes']:.1f} minutes", "- Each process: the embedded model, synthetic pairs, 1 pair a step, "
             "max length 128, mmpo's defaults otherwise; medians over steps 4 onward.", "",
             "| task | round | off: s/step | on: s/step | off / on | off: faults/step | on: faults/step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for task in ("rm", "dpo"):
        for r in range(args.rounds):
            off, on = (next(x for x in rounds if x["round"] == r and x["task"] == task and x["keep_host_memory"] is k)
                       for k in (False, True))
            lines.append(f"| {task} | {r} | {off['median_step_s']:.3f} | {on['median_step_s']:.3f} | "
                         f"{off['median_step_s'] / on['median_step_s']:.2f}x | {off['median_faults']:.0f} | "
                         f"{on['median_faults']:.0f} |")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/RESULTS.md")


if __name__ == "__main__":
    main()
