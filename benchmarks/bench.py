"""mmpo's trainers against TRL's, side by side on one machine: throughput, peak memory and FLOP utilisation.

    bash benchmarks/setup.sh                                   # bench venv with TRL (outside the repo)
    ~/.cache/mmpo/bench-venv/bin/python benchmarks/bench.py    # the full matrix -> benchmarks/RESULTS.md

Cases, each at every ``--lengths`` value, on the embedded SmolLM2-135M-Instruct, full fine-tuning, float32:

* ``mmpo dpo`` (its defaults) against TRL's ``DPOTrainer`` (its default live reference model) and against
  ``DPOTrainer`` with ``precompute_ref_log_probs=True``;
* ``mmpo rm`` against TRL's ``RewardTrainer``.

Every run is its own process (``child.py``); within a length and repeat the runs alternate between the two
libraries, and the order flips on every other repeat. The same synthetic pairs (``pairs.py``), max length, batch
size, steps, learning rate, seed and gradient-checkpointing setting go to both.

FLOPs convention: ``6 * N * tokens`` for a forward + backward of the trained model and ``2 * N * tokens`` for a
no-grad forward done during the timed steps (a live reference model), with N the weights of every
``nn.Linear`` (the tied LM head counted once; attention-score FLOPs not counted) and tokens the non-pad tokens the
models were actually fed, counted by hooks. FLOP utilisation = achieved FLOP/s over the float32 matmul rate
measured in the same command with the same thread count.
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
sys.path.insert(0, str(HERE))

ORDER = ["trl-dpo", "mmpo-dpo", "trl-dpo-precompute", "mmpo-rm", "trl-rm"]
CASES = {
    # name: (trainer, task, variant)
    "mmpo-dpo": ("mmpo", "dpo", "default"),
    "trl-dpo": ("trl", "dpo", "default"),
    "trl-dpo-precompute": ("trl", "dpo", "precompute"),
    "mmpo-rm": ("mmpo", "rm", "default"),
    "trl-rm": ("trl", "rm", "default"),
}
# ours / theirs: (numerator case, denominator case, target ratio)
COMPARISONS = [
    ("DPO vs TRL default", "mmpo-dpo", "trl-dpo", 1.5),
    ("DPO vs TRL precomputed ref", "mmpo-dpo", "trl-dpo-precompute", 1.15),
    ("RM vs TRL RewardTrainer", "mmpo-rm", "trl-rm", 1.3),
]


# --- matmul rate ---------------------------------------------------------------------------------------------
def matmul_rate(n: int = 2048, repeats: int = 7, threads: int | None = None) -> float:
    """Best-of-``repeats`` float32 ``torch.matmul`` rate on ``n x n`` matrices, FLOP/s (``2 n^3`` per product)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure_matmul_in_subprocess(threads: int) -> float:
    out = subprocess.run(
        [sys.executable, str(HERE / "bench.py"), "matmul", "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


# --- runs ----------------------------------------------------------------------------------------------------
def run_child(spec: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    """Run one case in a fresh process; its result plus the kernel's peak RSS for it (``wait4``)."""
    with tempfile.TemporaryDirectory(prefix="mmpo-bench-") as tmp:
        spec = {**spec, "output_dir": str(Path(tmp) / "out")}
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        log = log_dir / f"{spec['case']}-L{spec['max_length']}-r{spec['repeat']}.log"
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
               "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        # Each run tokenizes its own data, as a user's run would: no shared datasets cache between runs.
        env["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets")
        t = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.Popen([sys.executable, str(HERE / "child.py"), str(spec_path), str(result_path)],
                                    stdout=f, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not result_path.exists():
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{spec['case']} L={spec['max_length']} failed (exit {proc.returncode}); log {log}:\n{tail}")
        result = json.loads(result_path.read_text())
    result["wait4_maxrss_mib"] = usage.ru_maxrss / 1024
    result["process_wall_seconds"] = wall
    return result


def derive(result: dict[str, Any], matmul_flops: float) -> dict[str, Any]:
    """Throughput and FLOP utilisation of one run's timed window."""
    timed, secs, n = result["timed"], result["timed_seconds"], result["n_params_matmul"]
    pairs = result["timed_steps"] * result["batch_size"]
    flops = 6 * n * timed["grad_tokens"] + 2 * n * timed["nograd_tokens"]
    return {
        "pairs_per_s": pairs / secs,
        "tokens_per_s": timed["grad_tokens"] / secs,
        "padded_fraction": 1 - timed["grad_tokens"] / max(1, timed["grad_padded"]),
        "flops": flops,
        "mfu": flops / secs / matmul_flops,
        "policy_fwd_bwd_mfu": 6 * n * timed["grad_tokens"] / secs / matmul_flops,
        "peak_mib": max(result["peak_rss_mib"], result.get("wait4_maxrss_mib", 0.0)),
    }


def wait_until_quiet(threshold: float, poll_s: float, max_wait_s: float) -> float:
    start = time.time()
    while True:
        load = os.getloadavg()[0]
        if load < threshold or time.time() - start > max_wait_s:
            return load
        print(f"waiting for a quiet machine: 1-min load {load:.2f} >= {threshold}", flush=True)
        time.sleep(poll_s)


def parse_per_length(text: str, lengths: list[int]) -> dict[int, int]:
    """``"4"`` -> the same for every length; ``"128:4,512:2,1024:1"`` -> per length."""
    if ":" not in text:
        return {L: int(text) for L in lengths}
    table = {int(k): int(v) for k, v in (item.split(":") for item in text.split(","))}
    missing = [L for L in lengths if L not in table]
    if missing:
        raise SystemExit(f"no value given for lengths {missing} in {text!r}")
    return table


def build_data(lengths: list[int], batch: dict[int, int], steps: dict[int, int], warmup: int, model_path: str) -> dict[int, dict[str, Any]]:
    from transformers import AutoTokenizer

    from mmpo.paths import cache_dir
    from pairs import make_pairs, write_pairs

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    out = {}
    for L in lengths:
        # Exactly one epoch of pairs: so TRL's precomputation scores no pair that is not trained on.
        n_pairs = (warmup + steps[L]) * batch[L]
        pairs = make_pairs(tokenizer, n_pairs, L, seed=L)
        paths = write_pairs(pairs, cache_dir() / "bench" / f"pairs-L{L}-n{n_pairs}")
        tokens = [p["chosen_tokens"] + p["rejected_tokens"] for p in pairs]
        out[L] = {"mmpo": str(paths["mmpo"]), "trl": str(paths["trl"]), "n_pairs": n_pairs,
                  "mean_tokens_per_pair": statistics.mean(tokens),
                  "mean_prompt_tokens": statistics.mean(p["prompt_tokens"] for p in pairs)}
    return out


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    import importlib.metadata as md

    return ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "accelerate", "datasets", "trl", "mmpo"))


def main_run(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--batch", default="128:4,512:2,1024:1", help="pairs per step: N or L:N,L:N")
    ap.add_argument("--steps", default="128:6,512:3,1024:2", help="timed steps: N or L:N,L:N")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed window")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--mmpo-override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra mmpo config key for the mmpo runs (e.g. torch_compile=true)")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                    help="first wait (up to 30 min) for the 1-minute load average to drop below LOAD")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=HERE / "results.json")
    args = ap.parse_args(argv)

    import yaml

    from mmpo.models.embedded import embedded_model_path

    load_before = wait_until_quiet(args.wait_quiet, 30, 1800) if args.wait_quiet else os.getloadavg()[0]
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    model_path = str(embedded_model_path())
    batch = parse_per_length(args.batch, args.lengths)
    steps = parse_per_length(args.steps, args.lengths)
    data = build_data(args.lengths, batch, steps, args.warmup, model_path)
    mmpo_overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.mmpo_override)}
    matmul = [measure_matmul_in_subprocess(args.threads)]
    print(f"matmul rate: {matmul[0] / 1e9:.1f} GFLOP/s", flush=True)
    log_dir = HERE / "logs"
    log_dir.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    loads: list[float] = [load_before]
    for L in args.lengths:
        for repeat in range(args.repeats):
            # Libraries alternate run by run (trl, mmpo, trl, mmpo, trl); every other repeat runs in reverse.
            order = [c for c in ORDER if c in args.cases]
            if repeat % 2:
                order.reverse()
            for case in order:
                trainer, task, variant = CASES[case]
                spec = {"case": case, "trainer": trainer, "task": task, "variant": variant, "repeat": repeat,
                        "max_length": L, "batch_size": batch[L], "timed_steps": steps[L], "warmup_steps": args.warmup,
                        "model_path": model_path, "data_mmpo": data[L]["mmpo"], "data_trl": data[L]["trl"],
                        "threads": args.threads, "mmpo_overrides": mmpo_overrides if trainer == "mmpo" else {}}
                loads.append(os.getloadavg()[0])
                result = run_child(spec, log_dir)
                result.update(derive(result, matmul[0]))
                results.append(result)
                print(f"L={L:5d} {case:20s} r{repeat} {result['pairs_per_s']:7.3f} pairs/s {result['tokens_per_s']:8.1f} tok/s "
                      f"peak {result['peak_mib']:7.0f} MiB  MFU {result['mfu']:.1%}  load {loads[-1]:.2f}", flush=True)
    matmul.append(measure_matmul_in_subprocess(args.threads))
    print(f"matmul rate (end): {matmul[1] / 1e9:.1f} GFLOP/s", flush=True)
    best_matmul = max(matmul)
    for r in results:  # utilisation against the best rate the machine showed in this command
        r.update(derive(r, best_matmul))
    meta = {
        "command": "python benchmarks/bench.py " + " ".join(shlex.quote(a) for a in argv),
        "started_utc": started.isoformat(timespec="seconds"),
        "minutes": (time.perf_counter() - t_start) / 60,
        "machine": machine_description(),
        "versions": versions(),
        "matmul_gflops": [m / 1e9 for m in matmul],
        "loadavg_1min": {"before": load_before, "max_during": max(loads), "mean_during": statistics.mean(loads)},
        "threads": args.threads,
        "data": data,
        "batch": batch,
        "steps": steps,
        "warmup": args.warmup,
        "mmpo_overrides": mmpo_overrides,
    }
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    from report import write_report

    write_report(args.json, args.out)
    print(f"wrote {args.out} and {args.json}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "matmul":
        ap = argparse.ArgumentParser()
        ap.add_argument("--threads", type=int, default=None)
        ap.add_argument("--size", type=int, default=2048)
        a = ap.parse_args(sys.argv[2:])
        print(matmul_rate(a.size, threads=a.threads))
        return
    main_run(sys.argv[1:])


if __name__ == "__main__":
    main()
