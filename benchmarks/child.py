"""One benchmark run in its own process: ``python benchmarks/child.py SPEC.json RESULT.json``.

The run builds its trainer exactly as a user would (mmpo: ``train_policy`` / ``train_reward_model`` from a config;
TRL: ``DPOTrainer`` / ``RewardTrainer`` from a model path and a JSONL dataset). Measurement is added from outside
by wrapping ``transformers.Trainer.train`` (both trainers subclass it), so neither trainer's code is changed:

* both trainers read the pairs in file order (``train_sampling_strategy="sequential"``), so each timed step
  trains both on the same pairs;
* a callback stamps the wall clock at the end of every optimizer step; the timed window runs from the end of
  warm-up step ``warmup_steps`` to the end of the last timed step (steady state: ``t(w + n) - t(w)``), so model
  loading, tokenization, any precomputation and the first steps' one-off allocations are outside it;
* what the trainer actually ran with is read off it at ``train()``: accelerate's mixed precision, the trained
  model's parameter dtype, gradient checkpointing, and how many models it holds (2 = a live reference model);
* after the last timed step the result is written; with ``profile_path`` set, one more step then runs under
  torch.profiler (outside the timed window) and its top ops join the result; then the process exits at once
  (no evaluation, no saving: those are not training throughput, and both trainers would do them differently).

Peak resident memory is ``ru_maxrss`` of this process at the end of the timed window; on CUDA also the peak of
``torch.cuda.max_memory_allocated`` (what the memory comparison then uses).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

T_PROCESS_START = time.perf_counter()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_gpu_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


class Probe:
    """The step clock, what the trainer ran with, and the optional profiled step after the timed window."""

    def __init__(self, spec: dict[str, Any], result_path: Path):
        self.spec = spec
        self.result_path = result_path
        self.warmup = int(spec["warmup_steps"])
        self.total = int(spec["warmup_steps"]) + int(spec["timed_steps"])
        self.step_ends: list[float] = []
        self.step_faults: list[int] = []  # minor page faults of the process at each step's end
        self.t_train_call: float | None = None
        self.faults_at_train_call = 0
        self.ran_with: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self.profiler: Any = None
        self.step_inputs: list[dict[str, list[int]]] = []

    def on_step_end(self, step: int) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()  # a GPU step has ended when its kernels have, not when they were queued
        self.step_ends.append(time.perf_counter())
        self.step_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        if step == self.total:
            self.result = self.measure()
            if not self.spec.get("profile_path"):
                self.finish()
            import torch

            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            self.profiler.__enter__()
        elif step > self.total:
            self.profiler.__exit__(None, None, None)
            averages = self.profiler.key_averages()
            table = averages.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
            shapes = self.profiler.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40, max_shapes_column_width=70)
            Path(self.spec["profile_path"]).write_text(table + "\n\n" + shapes)
            ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
            assert self.result is not None
            self.result["profile"] = {
                "seconds": self.step_ends[-1] - self.step_ends[-2],
                "self_cpu_seconds": sum(e.self_cpu_time_total for e in averages) / 1e6,
                "top_ops": [[e.key, e.self_cpu_time_total / 1e6, e.count] for e in ops[:10]],
            }
            self.finish()

    def measure(self) -> dict[str, Any]:
        t0 = self.step_ends[self.warmup - 1]
        return {
            **self.spec,
            **self.ran_with,
            "timed_seconds": self.step_ends[self.total - 1] - t0,
            "step_seconds": [b - a for a, b in zip([self.t_train_call] + self.step_ends, self.step_ends[: self.total])],
            "warmup_seconds": t0 - self.t_train_call,
            "setup_seconds": self.t_train_call - T_PROCESS_START,
            "peak_rss_mib": peak_rss_mib(),
            "peak_gpu_mib": peak_gpu_mib(),
            "step_inputs": self.step_inputs[: self.total],
            "step_faults": [b - a for a, b in zip([self.faults_at_train_call] + self.step_faults, self.step_faults[: self.total])],
            "threads": __import__("torch").get_num_threads(),
        }

    def finish(self) -> None:
        self.result_path.write_text(json.dumps(self.result, indent=1))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def install_probe(probe: Probe) -> None:
    import torch
    import transformers
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: D401 - transformers hook
            probe.on_step_end(state.global_step)

    original_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        probe.t_train_call = time.perf_counter()
        probe.faults_at_train_call = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        models = {id(self.model): self.model}
        for value in vars(self).values():  # a reference model, under whatever attribute name the trainer uses
            if isinstance(value, transformers.PreTrainedModel):
                models.setdefault(id(value), value)
        probe.ran_with = {
            "mixed_precision": str(self.accelerator.mixed_precision),
            "param_dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "gradient_checkpointing": bool(self.args.gradient_checkpointing),
            "models_held": len(models),
            "model_class": type(self.model).__name__,
        }
        self.add_callback(StepClock())
        # Pairs in file order for both trainers, so their timed steps train on the same pairs (their own shuffles
        # would put pairs of different lengths in the timed window).
        self.args.train_sampling_strategy = "sequential"
        return original_train(self, *args, **kwargs)

    transformers.Trainer.train = train
    original_step = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        # What each step fed its model: the shapes of its token tensors (to check both trainers saw the same pairs).
        probe.step_inputs.append({k: list(v.shape) for k, v in inputs.items() if "input_ids" in k and hasattr(v, "shape")})
        return original_step(self, model, inputs, *args, **kwargs)

    transformers.Trainer.training_step = training_step
    torch.manual_seed(0)


class MemoryTimeline:
    """With ``memory_timeline_path`` in the spec: every 10 ms, the process's resident set, its file-backed part
    (shared libraries, and the model's safetensors file, which ``from_pretrained`` maps) and glibc's bytes in use
    (:func:`mmpo.host_memory.glibc_bytes_in_use`); and the wall clock at each backward's start and end and each
    optimizer step's start and end. The record is rewritten after every optimizer step, as the run ends in
    ``os._exit``. The ``memory`` case (``memory_profile.py``) reads it."""

    def __init__(self, path: Path):
        import threading

        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        from mmpo.host_memory import glibc_bytes_in_use

        self.path = path
        self.samples: list[tuple[float, float, float | None, float]] = []
        self.marks: list[tuple[str, float]] = []
        self.bytes_in_use = glibc_bytes_in_use
        original_backward = torch.autograd.backward

        def backward(*args: Any, **kwargs: Any) -> Any:
            self.marks.append(("backward", time.perf_counter()))
            out = original_backward(*args, **kwargs)
            self.marks.append(("backward_end", time.perf_counter()))
            return out

        torch.autograd.backward = backward  # Tensor.backward calls it
        register_optimizer_step_pre_hook(lambda *a: self.marks.append(("optimizer", time.perf_counter())))
        register_optimizer_step_post_hook(lambda *a: self.on_optimizer_end())
        threading.Thread(target=self.sample, daemon=True).start()

    def sample(self) -> None:
        with open("/proc/self/statm") as statm:
            page = os.sysconf("SC_PAGE_SIZE")
            while True:
                statm.seek(0)
                _, resident, shared = statm.read().split()[:3]
                in_use = self.bytes_in_use()
                live = None if in_use is None else in_use / 2**20
                self.samples.append((time.perf_counter(), int(resident) * page / 2**20, live, int(shared) * page / 2**20))
                time.sleep(0.01)

    def on_optimizer_end(self) -> None:
        self.marks.append(("optimizer_end", time.perf_counter()))
        self.path.write_text(json.dumps({"samples": self.samples[:], "marks": self.marks[:]}))


def total_steps(spec: dict[str, Any]) -> int:
    """Warm-up + timed steps, plus the profiled step when there is one."""
    return spec["warmup_steps"] + spec["timed_steps"] + (1 if spec.get("profile_path") else 0)


def run_mmpo(spec: dict[str, Any]) -> None:
    from mmpo.config import load_config
    from mmpo.training.tasks import task

    overrides = {
        "model": spec["model_path"],
        "data": spec["data_mmpo"],
        "max_length": spec["max_length"],
        "per_device_train_batch_size": spec["batch_size"],
        "per_device_eval_batch_size": spec["batch_size"],
        "max_steps": total_steps(spec),
        "output_dir": spec["output_dir"],
        "logging_steps": 1000,
        "resume": False,
        "seed": 42,
        "eval_split": 0.0,  # every pair is trained on, as on the TRL side (which is given no eval set)
        **spec.get("mmpo_overrides", {}),
    }
    entry = task(spec["task"])
    entry.train(load_config(entry.config_class, overrides=overrides))


def run_trl(spec: dict[str, Any]) -> None:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    dataset = load_dataset("json", data_files=spec["data_trl"], split="train")
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    common = dict(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=total_steps(spec),
        max_length=spec["max_length"],
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        seed=42,
        dataloader_num_workers=0,
        # Required on a CPU for TRL's bf16 default (else transformers refuses it); tells accelerate to use the CPU.
        use_cpu=not __import__("torch").cuda.is_available(),
    )
    common.update(spec.get("trl_overrides", {}))  # bf16 / gradient_checkpointing: TRL's defaults unless a case sets them
    if spec["task"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(learning_rate=5e-6, beta=0.1, precompute_ref_log_probs=spec["variant"] == "precompute", **common)
        trainer = DPOTrainer(model=spec["model_path"], args=args, train_dataset=dataset, processing_class=tokenizer)
    else:
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(learning_rate=1e-5, **common)
        trainer = RewardTrainer(model=spec["model_path"], args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result_path = Path(sys.argv[2])
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    if spec.get("memory_timeline_path"):
        MemoryTimeline(Path(spec["memory_timeline_path"]))
    probe = Probe(spec, result_path)
    install_probe(probe)
    (run_mmpo if spec["trainer"] == "mmpo" else run_trl)(spec)
    # Reaching here means training ended before the last step (too few pairs for the steps asked).
    raise SystemExit(f"training ended after {len(probe.step_ends)} steps, expected {total_steps(spec)}")


if __name__ == "__main__":
    main()
