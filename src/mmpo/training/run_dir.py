"""A run's output directory: whether a new run resumes it, reuses it as finished, starts over, or is refused.

A run directory holds ``config.yaml`` (the settings, written when training starts), ``checkpoint-N/`` (each
complete one carries the length of ``metrics.jsonl`` when it was written), ``metrics.jsonl`` and, written last,
``eval_results.json``: its presence marks a finished run.

Rules (:func:`plan_run`), for ``resume: auto``:

* the directory holds a run whose settings that shape training or results differ from the new ones: refused,
  with one line naming the keys and the ways out (another ``output_dir``, ``resume: false`` or
  ``overwrite_output_dir: true``); bookkeeping keys (:data:`BOOKKEEPING_KEYS`) may change freely;
* the same settings and ``eval_results.json`` present: finished, reused as it is (no step, no new metrics);
* the same settings and a complete checkpoint: resumed from it, with ``metrics.jsonl`` cut back to the lines it
  held at that checkpoint, so nothing is logged twice;
* nothing resumable: a fresh start (what an earlier attempt left is cleared).

``resume: false`` or ``overwrite_output_dir: true``: a fresh start; the earlier run's checkpoints, metrics and
results in the directory are deleted first. ``resume: PATH``: that checkpoint, as the user said.

A finished run (:func:`finish_run_dir`) drops the optimizer state from its checkpoints: only an unfinished run
resumes from it, and for a full fine-tune it is twice the model's size. The checkpoints keep their weights,
trainer state and schedule; training a finished run further with ``resume: PATH`` starts a fresh optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mmpo.errors import UserError
from mmpo.io import atomic_write_text
from mmpo.paths import apply_umask
from mmpo.training.files import (
    CONFIG_FILE,
    RESULTS_FILE,
    METRICS_FILE,
    METRICS_LINES_FILE,
    STAGING_DIR,
    RUN_FILES,
    RunFiles,
    is_checkpoint_name,
)

def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of the run's ``metrics.jsonl`` in file order (none without the file); a final line torn by a
    crash is dropped, any other malformed line is a :class:`mmpo.errors.DataError` naming the file and line."""
    from mmpo.io import read_jsonl

    return read_jsonl(RunFiles(output_dir).metrics)

# Keys that change neither the trained weights nor the reported results: a rerun may change them and still resume
# or reuse the run.
BOOKKEEPING_KEYS = frozenset({
    "output_dir", "resume", "overwrite_output_dir", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
    "per_device_eval_batch_size", "dataloader_num_workers", "gradient_checkpointing", "torch_compile", "debug",
    "report_to",
    "merge_lora",  # how the final model is saved, not what it is
    "trunk_cache",  # the same numbers to float rounding (mmpo.models.trunk_cache)
})


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """``["gamma 1.0 -> 2.0", ...]``: keys outside :data:`BOOKKEEPING_KEYS` whose value in ``current`` differs from
    ``saved``. A key ``saved`` lacks (written by an older mmpo) counts as its default; a key ``current`` lacks is
    ignored (a key that no longer exists cannot shape the new run)."""
    out = []
    for key, value in current.items():
        if key in BOOKKEEPING_KEYS:
            continue
        before = saved.get(key, defaults.get(key))
        if before != value:
            out.append(f"{key} {_short(before)} -> {_short(value)}")
    return out


def _short(value: Any, width: int = 48) -> str:
    """A value for a one-line message; a long one keeps its end (where paths differ)."""
    text = "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else "..." + text[3 - width:]


def config_as_saved(config: Any) -> dict[str, Any]:
    """The config as ``config.yaml`` stores it (a YAML round trip, so tuples compare equal to lists)."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def save_run_config(config: Any, output_dir: str) -> None:
    """Write ``config.yaml``; called when training really starts, so a run that fails before leaves no stub."""
    from mmpo.config import save_config

    save_config(config, os.path.join(output_dir, CONFIG_FILE))


@dataclass
class RunPlan:
    """What :func:`plan_run` decided: resume from ``resume_from``, reuse ``finished`` (its saved results), or neither."""

    resume_from: str | None = None
    finished: dict[str, Any] | None = None


def _wants_fresh_start(config: Any) -> bool:
    setting = config.resume
    no_resume = setting in (False, None) or (isinstance(setting, str) and setting.lower() in ("false", "no", "never"))
    return no_resume or bool(getattr(config, "overwrite_output_dir", False))


def _holds_run(output_dir: str) -> bool:
    from mmpo.training.args import last_complete_checkpoint

    return os.path.isfile(os.path.join(output_dir, RESULTS_FILE)) or last_complete_checkpoint(output_dir) is not None


def clear_run(output_dir: str) -> None:
    """Delete what a run wrote to ``output_dir`` (checkpoints, staging, metrics, results, config); other files stay."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name == STAGING_DIR or (is_checkpoint_name(name) and os.path.isdir(path)):
            shutil.rmtree(path, ignore_errors=True)
        elif name in RUN_FILES:
            os.remove(path)


