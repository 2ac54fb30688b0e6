"""Where each trainer's peak memory is reached: a memory timeline of mmpo and TRL runs, phase by phase.

    python -m benchmarks memory [--mix synthetic:128:1] [--steps 5] [--out DIR]

Each case runs once, in its own process, through the harness's own run (``bench.case_spec`` / ``child.py``, the
benchmark's pairs and settings) with the child's memory timeline on (``MemoryTimeline``: resident set, its file-backed
part and glibc's bytes in use every 10 ms, marks at each backward and optimizer step). Cases: mmpo rm and dpo at their defaults (checkpointing
on) and with ``gradient_checkpointing: false``; TRL's RewardTrainer and DPOTrainer with precomputed reference log-probs at
TRL's defaults (bf16 autocast, checkpointing on) and like for like (bf16, checkpointing off). Per case: the peak
resident set and in which step and phase (forward, backward, optimizer) it was reached, the peak of bytes in use,
and the steady step time (median of the steps after the first two; the sampler slows it: compare within this report only).
Writes ``results.json`` and ``RESULTS.md`` to ``--out`` (default: ``$MMPO_CACHE/bench/memory-profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from .bench import DEFAULT_STEPS, DEFAULT_WARMUP, build_data, case_spec, path_replacements, redact_paths, run_child

# (label, harness case, extra mmpo config keys)
CASES = [
    ("mmpo rm: defaults (ckpt on)", "mmpo-rm", {}),
    ("mmpo rm: gradient_checkpointing false", "mmpo-rm", {"gradient_checkpointing": False}),
    ("TRL RewardTrainer: defaults (ckpt on)", "trl-rm", {}),
    ("TRL RewardTrainer: bf16, ckpt off", "trl-rm-bf16", {}),
    ("mmpo dpo: defaults (ckpt on)", "mmpo-dpo", {}),
    ("mmpo dpo: gradient_checkpointing false", "mmpo-dpo", {"gradient_checkpointing": False}),
    ("TRL DPO, precomputed reference: defaults (ckpt on)", "trl-dpo-pre", {}),
    ("TRL DPO, precomputed reference: bf16, ckpt off", "trl-dpo-pre-bf16", {}),
]


def phases(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """Per optimizer step: the highest resident set (MiB) and bytes in use in its forward (from the previous step's
    end, data loading included), backward and optimizer step."""
    marks, samples = timeline["marks"], timeline["samples"]
    steps, start, current = [], samples[0][0], {}
    for name, t in marks:
        current[name] = t
        if name != "optimizer_end":
            continue
        bounds = {"forward": (start, current["backward"]), "backward": (current["backward"], current["backward_end"]),
                  "optimizer": (current["optimizer"], t)}
        step: dict[str, Any] = {}
        for phase, (a, b) in bounds.items():
            window = [s for s in samples if a <= s[0] <= b] or [min(samples, key=lambda s: abs(s[0] - b))]
            top = max(window, key=lambda s: s[1])
            step[phase] = {"rss_mib": top[1], "file_mib": top[3],
                           "in_use_mib": max((s[2] for s in window if s[2] is not None), default=None)}
        steps.append(step)
        start, current = t, {}
    return steps


def summarize(label: str, result: dict[str, Any], timeline: dict[str, Any]) -> dict[str, Any]:
    steps = phases(timeline)
    peak = max(s[p]["rss_mib"] for s in steps for p in s)
    # Where the peak was first (nearly) reached: the step and phase whose high-water mark is within 1% of it.
    where = next((i, p) for i, s in enumerate(steps) for p in ("forward", "backward", "optimizer")
                 if s[p]["rss_mib"] >= 0.99 * peak)
    in_use = [s[p]["in_use_mib"] for s in steps for p in s if s[p]["in_use_mib"] is not None]
    file_backed = steps[where[0]][where[1]]["file_mib"]
    return {"label": label, "case": result["case"], "peak_rss_mib": result["peak_rss_mib"],
            "timeline_peak_rss_mib": peak, "peak_in_use_mib": max(in_use) if in_use else None,
            "file_backed_at_peak_mib": file_backed, "peak_step": where[0] + 1, "peak_phase": where[1],
            "median_step_s": statistics.median(result["step_seconds"][2:]),
            "gradient_checkpointing": result.get("gradient_checkpointing"), "mixed_precision": result.get("mixed_precision"),
            "steps": steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks memory", description=__doc__.splitlines()[0])
    parser.add_argument("--mix", default="synthetic:128:1", help="NAME:MAX_LENGTH:PAIRS_PER_STEP (see bench.py)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first allocates Adam's state)")
    parser.add_argument("--out", default=None, help="where results.json and RESULTS.md go")
    parser.add_argument("--only", nargs="+", default=None, help="labels' prefixes to run (e.g. 'mmpo dpo')")
    parser.add_argument("--mmpo-override", action="append", default=[], metavar="KEY=VALUE",
                        help="an mmpo config key for every mmpo case (YAML value)")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from --out's results.json")
    args = parser.parse_args(argv)
    if args.out is None:
        from mmpo.paths import cache_dir

        args.out = str(cache_dir() / "bench" / "memory-profile")
    if args.render:
        saved = json.loads((Path(args.out) / "results.json").read_text())
        args.mix, args.steps = saved["meta"]["mix"], saved["meta"]["steps"]
        (Path(args.out) / "RESULTS.md").write_text(report(saved["meta"], saved["runs"], args))
        return
    from mmpo.models.embedded import embedded_model_path

    name, max_length, batch = args.mix.split(":")
    model = str(embedded_model_path())
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = build_data({name: (int(max_length), int(batch))}, args.steps, model, None)[name]
    rows = []
    command = " ".join(["python -m benchmarks memory", f"--mix {args.mix} --steps {args.steps} --out {args.out}"]
                       + ([f"--only {' '.join(repr(p) for p in args.only)}"] if args.only else [])
                       + [f"--mmpo-override {kv}" for kv in args.mmpo_override])
    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.mmpo_override)}
    for label, case, overrides in CASES:
        if args.only and not any(label.startswith(p) for p in args.only):
            continue
        spec = case_spec(case, name, data, 0, args.steps - 1, 1, model, os.cpu_count(), {**extra, **overrides})
        timeline_path = out / "logs" / f"{name}-{case}{'-nockpt' if overrides else ''}.timeline.json"
        spec["memory_timeline_path"] = str(timeline_path)
        result = run_child(spec, out / "logs")
        row = summarize(label, result, json.loads(timeline_path.read_text()))
        timeline_path.unlink()  # ~1 MB a run; the summary keeps what the report uses
        rows.append(row)
        write(out, command, started, rows, args)  # after every case: a failure later loses nothing measured
        print(f"{label}: peak {row['peak_rss_mib']:.0f} MiB (step {row['peak_step']}, {row['peak_phase']}), in use "
              f"{row['peak_in_use_mib'] or float('nan'):.0f} MiB, {row['median_step_s']:.2f} s/step", flush=True)
    print(f"wrote {out}/RESULTS.md")


def write(out: Path, command: str, started: float, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    meta = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "minutes": (time.time() - started) / 60, "load_1min_at_last_case": os.getloadavg()[0],
            "mix": args.mix, "steps": args.steps}
    blob = redact_paths({"meta": meta, "runs": rows}, path_replacements())
    (out / "results.json").write_text(json.dumps(blob, indent=1))
    (out / "RESULTS.md").write_text(report(meta, rows, args))


def report(meta: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["# Where peak memory is reached", "", f"- **Command:** `{meta['command']}`",
             f"- **Date (UTC):** {meta['date']}, {meta['minutes']:.1f} minutes; 1-minute load {meta['load_1min_at_last_case']:.2f} at the last case's end",
             f"- One process per case, mix `{args.mix}`, {args.steps} optimizer steps, the embedded model, full fine-tuning. "
             "Peak RSS: the process's peak resident set (what the benchmark compares). At the sampled peak: its "
             "file-backed part (shared libraries, and the model's weights, which `from_pretrained` maps from the "
             "safetensors file until training writes them), the anonymous rest, and glibc's peak bytes in use "
             "(`mallinfo2`). Anonymous memory above bytes in use: the trained weights once written (private copies of "
             "the mapped file's pages, outside malloc: 513 MiB for this model), the interpreter's own arenas, and "
             "what the allocator holds that no live object does (freed chunks, holes between live ones). Phases: "
             "forward (from the previous step's end), backward, optimizer step.", "",
             "| case | ran with | peak RSS MiB | reached in | file-backed at peak | anonymous at peak | peak in use | "
             "anonymous - in use | s/step |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ran = f"{r['mixed_precision']}, ckpt {'on' if r['gradient_checkpointing'] else 'off'}"
        anonymous = r["timeline_peak_rss_mib"] - r["file_backed_at_peak_mib"]
        in_use = r["peak_in_use_mib"]
        held = f"{anonymous - in_use:.0f}" if in_use is not None else "-"
        lines.append(f"| {r['label']} | {ran} | {r['peak_rss_mib']:.0f} | step {r['peak_step']}, {r['peak_phase']} | "
                     f"{r['file_backed_at_peak_mib']:.0f} | {anonymous:.0f} | "
                     f"{in_use if in_use is None else round(in_use)} | {held} | {r['median_step_s']:.2f} |")
    n = len(rows[0]["steps"])
    shown = sorted({i for i in (1, 2, 3, 5, 10, 20, 30, 40, n) if i <= n})
    lines += ["", f"The resident set's high-water mark by the end of each step (MiB); the harness ({DEFAULT_WARMUP} "
              f"warm-up + {DEFAULT_STEPS} timed steps) reads its peak at the end of step {DEFAULT_WARMUP + DEFAULT_STEPS}:", "", "| case | " + " | ".join(f"step {i}" for i in shown) + " |", "|---|" + "---:|" * len(shown)]
    for r in rows:
        marks = []
        for i in shown:
            marks.append(max(s[p]["rss_mib"] for s in r["steps"][:i] for p in s))
        lines.append(f"| {r['label']} | " + " | ".join(f"{m:.0f}" for m in marks) + " |")
    return "\n".join(lines) + "\n"

