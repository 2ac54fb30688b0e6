"""One benchmark run in its own process: ``python benchmarks/child.py SPEC.json RESULT.json``.

The run builds its trainer exactly as a user would (mmpo: ``train_policy`` / ``train_reward_model`` from a config;
TRL: ``DPOTrainer`` / ``RewardTrainer`` from a model path and a JSONL dataset). Measurement is added from outside
by wrapping ``transformers.Trainer.train`` (both trainers subclass it), so neither trainer's code is changed:

* a callback stamps the wall clock at the end of every optimizer step; the timed window runs from the end of the
  last warm-up step to the end of the last step, so model loading, tokenization, any precomputation and the first
  step's one-off allocations are outside it;
* forward pre-hooks on every model the trainer holds count the tokens each forward receives: non-pad tokens
  (``attention_mask.sum()``) and padded positions, separately for forwards with autograd on (the trained model:
  forward + backward) and off (a live reference model);
* after the last timed step the result is written and the process exits at once (no evaluation, no saving: those
  are not training throughput, and both trainers would do them differently).

Peak resident memory is ``ru_maxrss`` of this process (the parent also reads it with ``wait4``).
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


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def matmul_params(model: Any) -> int:
    """Weights that take part in a matrix multiply per token: every ``nn.Linear`` (a tied LM head counts once, as
    the head; an input embedding lookup is no multiply)."""
    import torch

    return sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    )


class Probe:
    """Token counters and step clock shared by the hooks and the callback."""

    def __init__(self, spec: dict[str, Any], result_path: Path):
        self.spec = spec
        self.result_path = result_path
        self.warmup = int(spec["warmup_steps"])
        self.total = int(spec["warmup_steps"]) + int(spec["timed_steps"])
        self.counts = {"grad_tokens": 0, "grad_padded": 0, "nograd_tokens": 0, "nograd_padded": 0,
                       "grad_calls": 0, "nograd_calls": 0}
        self.step_ends: list[float] = []
        self.snapshot: dict[str, int] | None = None
        self.t_train_call: float | None = None
        self.rss_at_train: float | None = None
        self.n_params: int | None = None
        self.model_class: str | None = None

    def hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        real = int(mask.sum()) if mask is not None else ids.numel()
        key = "grad" if torch.is_grad_enabled() else "nograd"
        self.counts[f"{key}_tokens"] += real
        self.counts[f"{key}_padded"] += ids.numel()
        self.counts[f"{key}_calls"] += 1

    def on_step_end(self, step: int) -> None:
        self.step_ends.append(time.perf_counter())
        if step == self.warmup:
            self.snapshot = dict(self.counts)
            if self.spec.get("profile_path"):
                import torch

                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                self.profiler.__enter__()
        if step >= self.total:
            if getattr(self, "profiler", None) is not None:
                self.profiler.__exit__(None, None, None)
                table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
                shapes = self.profiler.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40, max_shapes_column_width=70)
                Path(self.spec["profile_path"]).write_text(table + "\n\n" + shapes)
            self.finish()

    def finish(self) -> None:
        assert self.snapshot is not None
        t0 = self.step_ends[self.warmup - 1]
        timed = {k: self.counts[k] - self.snapshot[k] for k in self.counts}
        result = {
            **self.spec,
            "timed_seconds": self.step_ends[-1] - t0,
            "step_seconds": [b - a for a, b in zip(self.step_ends[self.warmup - 1 :], self.step_ends[self.warmup :])],
            "warmup_seconds": self.step_ends[self.warmup - 1] - self.t_train_call,
            "setup_seconds": self.t_train_call - T_PROCESS_START,
            "timed": timed,
            "n_params_matmul": self.n_params,
            "model_class": self.model_class,
            "rss_at_train_mib": self.rss_at_train,
            "peak_rss_mib": peak_rss_mib(),
            "threads": __import__("torch").get_num_threads(),
        }
        self.result_path.write_text(json.dumps(result, indent=1))
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
        probe.rss_at_train = rss_mib()
        models = {id(self.model): self.model}
        for value in vars(self).values():  # a reference model, under whatever attribute name the trainer uses
            if isinstance(value, transformers.PreTrainedModel):
                models.setdefault(id(value), value)
        for model in models.values():
            model.register_forward_pre_hook(probe.hook, with_kwargs=True)
        probe.n_params = matmul_params(self.model)
        probe.model_class = type(self.model).__name__
        probe.spec["models_hooked"] = len(models)
        self.add_callback(StepClock())
        return original_train(self, *args, **kwargs)

    transformers.Trainer.train = train
    torch.manual_seed(0)


def run_mmpo(spec: dict[str, Any]) -> None:
    from mmpo.config import DPOConfig, RMConfig, load_config

    overrides = {
        "model": spec["model_path"],
        "data": spec["data_mmpo"],
        "max_length": spec["max_length"],
        "per_device_train_batch_size": spec["batch_size"],
        "per_device_eval_batch_size": spec["batch_size"],
        "max_steps": spec["warmup_steps"] + spec["timed_steps"],
        "output_dir": spec["output_dir"],
        "logging_steps": 1000,
        "resume": False,
        "seed": 42,
        "eval_split": 0.0,  # every pair is trained on, as on the TRL side (which is given no eval set)
        **spec.get("mmpo_overrides", {}),
    }
    if spec["task"] == "dpo":
        from mmpo.training.dpo import train_policy

        train_policy(load_config(DPOConfig, overrides=overrides))
    else:
        from mmpo.training.rm import train_reward_model

        train_reward_model(load_config(RMConfig, overrides=overrides))


def run_trl(spec: dict[str, Any]) -> None:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    dataset = load_dataset("json", data_files=spec["data_trl"], split="train")
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    common = dict(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["warmup_steps"] + spec["timed_steps"],
        max_length=spec["max_length"],
        bf16=False,  # TRL defaults to bf16 autocast; the comparison is float32 on CPU
        gradient_checkpointing=False,  # TRL defaults to on; mmpo defaults to off: compare like with like
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        seed=42,
        dataloader_num_workers=0,
        **spec.get("trl_overrides", {}),
    )
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
    probe = Probe(spec, result_path)
    install_probe(probe)
    (run_mmpo if spec["trainer"] == "mmpo" else run_trl)(spec)
    # Reaching here means training ended before the last timed step (too few pairs for the steps asked).
    raise SystemExit(f"training ended after {len(probe.step_ends)} steps, expected {probe.total}")


if __name__ == "__main__":
    main()
