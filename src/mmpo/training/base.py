"""The shared pair trainer: a thin `transformers.Trainer` subclass.

transformers/accelerate provide the loop, checkpoints, resume, mixed precision, gradient accumulation and
DeepSpeed/FSDP. This class only says how a batch of pairs becomes a loss: a subclass returns per-pair
chosen and rejected rewards (:meth:`pair_rewards`), the loss comes from :mod:`mmpo.losses`, and evaluation
returns ``h`` and ``p`` so :func:`mmpo.evaluation.metrics.pair_metrics` scores held-out pairs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import rotate_checkpoints

from mmpo.data.sampler import LengthGroupedPairSampler, pair_tokens
from mmpo.evaluation.metrics import pair_metrics
from mmpo.io import append_jsonl, write_jsonl_atomic
from mmpo.models.trunk_cache import Forward, TrunkCache
from mmpo.paths import apply_umask
# Checkpoints are written under STAGING_DIR, then renamed into place.
from mmpo.training.files import METRICS_FILE, METRICS_LINES_FILE, STAGING_DIR
from mmpo.training.run_dir import metrics_lines


from mmpo.training.files import EVAL_SCORES_FILE, RESULTS_FILE as EVAL_RESULTS_FILE


def compute_pair_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` hook: predictions are ``h``; label_ids are ``[p, margin, row]`` per pair."""
    preds = np.asarray(eval_pred.predictions)
    h = preds[:, 0] if preds.ndim == 2 else preds.reshape(-1)
    labels = np.asarray(eval_pred.label_ids)
    p = labels[:, 0] if labels.ndim == 2 else labels.reshape(-1)
    return pair_metrics(h, p)


class MetricsJsonlCallback(TrainerCallback):
    """Append every logged dict (train and eval) as one JSON line to ``output_dir/metrics.jsonl``."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - transformers hook
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        append_jsonl(os.path.join(args.output_dir, METRICS_FILE), [record])


def format_log_line(step: int, logs: dict[str, Any]) -> str:
    """``step 20: loss 0.6931  grad_norm 0.1302  learning_rate 1e-05 ...``: numbers as numbers (4 significant
    digits), not the quoted strings of transformers' default progress callback."""
    parts = []
    for key, value in logs.items():
        if key == "total_flos":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            parts.append(f"{key} {value}")
        elif isinstance(value, int):
            parts.append(f"{key} {value}")
        else:
            parts.append(f"{key} {value:.4g}")
    return f"step {step}: " + "  ".join(parts)