def plan_run(config: Any, main_process: bool = True) -> RunPlan:
    """Decide what to do with ``config.output_dir`` (rules in the module docstring). Only the main process
    deletes files; every process reaches the same decision from the same files."""
    from mmpo.training.args import last_complete_checkpoint, resume_checkpoint

    out = config.output_dir
    if _wants_fresh_start(config):
        if main_process:
            clear_run(out)
        return RunPlan()
    setting = config.resume
    if not (setting is True or (isinstance(setting, str) and setting.lower() == "auto")):
        return RunPlan(resume_from=resume_checkpoint(config))  # an explicit checkpoint path
    if not _holds_run(out):
        if main_process:
            clear_run(out)  # an attempt that ended before its first checkpoint: its metrics lines are stale
        return RunPlan()
    saved_path = os.path.join(out, CONFIG_FILE)
    if os.path.isfile(saved_path):
        saved = yaml.safe_load(open(saved_path).read()) or {}
        diffs = settings_differences(saved, config_as_saved(config), config_as_saved(type(config)()))
        if diffs:
            raise UserError(
                f"{out} holds a run with other settings ({'; '.join(diffs)}): choose another output_dir, "
                "or start over there with resume: false or overwrite_output_dir: true"
            )
    results = os.path.join(out, RESULTS_FILE)
    if os.path.isfile(results):
        finished = json.loads(open(results).read())
        last = last_complete_checkpoint(out)
        step = finished.get("step", int(last.rsplit("-", 1)[1]) if last else "?")
        if main_process:
            print(f"{out} holds this run, finished at step {step}: reusing it (to train again: overwrite_output_dir: true)")
        return RunPlan(finished=finished)
    checkpoint = last_complete_checkpoint(out)
    if main_process:
        rewind_metrics(out, checkpoint)
    return RunPlan(resume_from=checkpoint)


def metrics_lines(output_dir: str) -> int:
    """How many lines ``metrics.jsonl`` holds now (0 without the file)."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def rewind_metrics(output_dir: str, checkpoint: str) -> None:
    """Cut ``metrics.jsonl`` back to the lines it held when ``checkpoint`` was written: the steps after it are
    trained (and logged) again, and a final evaluation logged before a kill is logged again too."""
    marker = os.path.join(checkpoint, METRICS_LINES_FILE)
    path = os.path.join(output_dir, METRICS_FILE)
    if not (os.path.isfile(marker) and os.path.isfile(path)):
        return
    keep = json.loads(open(marker).read())["lines"]
    with open(path) as f:
        lines = f.readlines()
    if len(lines) > keep:
        atomic_write_text(path, "".join(lines[:keep]))


def write_results(output_dir: str, results: dict[str, Any]) -> None:
    """``eval_results.json``, atomically and last: its presence marks the run finished."""
    atomic_write_text(os.path.join(output_dir, RESULTS_FILE), json.dumps(results, indent=2))


def _is_optimizer_state(name: str) -> bool:
    # transformers: optimizer.pt / optimizer.bin (accelerate) / optimizer_0/ (FSDP); DeepSpeed: *optim_states.pt
    return name.startswith("optimizer") or name.endswith("optim_states.pt")


def drop_optimizer_state(output_dir: str) -> int:
    """Delete the optimizer state from every ``checkpoint-N`` in ``output_dir``; returns the bytes freed."""
    freed = 0
    if not os.path.isdir(output_dir):
        return 0
    for name in os.listdir(output_dir):
        checkpoint = os.path.join(output_dir, name)
        if not (is_checkpoint_name(name) and os.path.isdir(checkpoint)):
            continue
        for root, dirs, files in os.walk(checkpoint, topdown=True):
            for d in [d for d in dirs if _is_optimizer_state(d)]:
                for sub_root, _, sub_files in os.walk(os.path.join(root, d)):
                    freed += sum(os.path.getsize(os.path.join(sub_root, f)) for f in sub_files)
                shutil.rmtree(os.path.join(root, d))
                dirs.remove(d)
            for f in files:
                if _is_optimizer_state(f):
                    path = os.path.join(root, f)
                    freed += os.path.getsize(path)
                    os.remove(path)
    return freed


def finish_run_dir(output_dir: str) -> str | None:
    """After ``eval_results.json`` is written: the saved files get the user's umask (safetensors writes 0600) and
    the checkpoints lose their optimizer state. Returns the line to print when something was freed."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path) and not os.path.islink(path):
            apply_umask(path)
    freed = drop_optimizer_state(output_dir)
    if not freed:
        return None
    return (f"run finished: dropped the checkpoints' optimizer state ({freed / 2**20:.1f} MiB); "
            "only an unfinished run resumes from it")
