"""mmpo's trainers against TRL's, side by side on one machine: steady-state step time and peak memory.

    bash benchmarks/run.sh trl             # builds the bench venv (TRL, outside the repo), then runs this suite
    python -m benchmarks trl --help        # in an environment with mmpo and TRL installed

Model: the embedded SmolLM2-135M-Instruct, full fine-tuning. Mixes (``--mix NAME:MAX_LENGTH:PAIRS_PER_STEP``):

* ``synthetic``: ``pairs.make_pairs`` (sequences 60-100% of max length, prompts ~30% of the tokens);
* ``real``: alpaca_graded instructions with two real model outputs each (``pairs.real_pairs``), responses cut by
  the trainers at max length (TRL's RewardTrainer drops over-long pairs instead, so the reward-model runs get the
  same pairs cut beforehand to fit);
* ``prompt-heavy``: synthetic, sequences 50-70% of max length, prompts 40-50% of the tokens.

A mix named ``KIND-ANYTHING`` is a mix of that kind, so one run can hold one kind at several lengths
(``--mix prompt-heavy-512:512:4 --mix prompt-heavy-1024:1024:4``).

Cases, on every mix: ``mmpo dpo`` / ``mmpo rm`` at mmpo's defaults (whatever this checkout's config gives; extra
keys with ``--mmpo-override``) and with the keys each setting needs (MMPO_ARGS); TRL 1.16's DPOTrainer (live
reference), DPOTrainer with ``precompute_ref_log_probs=True`` and RewardTrainer, each under every ``--settings`` entry
(SETTINGS below: each library's own defaults, which both checkpoint; like for like in bf16 and in float32 without
gradient checkpointing). Targets are checked per mix and setting (COMPARISONS).

Every run is its own process (``child.py``). Per repeat, mixes run in turn; within a mix the TRL and mmpo runs
alternate, and the order flips on every other repeat. Timing is steady state, ``t(warmup + steps) - t(warmup)``.
In the last repeat each run profiles one more step after its timed window (``--no-profile`` skips it); the
profiles of the cases behind a missed target are kept in ``profiles/`` beside ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Settings: (label, suffix of the mmpo cases, suffix of the TRL cases).
SETTINGS = {
    "defaults": ("each at its defaults (both: bf16 autocast, gradient checkpointing on)", "", ""),
    "bf16": ("like for like, bf16 autocast, no gradient checkpointing (mmpo with gradient_checkpointing: false)",
             "-bf16", "-bf16"),
    "fp32": ("like for like, float32, no gradient checkpointing", "-fp32", "-fp32"),
    "defaults-fp32": ("each at its defaults but in float32 (gradient checkpointing on)", "-ckpt-fp32", "-ckpt-fp32"),
}
# TRL arguments per case suffix; {} leaves TRL's own defaults (bf16=True, gradient_checkpointing=True in 1.16).
TRL_ARGS = {
    "": {},
    "-bf16": {"bf16": True, "gradient_checkpointing": False},
    "-fp32": {"bf16": False, "gradient_checkpointing": False},
    "-ckpt-fp32": {"bf16": False},
}
# mmpo config keys per case suffix; {} leaves mmpo's defaults (bf16: auto, gradient_checkpointing: true).
MMPO_ARGS = {
    "": {},
    "-bf16": {"gradient_checkpointing": False},
    "-fp32": {"bf16": False, "gradient_checkpointing": False},
    "-ckpt-fp32": {"bf16": False},
}


def _cases() -> dict[str, dict[str, Any]]:
    cases = {}
    for suffix, keys in MMPO_ARGS.items():
        for task in ("dpo", "rm"):
            cases[f"mmpo-{task}{suffix}"] = {"trainer": "mmpo", "task": task, "variant": "default", "mmpo_overrides": keys}
    for suffix, keys in TRL_ARGS.items():
        cases[f"trl-dpo{suffix}"] = {"trainer": "trl", "task": "dpo", "variant": "default", "trl_overrides": keys}
        cases[f"trl-dpo-pre{suffix}"] = {"trainer": "trl", "task": "dpo", "variant": "precompute", "trl_overrides": keys}
        cases[f"trl-rm{suffix}"] = {"trainer": "trl", "task": "rm", "variant": "default", "trl_overrides": keys}
    return cases


CASES = _cases()
# (name, mmpo case stem, TRL case stem, target ratio of mmpo's pairs/s over TRL's); setting suffixes are added.
COMPARISONS = [
    ("policy vs DPOTrainer", "mmpo-dpo", "trl-dpo", 2.0),
    ("policy vs DPOTrainer, precomputed reference", "mmpo-dpo", "trl-dpo-pre", 1.5),
    ("reward model vs RewardTrainer", "mmpo-rm", "trl-rm", 1.3),
]
DEFAULT_MIXES = ["synthetic:128:4", "real:256:4", "prompt-heavy:256:4"]
MIX_KINDS = ("synthetic", "real", "prompt-heavy")
# Two warm-up steps: the first allocates Adam's state, the second still page-faults in its memory around it
# (README.md, "Method"). Peak memory is read at the end of the timed window.
DEFAULT_WARMUP, DEFAULT_STEPS = 2, 2


def comparisons(settings: list[str]) -> list[tuple[str, str, str, str, float]]:
    """(setting, name, mmpo case, TRL case, target) for the settings asked."""
    return [(s, name, ours + SETTINGS[s][1], theirs + SETTINGS[s][2], target)
            for s in settings for name, ours, theirs, target in COMPARISONS]


def cases_for(settings: list[str]) -> list[str]:
    needed = {c for _, _, ours, theirs, _ in comparisons(settings) for c in (ours, theirs)}
    return [c for c in CASES if c in needed]


def run_order(cases: list[str], repeat: int) -> list[str]:
    """Per task, TRL runs in groups with one mmpo run between groups (TRL, mmpo, TRL, ...); reversed on odd repeats."""
    order = []
    for task in ("dpo", "rm"):
        ours = [c for c in cases if CASES[c]["task"] == task and CASES[c]["trainer"] == "mmpo"]
        theirs = [c for c in cases if CASES[c]["task"] == task and CASES[c]["trainer"] == "trl"]
        groups = len(ours) + 1
        for i in range(groups):
            order += theirs[i * len(theirs) // groups : (i + 1) * len(theirs) // groups]
            if i < len(ours):
                order.append(ours[i])
    return order[::-1] if repeat % 2 else order


# --- runs ----------------------------------------------------------------------------------------------------
def case_spec(case: str, mix: str, data: dict[str, Any], repeat: int, steps: int, warmup: int, model_path: str,
              threads: int | None = None, mmpo_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``child.py`` runs for ``case`` on ``mix`` (``data``: that mix's entry from :func:`build_data`); extra mmpo
    config keys go to mmpo cases only."""
    c = CASES[case]
    return {"case": case, "mix": mix, "repeat": repeat, "trainer": c["trainer"], "task": c["task"],
            "variant": c["variant"], "max_length": data["max_length"], "batch_size": data["batch"],
            "timed_steps": steps, "warmup_steps": warmup, "model_path": model_path,
            "data_mmpo": data["files"][c["task"]]["mmpo"], "data_trl": data["files"][c["task"]]["trl"],
            "threads": threads, "trl_overrides": c.get("trl_overrides", {}),
            "mmpo_overrides": {**c.get("mmpo_overrides", {}), **(mmpo_overrides or {})} if c["trainer"] == "mmpo" else {}}