class PairProgressCallback(ProgressCallback):
    """transformers' progress bar, with each log written as one readable line of numbers."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(format_log_line(state.global_step, logs))


# What one plain log line shows (logged key, shown name); every key goes to metrics.jsonl.
PLAIN_TRAIN_KEYS = (("loss", "loss"), ("train_accuracy", "accuracy"), ("train_margin", "margin"),
                    ("grad_norm", "grad_norm"), ("learning_rate", "lr"))
PLAIN_EVAL_KEYS = (("eval_loss", "loss"), ("eval_accuracy", "accuracy"), ("eval_nll", "nll"), ("eval_ece", "ece"))


def plain_log_line(step: int, max_steps: int, logs: dict[str, Any], steps_this_run: int | None = None) -> str | None:
    """One short line for a log that goes to a file: ``step 20/100: loss 0.6931  accuracy 0.625  margin 0.1234
    grad_norm 0.1302  lr 1e-05``, ``step 20/100 held-out: loss ...`` or ``step 100/100: trained in 12.3 s, mean
    loss 0.6012`` (the mean over the steps this process trained; ``steps_this_run`` 0: a finished run resumed,
    which trains nothing); None for a log with none of those numbers."""
    where = f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"
    if "train_runtime" in logs and steps_this_run == 0:
        return f"{where}: already trained (resumed from its last checkpoint)"
    if "train_runtime" in logs:
        mean = logs.get("train_loss")
        return f"{where}: trained in {logs['train_runtime']:.1f} s" + (f", mean loss {mean:.4g}" if mean is not None else "")
    keys, label = (PLAIN_EVAL_KEYS, " held-out") if any(k.startswith("eval_") for k in logs) else (PLAIN_TRAIN_KEYS, "")
    shown = [f"{name} {logs[key]:.4g}" for key, name in keys
             if isinstance(logs.get(key), (int, float)) and not isinstance(logs.get(key), bool)]
    return f"{where}{label}: " + "  ".join(shown) if shown else None


class PlainLogCallback(TrainerCallback):
    """For output that is not a terminal (a log file, a pipe): no progress bar, one plain line per log."""

    start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step  # after a resume: the checkpoint's step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = plain_log_line(state.global_step, state.max_steps, logs, state.global_step - self.start_step)
            if line:
                print(line, flush=True)


def interactive() -> bool:
    """Whether progress bars have a terminal to draw on (they write to stderr)."""
    return sys.stderr.isatty()


class FinalEvalByCaller(TrainerCallback):
    """Drop Trainer's own evaluation at the last step: the caller evaluates once more right after training
    (:meth:`PairTrainer.save_eval_scores`, with per-pair scores), and on a CPU one pass over the held-out
    pairs can cost as much as many training steps."""

    def _skip_at_end(self, state, control):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_evaluate = False
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._skip_at_end(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._skip_at_end(state, control)


# Trainer's runtime counters are not results.
_RUNTIME_KEYS = ("runtime", "samples_per_second", "steps_per_second")


def clip_gradients(parameters: Any, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` with the same result, for gradients on the host: returns the total
    2-norm ``n`` of the gradients, and scales them by ``max_norm / (n + 1e-6)`` only when that is below 1.

    clip_grad_norm_ always multiplies by ``min(1, max_norm / (n + 1e-6))``, which spares a GPU a device sync but
    costs a pass over every gradient (a read and a write of each: ~20 ms a step for 135M parameters on two CPU
    cores) in a step that clips nothing, where the factor is exactly 1.
    """
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], 2.0)
    total = float(norm)
    if not math.isfinite(total) or max_norm / (total + 1e-6) < 1.0:  # a non-finite norm: as torch does
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def final_results(metrics: dict[str, float], step: int) -> dict[str, float]:
    """``eval_results.json``: the held-out metrics without the ``eval_`` prefix or runtime counters, plus the step."""
    plain = {k[len("eval_"):] if k.startswith("eval_") else k: v for k, v in metrics.items()}
    return {**{k: v for k, v in plain.items() if k not in _RUNTIME_KEYS and k != "epoch"}, "step": step}


SUMMARY_METRICS = ("loss", "accuracy", "ece", "soft_ece", "nll", "brier")


def run_summary(what: str, output_dir: str, results: dict[str, Any], saved_as: str | None = None) -> str:
    """The end-of-run lines both ``mmpo rm`` and ``mmpo dpo`` print: the held-out metrics, then where the model is."""
    # The pair metrics only; every other number (log-probs, reward means) is in eval_results.json.
    shown = {k: results[k] for k in SUMMARY_METRICS if isinstance(results.get(k), (int, float))}
    if results:
        head = f"held-out ({results.get('n', '?')} pairs, step {results.get('step', '?')}): "
        lines = [head + "  ".join(f"{k} {v:.4g}" for k, v in shown.items())]
    else:
        lines = ["held-out: none (no held-out pairs)"]
    kind = f" ({saved_as})" if saved_as else ""
    lines.append(f"saved the {what}{kind} to {output_dir} (card: README.md, metrics: {EVAL_RESULTS_FILE})")
    return "\n".join(lines)


