"""RESULTS.md from ``results.json`` (written by the ``trl`` suite, ``bench.py``).

    python -m benchmarks report [results.json] [RESULTS.md]

Numbers per case are medians over repeats; a target's ratio divides medians from the same command, and its range
is the spread of the per-repeat ratios (run r of mmpo over run r of TRL).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .bench import CASES, SETTINGS, comparisons, mix_kind

HERE = Path(__file__).resolve().parent

TASK_LABELS = {
    ("mmpo", "dpo", "default"): "mmpo dpo",
    ("mmpo", "rm", "default"): "mmpo rm",
    ("trl", "dpo", "default"): "TRL DPOTrainer, live reference",
    ("trl", "dpo", "precompute"): "TRL DPOTrainer, precompute_ref_log_probs",
    ("trl", "rm", "default"): "TRL RewardTrainer",
}
MIX_LABELS = {
    "synthetic": "synthetic word pairs (`pairs.make_pairs`)",
    "real": "alpaca_graded: real instructions and model outputs, cut at max length by each trainer "
            "(RewardTrainer runs: cut beforehand, as it drops over-long pairs)",
    "prompt-heavy": "synthetic, long prompts (`pairs.make_pairs`, prompt_share 0.48)",
}


def label(case: str) -> str:
    c = CASES[case]
    extra = {"mmpo_overrides": c.get("mmpo_overrides"), "trl_overrides": c.get("trl_overrides")}
    keys = ", ".join(f"{k}={v}" for d in extra.values() if d for k, v in d.items())
    return TASK_LABELS[(c["trainer"], c["task"], c["variant"])] + (f": {keys}" if keys else ": defaults")


def group(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["mix"], r["case"])].append(r)
    return groups


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats, the spread of pairs/s ((max - min) / median), and what the runs ran with."""
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("seconds_per_step", "pairs_per_s", "tokens_per_s", "peak_mib", "setup_seconds")}
    rates = [r["pairs_per_s"] for r in runs]
    med["spread"] = (max(rates) - min(rates)) / med["pairs_per_s"]
    med["step_range"] = (min(r["seconds_per_step"] for r in runs), max(r["seconds_per_step"] for r in runs))
    med["runs"] = len(runs)
    ran = {(r["mixed_precision"], r["param_dtype"], r["gradient_checkpointing"], r["models_held"]) for r in runs}
    med["ran_with"] = sorted(ran)
    return med