def run_child(spec: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    """Run one case in a fresh process and return its result (``child.py`` writes it)."""
    with tempfile.TemporaryDirectory(prefix="mmpo-bench-") as tmp:
        spec = {**spec, "output_dir": str(Path(tmp) / "out")}
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        log = log_dir / f"{spec.get('mix', 'mix')}-{spec['case']}-r{spec['repeat']}.log"
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
               "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        # Each run tokenizes its own data, as a user's run would: no shared datasets cache between runs.
        env["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets")
        t = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.run([sys.executable, str(HERE / "child.py"), str(spec_path), str(result_path)],
                                  stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0 or not result_path.exists():
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{spec['case']} on {spec.get('mix')} failed (exit {proc.returncode}); log {log}:\n{tail}")
        result = json.loads(result_path.read_text())
    result["process_wall_seconds"] = time.perf_counter() - t
    return result


def derive(result: dict[str, Any], mean_tokens_per_pair: float) -> dict[str, Any]:
    """Steady-state throughput of one run: pairs/s, seconds per step, and the pairs' tokens per second (the
    tokens of prompt + chosen and prompt + rejected after the max-length cut: the same data for every trainer)."""
    pairs = result["timed_steps"] * result["batch_size"]
    pairs_per_s = pairs / result["timed_seconds"]
    return {"pairs_per_s": pairs_per_s, "seconds_per_step": result["timed_seconds"] / result["timed_steps"],
            "tokens_per_s": pairs_per_s * mean_tokens_per_pair,
            # On a GPU the memory that limits a run is the device's.
            "peak_mib": result["peak_gpu_mib"] if result.get("peak_gpu_mib") is not None else result["peak_rss_mib"]}


def wait_until_quiet(threshold: float, poll_s: float, max_wait_s: float) -> float:
    start = time.time()
    while True:
        load = os.getloadavg()[0]
        if load < threshold or time.time() - start > max_wait_s:
            return load
        print(f"waiting for a quiet machine: 1-min load {load:.2f} >= {threshold}", flush=True)
        time.sleep(poll_s)


# --- data ----------------------------------------------------------------------------------------------------
def find_real_data(explicit: str | None) -> Path:
    """``explicit``, else ``$MMPO_ALPACA_GRADED``, else ``shared/data/alpaca_graded`` beside the repository (or
    beside the directory holding it, for worktrees)."""
    candidates = [Path(p) for p in (explicit, os.environ.get("MMPO_ALPACA_GRADED")) if p]
    candidates += [base / "shared" / "data" / "alpaca_graded" for base in (REPO.parent, REPO.parent.parent)]
    for path in candidates:
        path = path / "responses.jsonl.gz" if path.is_dir() else path
        if path.is_file():
            return path
    raise SystemExit("alpaca_graded responses.jsonl.gz not found: pass --real-data PATH or set $MMPO_ALPACA_GRADED")


def build_data(mixes: dict[str, tuple[int, int]], n_steps: int, model_path: str, real_data: Path | None) -> dict[str, Any]:
    """Per mix: data files for each trainer and task, and the token statistics of the pairs.

    Exactly ``n_steps`` batches of pairs (one epoch), so TRL's precomputation scores no pair that is not trained on.
    """
    from transformers import AutoTokenizer

    from mmpo.paths import cache_dir
    from .pairs import make_pairs, real_pairs, token_stats, write_pairs

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    out = {}
    for mix, (L, batch) in mixes.items():
        n = n_steps * batch
        kind = mix_kind(mix)
        root = cache_dir() / "bench" / f"{kind}-L{L}-n{n}"
        if kind == "synthetic":
            pairs = make_pairs(tokenizer, n, L, seed=L)
            files = {"dpo": write_pairs(pairs, root), "rm": None}
        elif kind == "prompt-heavy":
            pairs = make_pairs(tokenizer, n, L, seed=L + 1, fill_low=0.5, fill_high=0.7, prompt_share=0.48)
            files = {"dpo": write_pairs(pairs, root), "rm": None}
        elif kind == "real":
            assert real_data is not None
            pairs = real_pairs(tokenizer, real_data, n, L, seed=0)
            fitted = real_pairs(tokenizer, real_data, n, L, seed=0, fit=True)
            files = {"dpo": write_pairs(pairs, root), "rm": write_pairs(fitted, root / "fitted")}
        files["rm"] = files["rm"] or files["dpo"]
        stats = token_stats(pairs, L)
        print(f"{mix}: L={L}, {batch} pairs/step, {stats['mean_tokens_per_pair']:.0f} tokens/pair, prompts "
              f"{stats['prompt_share']:.0%} of tokens, chosen cut {stats['chosen_cut']:.0%}", flush=True)
        out[mix] = {"max_length": L, "batch": batch, "n_pairs": n, **stats,
                    "files": {task: {k: str(v) for k, v in paths.items()} for task, paths in files.items()}}
    return out


def tiny_model(like: str) -> str:
    """A randomly initialised 2-layer, hidden-64 copy of ``like``'s architecture with its tokenizer, under the cache:
    for smoke runs of the whole matrix (``--model tiny``); its timings mean nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmpo.paths import cache_dir

    path = cache_dir() / "bench" / "tiny-model"
    if not (path / "config.json").exists():
        config = AutoConfig.from_pretrained(like)
        config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16})
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        AutoTokenizer.from_pretrained(like).save_pretrained(path)
    return str(path)


# --- provenance ----------------------------------------------------------------------------------------------
def gpu_description() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


def machine_description() -> str:
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, native bf16: {'/'.join(bf16) or 'none'}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def versions() -> str:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "accelerate", "datasets", "trl"))


def checkout() -> str:
    """The mmpo measured: its version and, for a git checkout, its commit (never a path of this machine)."""
    import mmpo

    src = Path(mmpo.__file__).resolve().parents[2]
    version = f"mmpo {getattr(mmpo, '__version__', '')}".strip()
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return version
    return f"{version} at {commit}{' with uncommitted changes under src/' if dirty else ''}"


def redact_paths(value: Any, replacements: dict[str, str]) -> Any:
    """``value`` (nested dicts, lists, strings) with every prefix in ``replacements`` swapped for its stand-in, so
    results carry no path of the machine they ran on (``{"/srv/cache/mmpo": "$MMPO_CACHE"}``)."""
    if isinstance(value, dict):
        return {k: redact_paths(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_paths(v, replacements) for v in value]
    if isinstance(value, str):
        for prefix in sorted(replacements, key=len, reverse=True):
            value = value.replace(prefix, replacements[prefix])
    return value


def path_replacements() -> dict[str, str]:
    """This machine's paths that end up in results, and what stands in for them."""
    from mmpo.paths import cache_dir

    return {str(cache_dir()): "$MMPO_CACHE", str(REPO): ".", tempfile.gettempdir(): "$TMPDIR", str(Path.home()): "~"}


# --- main ----------------------------------------------------------------------------------------------------
def mix_kind(name: str) -> str:
    """The kind of data a mix named ``name`` holds: ``name`` itself or, for ``KIND-ANYTHING``, ``KIND``."""
    for kind in MIX_KINDS:
        if name == kind or name.startswith(kind + "-"):
            return kind
    raise SystemExit(f"unknown mix {name!r}: a mix is named after its kind ({', '.join(MIX_KINDS)}), optionally with a -SUFFIX")


def parse_mixes(items: list[str]) -> dict[str, tuple[int, int]]:
    """``["real:256:2", ...]`` -> ``{"real": (256, 2), ...}``; every name must be of a known kind (:func:`mix_kind`)."""
    out = {}
    for item in items:
        try:
            name, length, batch = item.split(":")
            out[name] = (int(length), int(batch))
        except ValueError:
            raise SystemExit(f"--mix wants NAME:MAX_LENGTH:PAIRS_PER_STEP, got {item!r}") from None
        mix_kind(name)
    return out


def main(argv: list[str]) -> tuple[Path, Path, Path]:
    """Run the cases and write ``results.json``; returns it, where ``RESULTS.md`` goes, and the profiles folder
    (``python -m benchmarks trl`` renders the report with :func:`benchmarks.report.finish_run`)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks trl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", action="append", default=None, metavar="NAME:MAX_LENGTH:PAIRS_PER_STEP",
                    help=f"a data mix (repeatable; default {' '.join(DEFAULT_MIXES)})")
    ap.add_argument("--settings", nargs="+", default=["defaults", "bf16", "fp32"], choices=list(SETTINGS))
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed steps before the timed window")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--mmpo-override", action="append", default=[], metavar="KEY=VALUE",
                    help="mmpo config key for every mmpo run (e.g. prefix_sharing=false)")
    ap.add_argument("--model", default=None, help="a model directory instead of the embedded SmolLM2-135M-Instruct; "
                    "'tiny': a 2-layer random one with its tokenizer, for smoke runs")
    ap.add_argument("--only", nargs="+", default=None, metavar="CASE",
                    help="run only these cases (e.g. mmpo-dpo mmpo-rm); comparisons missing a side are left out")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled step in the last repeat")
    ap.add_argument("--real-data", default=None, help="alpaca_graded responses.jsonl.gz (default: see find_real_data)")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                    help="first wait (up to 30 min) for the 1-minute load average to drop below LOAD")
    ap.add_argument("--invocation", default=None, help="the command that ran this, for the report")
    ap.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md, results.json and profiles/ go")
    args = ap.parse_args(argv)

    import yaml

    from mmpo.models.embedded import embedded_model_path

    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    mixes = parse_mixes(args.mix or DEFAULT_MIXES)
    cases = cases_for(args.settings)
    if args.only:
        unknown = sorted(set(args.only) - set(cases))
        if unknown:
            raise SystemExit(f"--only: unknown cases {unknown}; choose from {cases}")
        cases = [c for c in cases if c in args.only]
    mmpo_overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.mmpo_override)}
    load_before = wait_until_quiet(args.wait_quiet, 30, 1800) if args.wait_quiet else os.getloadavg()[0]
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    if args.model and args.model != "tiny":
        model_path = args.model
    else:
        model_path = str(embedded_model_path())
        if args.model == "tiny":
            model_path = tiny_model(model_path)
    profile = not args.no_profile
    real = find_real_data(args.real_data) if any(mix_kind(m) == "real" for m in mixes) else None
    data = build_data(mixes, args.warmup + args.steps + profile, model_path, real)
    from mmpo.paths import cache_dir

    log_dir = cache_dir() / "bench" / "logs"
    (log_dir / "profiles").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    loads: list[float] = [load_before]
    total = args.repeats * len(mixes) * len(cases)
    for repeat in range(args.repeats):
        if repeat == 1:
            so_far = (time.perf_counter() - t_start) / 60
            print(f"first repeat done at {so_far:.1f} min: the whole run will take about {so_far * args.repeats:.0f} min", flush=True)
        for mix, d in data.items():
            for case in run_order(cases, repeat):
                spec = case_spec(case, mix, d, repeat, args.steps, args.warmup, model_path, args.threads, mmpo_overrides)
                if profile and repeat == args.repeats - 1:
                    spec["profile_path"] = str(log_dir / "profiles" / f"{mix}-{case}.txt")
                loads.append(os.getloadavg()[0])
                result = run_child(spec, log_dir)
                result.update(derive(result, d["mean_tokens_per_pair"]))
                results.append(result)
                print(f"[{len(results)}/{total} {(time.perf_counter() - t_start) / 60:5.1f} min] {mix:12s} {case:18s} "
                      f"r{repeat} {result['seconds_per_step']:6.2f} s/step {result['pairs_per_s']:6.3f} pairs/s "
                      f"peak {result['peak_mib']:6.0f} MiB ({result['mixed_precision']}, ckpt "
                      f"{'on' if result['gradient_checkpointing'] else 'off'}) load {loads[-1]:.2f}", flush=True)
    meta = {
        "command": args.invocation or "python -m benchmarks trl " + " ".join(shlex.quote(a) for a in argv),
        "bench_command": "python -m benchmarks trl " + " ".join(shlex.quote(a) for a in argv),
        "started_utc": started.isoformat(timespec="seconds"),
        "minutes": (time.perf_counter() - t_start) / 60,
        "machine": machine_description(),
        "gpu": gpu_description(),
        "versions": versions(),
        "mmpo_checkout": checkout(),
        "loadavg_1min": {"before": load_before, "max_during": max(loads), "mean_during": statistics.mean(loads)},
        "threads": args.threads,
        "mixes": data,
        "settings": args.settings,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "mmpo_overrides": mmpo_overrides,
        "model": args.model or "embedded",
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, out_path = args.out_dir / "results.json", args.out_dir / "RESULTS.md"
    blob = redact_paths({"meta": meta, "results": results}, path_replacements())
    json_path.write_text(json.dumps(blob, indent=1))
    return json_path, out_path, log_dir / "profiles"