class PairTrainer(Trainer):
    """Trainer for pairwise preference losses. Subclasses implement :meth:`pair_rewards` and :meth:`pair_loss`."""

    def __init__(self, *args: Any, trunk_cache: TrunkCache | None = None, **kwargs: Any):
        kwargs.setdefault("compute_metrics", compute_pair_metrics)
        super().__init__(*args, **kwargs)
        self.trunk_cache = trunk_cache
        # We average the per-pair loss ourselves; let Trainer scale for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self._train_sums: dict[str, float] = defaultdict(float)
        self._train_pairs = 0
        self._staging: str | None = None
        self.add_callback(MetricsJsonlCallback())
        if any(isinstance(cb, ProgressCallback) for cb in self.callback_handler.callbacks):
            self.remove_callback(ProgressCallback)
            self.add_callback(PairProgressCallback if interactive() else PlainLogCallback)
        if self.eval_dataset is not None:
            self.add_callback(FinalEvalByCaller())

    # --- to implement -------------------------------------------------------------------------------
    def pair_rewards(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair ``(chosen_rewards, rejected_rewards, extras)``; ``h = chosen - rejected``."""
        raise NotImplementedError

    def pair_loss(self, chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-pair loss from the rewards and the batch's targets."""
        raise NotImplementedError

    def group_rewards(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[groups, k]`` rewards of a batch of groups (``layout: groups``), response ``j`` of group ``i`` at ``[i, j]``."""
        raise NotImplementedError(f"{type(self).__name__} does not train on groups")

    def group_loss(self, rewards: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(losses, chosen, rejected)`` for a batch of groups: per-group or per-pair losses and the rewards of
        the group's pairs (:func:`mmpo.losses.group_losses`)."""
        raise NotImplementedError(f"{type(self).__name__} does not train on groups")

    # --- the frozen-trunk cache (mmpo.models.trunk_cache) -------------------------------------------------
    def trunk_forward(self, model: torch.nn.Module, forward: Forward, batch: dict[str, torch.Tensor]) -> Any:
        """``forward(model, batch)``, with the frozen lower blocks' output from the trunk cache when there is one."""
        if self.trunk_cache is None:
            return forward(model, batch)
        return self.trunk_cache.run(model, forward, batch)

    def prefill_trunk_cache(self, forward: Forward, splits: dict[str, list[dict[str, Any]]]) -> None:
        """Fill the trunk cache for every split's pairs (from disk, or computed once and stored)."""
        if self.trunk_cache is None:
            return
        autocast = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
        for name, features in splits.items():
            if not features:
                continue
            started = time.perf_counter()
            path, from_disk = self.trunk_cache.prefill(
                self.model, forward, features, self.data_collator,
                batch_size=self.args.per_device_eval_batch_size, autocast_dtype=autocast, desc=f"trunk states ({name})",
            )
            how = "reused" if from_disk else "computed and cached"
            print(f"trunk states ({name}): {how} at {path} in {time.perf_counter() - started:.1f} s")
        print(f"trunk cache: {len(self.trunk_cache.states)} sequences, {self.trunk_cache.nbytes() / 2**20:.1f} MiB in memory")

    # --- atomic checkpoints --------------------------------------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write ``checkpoint-N`` under ``output_dir/.staging`` and rename it into place when complete.

        A run killed mid-save leaves only a staging directory, which resume never looks at; so the newest
        ``checkpoint-N`` is always a complete one.
        """
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)  # leftovers of a killed save
        self.accelerator.wait_for_everyone()
        self._staging = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's shards are written before the rename
        if self.args.should_save:
            # A resume from this checkpoint cuts metrics.jsonl back to this length (see run_dir.rewind_metrics).
            with open(os.path.join(staging_root, name, METRICS_LINES_FILE), "w") as f:
                json.dump({"lines": metrics_lines(run_dir)}, f)
            apply_umask(os.path.join(staging_root, name))  # safetensors writes its files 0600
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging_root, name), final)
            try:
                os.rmdir(staging_root)  # only when empty: nothing of a killed save is thrown away here
            except OSError:
                pass
            rotate_checkpoints(run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()

    # --- Trainer hooks ------------------------------------------------------------------------------
    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        # Resumed from the final checkpoint (a kill during the final evaluation or save): Trainer's loop would
        # take one more step before it checks max_steps, so there is nothing to run.
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # transformers' length grouping reads lengths from a datasets column or `input_ids`; pairs have neither.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedPairSampler([pair_tokens(f) for f in dataset],
                                        self.args.train_batch_size * self.args.gradient_accumulation_steps, seed)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        # Held-out pairs keep their order whatever the training order (eval_scores.jsonl is written row by row).
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
            return None
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _clip_grad_norm(self, model):
        # On a plain CPU run (one process or a gloo group, no loss scaler) the norm is on the host already: clip
        # only when it exceeds max_grad_norm (see clip_gradients); elsewhere Trainer's own, sync-free way.
        plain = not (self.is_deepspeed_enabled or self.is_fsdp_enabled or self.accelerator.scaler is not None)
        if self.args.device.type == "cpu" and plain and not self._has_mixed_mesh_grads(model):
            return clip_gradients(model.parameters(), self.args.max_grad_norm)
        return super()._clip_grad_norm(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "group_mask" in inputs:  # layout: groups (held-out batches stay pairs)
            rewards = self.group_rewards(model, inputs)
            losses, chosen, rejected = self.group_loss(rewards, inputs)
            extras: dict[str, torch.Tensor] = {}
            # A batch whose groups hold no pair the loss trains on (all ties) contributes nothing, not NaN.
            loss = losses.mean() if losses.numel() else rewards.sum() * 0.0
        else:
            chosen, rejected, extras = self.pair_rewards(model, inputs)
            losses = self.pair_loss(chosen, rejected, inputs)
            loss = losses.mean()
        if not torch.isfinite(loss):
            rows = inputs["row"].tolist() if "row" in inputs else []
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}, batch rows {rows}; "
                "the last complete checkpoint in output_dir is kept"
            )
        with torch.no_grad():
            h = (chosen - rejected).detach().float()
            # Sums over this step's pairs: the log divides by the pairs since the last log, so a step of groups
            # with no trainable pair (all ties) adds nothing rather than a NaN mean.
            if h.numel():
                stats = {
                    "accuracy": ((h > 0).float() + 0.5 * (h == 0).float()).sum(),
                    "margin": h.sum(),
                    "chosen_reward": chosen.detach().float().sum(),
                    "rejected_reward": rejected.detach().float().sum(),
                    **{k: v.detach().float().sum() for k, v in extras.items()},
                }
                # One device-to-host copy per step, not one per statistic.
                for k, v in zip(stats, torch.stack(list(stats.values())).tolist()):
                    self._train_sums[k] += v
                self._train_pairs += h.numel()
        return (loss, {"h": h}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            chosen, rejected, _ = self.pair_rewards(model, inputs)
            loss = self.pair_loss(chosen, rejected, inputs).mean().detach()
        if prediction_loss_only:
            return loss, None, None
        h = (chosen - rejected).float().detach()
        return loss, h, self.pair_labels(inputs)

    @staticmethod
    def pair_labels(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 3]``: target ``p``, raw margin (NaN if none) and source row, gathered with the predictions."""
        return torch.stack([inputs["p"].float(), inputs["margin"].float(), inputs["row"].float()], dim=-1)

    def save_eval_scores(self, dataset: Any, path: str | None = None) -> dict[str, float]:
        """Score held-out pairs once more and write one line per pair (row, h, p, margin) for reports.

        Returns the metrics of that pass (identical to a final ``evaluate``). Only the main process writes.
        """
        out = self.predict(dataset, metric_key_prefix="eval")
        path = path or os.path.join(self.args.output_dir, EVAL_SCORES_FILE)
        if self.args.should_save:
            preds = np.asarray(out.predictions)
            h = preds[:, 0] if preds.ndim == 2 else preds.reshape(-1)
            labels = np.asarray(out.label_ids).reshape(len(h), -1)
            write_jsonl_atomic(path, [{"row": int(row), "h": float(hi), "p": float(p), "margin": None if np.isnan(margin) else float(margin)}
                                      for hi, (p, margin, row) in zip(h, labels)])
        return out.metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry the means of the pair statistics over the pairs trained on since the last log.
        if "loss" in logs and self._train_pairs:
            for k, v in self._train_sums.items():
                logs[f"train_{k}"] = v / self._train_pairs
            self._train_sums.clear()
            self._train_pairs = 0
        super().log(logs, start_time)