def verdicts(blob: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mix x setting x comparison: median ratio, per-repeat ratio range, memory ratio, met or not."""
    groups = group(blob["results"])
    rows = []
    for mix in blob["meta"]["mixes"]:
        for setting, name, ours, theirs, target in comparisons(blob["meta"]["settings"]):
            a, b = groups.get((mix, ours)), groups.get((mix, theirs))
            if not a or not b:
                continue
            sa, sb = summarise(a), summarise(b)
            by_repeat = {r["repeat"]: r["pairs_per_s"] for r in b}
            paired = [r["pairs_per_s"] / by_repeat[r["repeat"]] for r in a if r["repeat"] in by_repeat]
            ratio, mem = sa["pairs_per_s"] / sb["pairs_per_s"], sa["peak_mib"] / sb["peak_mib"]
            rows.append({"mix": mix, "setting": setting, "name": name, "ours": ours, "theirs": theirs, "target": target,
                         "ratio": ratio, "paired": (min(paired), max(paired)), "met": ratio >= target,
                         "memory": mem, "memory_met": mem <= 1.0,
                         "ours_precision": sorted({r["mixed_precision"] for r in a})})
    return rows


def missed_cases(json_path: Path) -> list[tuple[str, str]]:
    """(mix, case) of both sides of every missed target (throughput or memory)."""
    blob = json.loads(Path(json_path).read_text())
    out: list[tuple[str, str]] = []
    for v in verdicts(blob):
        if not (v["met"] and v["memory_met"]):
            out += [p for p in ((v["mix"], v["ours"]), (v["mix"], v["theirs"])) if p not in out]
    return out


def precision(ran_with: list[tuple]) -> str:
    parts = []
    for mixed, dtype, ckpt, models in ran_with:
        mode = "bf16 autocast" if mixed == "bf16" else (dtype if mixed == "no" else mixed)
        parts.append(f"{mode}, ckpt {'on' if ckpt else 'off'}{', live reference' if models > 1 else ''}")
    return "; ".join(parts)


def profile_table(result: dict[str, Any] | None, n: int = 8) -> list[str]:
    if not result or "profile" not in result:
        return ["(no profile: the run was not profiled)"]
    p = result["profile"]
    lines = [f"one profiled step: {p['seconds']:.2f} s wall, {p['self_cpu_seconds']:.2f} s self CPU (profiler overhead included)",
             "", "| op | self CPU s | share | calls |", "|---|---:|---:|---:|"]
    for name, secs, calls in p["top_ops"][:n]:
        lines.append(f"| `{name}` | {secs:.3f} | {secs / p['self_cpu_seconds']:.0%} | {calls} |")
    return lines


def write_report(json_path: Path, out_path: Path) -> None:
    blob = json.loads(Path(json_path).read_text())
    meta, results = blob["meta"], blob["results"]
    groups = group(results)
    rows = verdicts(blob)
    load = meta["loadavg_1min"]
    lines = [
        "# mmpo against TRL: steady-state step time and peak memory",
        "",
        "Generated by `python -m benchmarks trl` (rendering: `python -m benchmarks report`); raw numbers in `results.json` beside this file; the method in [README.md](README.md).",
        "",
        f"- **Command:** `{meta['command']}`" + (f" (runs `{meta['bench_command']}` in the bench venv from `benchmarks/setup.sh`)"
                                                 if meta["bench_command"] != meta["command"] else ""),
        f"- **Date (UTC):** {meta['started_utc']}, {meta['minutes']:.1f} minutes",
        f"- **Machine:** {meta['machine']}; torch threads {meta['threads']}",
        f"- **Versions:** {meta['versions']}; {meta['mmpo_checkout']}"
        + (f", extra mmpo keys {meta['mmpo_overrides']}" if meta["mmpo_overrides"] else ""),
        f"- **Load:** 1-minute load average {load['before']:.2f} before the run, {load['mean_during']:.2f} mean / "
        f"{load['max_during']:.2f} max at the starts of the runs (a shared machine makes timings meaningless; "
        "well above 1 on 2 cores is not benchmark grade)",
        f"- **Size:** {meta['repeats']} repeats per case, {meta['warmup']} warm-up + {meta['steps']} timed steps per run; "
        "mixes " + ", ".join(f"{m}: max length {d['max_length']}, {d['batch']} pairs/step" for m, d in meta["mixes"].items())
        + " (set with BENCH_REPEATS, BENCH_WARMUP, BENCH_STEPS, BENCH_MIXES; see `benchmarks/run.sh`)",
        (f"- **GPU:** {meta['gpu']}; times are GPU steps (synchronised at each step's end), peak memory is "
         "`torch.cuda.max_memory_allocated`." if meta.get("gpu") else "- **GPU:** none; every number is CPU."),
        "",
        "## Setup",
        "",
        "- Model: " + {"embedded": "the embedded SmolLM2-135M-Instruct",
                       "tiny": "**a 2-layer, hidden-64 random model** with SmolLM2's tokenizer (`--model tiny`): a smoke"
                               " run, its timings mean nothing"}.get(meta.get("model", "embedded"), f"`{meta.get('model')}`")
        + ", full fine-tuning, AdamW, seed 42. Both libraries get the same pairs"
        " (mmpo in its local schema, TRL in its conversational format), max length, pairs per step and steps.",
        "- Time: steady state, t(warm-up + timed steps) - t(warm-up steps) from the wall clock at each optimizer step's"
        " end; model loading, tokenization and reference precomputation are outside it (setup s). Throughput: pairs/s;"
        " tokens/s counts each pair's prompt + chosen and prompt + rejected tokens after the max-length cut (the same"
        " data for every trainer, whatever it feeds its model). Peak memory: the process's peak resident set at the end"
        " of the timed window (model load and precomputation included).",
        "- Each run is its own process. Per repeat the mixes run in turn; within a mix TRL and mmpo runs alternate"
        " (TRL, mmpo, TRL, ...), reversed every other repeat.",
        "- TRL runs get `use_cpu=True` on a CPU (transformers refuses TRL's bf16 default on a CPU without it).",
        "- Settings: " + "; ".join(f"**{s}**: {SETTINGS[s][0]}" for s in meta["settings"]) + ".",
        "",
        "| mix | data | max length | pairs/step | tokens/pair | prompt tokens | prompts' share of tokens | chosen cut | rejected cut |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mix, d in meta["mixes"].items():
        lines.append(f"| {mix} | {MIX_LABELS[mix_kind(mix)]} | {d['max_length']} | {d['batch']} | {d['mean_tokens_per_pair']:.0f} | "
                     f"{d['mean_prompt_tokens']:.0f} | {d['prompt_share']:.0%} | {d['chosen_cut']:.0%} | {d['rejected_cut']:.0%} |")
    lines += ["", "## Runs (median over repeats)", ""]
    for mix in meta["mixes"]:
        lines += [f"### {mix}", "",
                  "| case | ran with | s/step | min-max | pairs/s | tokens/s | peak MiB | setup s | runs (spread) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for case in CASES:
            if (mix, case) not in groups:
                continue
            s = summarise(groups[(mix, case)])
            lines.append(f"| {label(case)} | {precision(s['ran_with'])} | {s['seconds_per_step']:.2f} | "
                         f"{s['step_range'][0]:.2f}-{s['step_range'][1]:.2f} | {s['pairs_per_s']:.3f} | {s['tokens_per_s']:.0f} | "
                         f"{s['peak_mib']:.0f} | {s['setup_seconds']:.0f} | {s['runs']} ({s['spread']:.0%}) |")
        lines.append("")
    lines += ["## Targets (ratios of medians from this one command)", "",
              "Policy >= 2.0x TRL's DPOTrainer and >= 1.5x DPOTrainer with precomputed reference log-probs; reward model"
              " >= 1.3x RewardTrainer; peak memory <= TRL's. Range: the per-repeat ratios.", "",
              "| mix | setting | comparison | ratio | range | target | met? | memory ours / theirs | memory met? |",
              "|---|---|---|---:|---:|---:|---|---:|---|"]
    for v in rows:
        note = "" if v["setting"] != "bf16" or v["ours_precision"] == ["bf16"] else \
            f" (mmpo ran {'/'.join('float32' if p == 'no' else p for p in v['ours_precision'])})"
        speed = "met" if v["met"] else "NOT met ({:+.0%})".format(v["ratio"] / v["target"] - 1)
        memory = "met" if v["memory_met"] else "NOT met (+{:.0%})".format(v["memory"] - 1)
        lines.append(
            f"| {v['mix']} | {v['setting']}{note} | {v['name']} | {v['ratio']:.2f}x | {v['paired'][0]:.2f}-{v['paired'][1]:.2f} | "
            f"{v['target']:.1f}x | {speed} | {v['memory']:.2f} | {memory} |")
    met = sum(v["met"] for v in rows) + sum(v["memory_met"] for v in rows)
    lines += ["", f"Summary: {met} of {2 * len(rows)} throughput/memory checks met."]
    misses = [v for v in rows if not (v["met"] and v["memory_met"])]
    if misses:
        lines += ["", "## Profiles of the misses", "",
                  "Each run of the last repeat profiled one more step after its timed window (torch.profiler, CPU ops by"
                  " self time); full tables in `profiles/MIX-CASE.txt` beside this file. A CPU profile does not"
                  " explain memory: for a memory miss, the `memory` case (`python -m benchmarks memory`) shows where each"
                  " trainer's peak is reached, phase by phase over a longer run, and how much of it glibc holds"
                  " beyond its bytes in use."]
        last = {(r["mix"], r["case"]): r for r in results if r["repeat"] == meta["repeats"] - 1}
        for v in misses:
            what = [] if v["met"] else [f"{v['ratio']:.2f}x against {v['target']:.1f}x"]
            what += [] if v["memory_met"] else [f"memory {v['memory']:.2f}x TRL's"]
            lines += ["", f"### {v['mix']}, {v['setting']}: {v['name']}: {', '.join(what)}", ""]
            for side in ("ours", "theirs"):
                lines += [f"`{v[side]}`: " + "\n".join(profile_table(last.get((v["mix"], v[side])))), ""]
    out_path.write_text("\n".join(lines) + "\n")


def finish_run(json_path: Path, out_path: Path, profiles: Path) -> None:
    """After a run: keep the profiles behind its misses (from this run only) beside the results, and render
    ``RESULTS.md`` from ``results.json``."""
    import shutil

    kept = json_path.parent / "profiles"
    shutil.rmtree(kept, ignore_errors=True)
    for mix, case in missed_cases(json_path):
        src = profiles / f"{mix}-{case}.txt"
        if src.exists():
            kept.mkdir(exist_ok=True)
            shutil.copy(src, kept / src.name)
    write_report(json_path, out_path)
    minutes = json.loads(json_path.read_text())["meta"]["minutes"]
    print(f"wrote {out_path} and {json_path} ({minutes:.1f} min)")


def main(argv: list[str]) -> None:
    """``[results.json] [RESULTS.md]``, both defaulting to the files beside this module."""
    json_path = Path(argv[0]) if argv else HERE / "results.json"
    out = Path(argv[1]) if len(argv) > 1 else HERE / "RESULTS.md"
    write_report(json_path, out)
    print(f"wrote {out}")
