"""One training run, for every trained model kind: the sequence lives here, what differs lives in a :class:`Task`.

The sequence (:func:`train`): validate the config, set up the host, plan the run directory
(:func:`mmpo.training.run_dir.plan_run`: resume, reuse a finished run, or refuse), tokenizer, data (its report
printed once, on the main process), seed, model, trunk cache, collator, trainer, trunk-cache prefill, the
config and data report written, train, final held-out evaluation, save, model card, results (last: they
mark the run finished), push. :mod:`mmpo.training.rm` and :mod:`mmpo.training.dpo` define the two tasks.

Rules that hold for every task:

* The seed is set right before the model is built, so a new head's initialisation is part of the run's seed.
* Printing is for the main process (``is_main_process``); writing files for the process that saves
  (``should_save``).
* The final evaluation runs in float32 where the task says so (``final_eval_float32``): a reward model's
  held-out metrics then describe the saved float32 model as graders score it. A policy's run in its training
  precision, the precision its precomputed reference log-probs were taken in, so ``h`` compares like with like.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmpo.errors import UserError



@dataclass
class TrainSummary:
    """What a training entry point returns.

    ``metrics`` are the final held-out metrics as written to ``eval_results.json`` (no ``eval_`` prefix, plus
    ``step``; empty without a held-out set). ``saved`` says how the model was written (``merged``, ``adapter``,
    ``full`` or ``deepspeed``; None when this process wrote nothing or the run was reused). ``reused``: the
    output directory already held this run finished, nothing was trained. ``details``: task-specific facts
    (a policy's ``reference`` mode and ``reference_cache``).
    """

    output_dir: str
    kind: str
    global_step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)
    saved: str | None = None
    reused: bool = False
    resumed_from: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Task:
    """What differs between training a reward model and a policy. One instance serves one run (it may keep
    state between its steps, e.g. a policy's reference model).

    ``loss_kind``: the loss registry's kind (``rm`` / ``policy``), also the trunk cache's. ``card_kind``: the
    model card's kind (``reward_model`` / ``policy``). ``what``: the model's name in the end-of-run lines.
    """

    loss_kind: ClassVar[str]
    card_kind: ClassVar[str]
    what: ClassVar[str]
    trainer_class: ClassVar[type]
    final_eval_float32: ClassVar[bool] = False

    def build_model(self, config: Any, tokenizer: Any, data: Any) -> Any:
        """The model to train (LoRA-wrapped when asked)."""
        raise NotImplementedError

    def features(self, data: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The train and held-out features the trainer gets (by default the prepared data's)."""
        return data.train, data.eval

    def scored_also(self) -> tuple[Any, ...]:
        """Other models scored on the same batches (the collator must suit them too)."""
        return ()

    def trainer_kwargs(self, config: Any) -> dict[str, Any]:
        """The trainer class's own keyword arguments (loss settings, reference, ...)."""
        return {}

    def prefill_forward(self, trainer: Any) -> Any:
        """The plain forward the trunk cache reproduces (see :meth:`PairTrainer.prefill_trunk_cache`)."""
        raise NotImplementedError

    def save(self, trainer: Any, tokenizer: Any, config: Any) -> str | None:
        """Write the final model to ``config.output_dir``; returns how (``merged`` / ``adapter`` / ...)."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """Task-specific facts for :attr:`TrainSummary.details`."""
        return {}


@dataclass
class Run:
    """A run set up by :func:`build_run`, ready to train."""

    config: Any
    task: Task
    trainer: Any
    tokenizer: Any
    data: Any
    train_features: list[dict[str, Any]]
    eval_features: list[dict[str, Any]]


def main_process() -> bool:
    """Whether this is the first process of the launch (every rank runs a run under accelerate/torchrun),
    before a trainer exists to ask."""
    return int(os.environ.get("RANK", "0")) == 0


def build_run(task: Task, config: Any) -> Run:
    """Validate ``config`` and set up everything up to a trainer ready to train: host, tokenizer, data (report
    printed on the main process), seed, model, trunk cache, collator, trainer, trunk-cache prefill."""
    from transformers import set_seed

    from mmpo.data.collate import SharedPromptCollator
    from mmpo.data.pipeline import prepare_data
    from mmpo.host_memory import prepare_host
    from mmpo.models.loading import load_tokenizer
    from mmpo.models.batching import pair_batching
    from mmpo.models.trunk_cache import build_trunk_cache
    from mmpo.training.args import training_arguments, use_bf16

    config.validate()
    prepare_host(config)
    tokenizer = load_tokenizer(config.tokenizer or config.model, config.revision if not config.tokenizer else None, config.trust_remote_code)
    data = prepare_data(config, tokenizer)
    if main_process():
        print(data.render())
    if not data.train:
        raise UserError(f"no training pairs left after filtering {config.data!r} (see the data report above)")

    set_seed(config.seed)  # a new head's initialisation is part of the run's seed
    model = task.build_model(config, tokenizer, data)
    train_features, eval_features = task.features(data)
    extra: dict[str, Any] = {}
    if not eval_features:
        print("no held-out pairs: skipping evaluation (set eval_data or eval_split > 0)")
        extra["eval_strategy"] = "no"
    groups = getattr(config, "layout", "pairs") == "groups"
    # A cached trunk needs one sequence per row: it takes the place of prefix sharing / packing for this run
    # (not of a group's shared row).
    trunk = None if groups else build_trunk_cache(config, model, task.loss_kind, use_bf16(config.bf16))
    batching = pair_batching(
        model, tokenizer.pad_token_id, config.prefix_sharing and trunk is None, config.max_length, *task.scored_also(),
        packing=config.packing if trunk is None else False,
    )
    if groups and not isinstance(batching.collate, SharedPromptCollator):
        raise UserError("layout: groups needs a model that takes the shared-prompt mask (see the note above); use layout: pairs")
    trainer = task.trainer_class(
        model=model,
        args=training_arguments(config, **extra),
        data_collator=batching,
        train_dataset=train_features,
        eval_dataset=eval_features or None,
        processing_class=tokenizer,
        trunk_cache=trunk,
        **task.trainer_kwargs(config),
    )
    trainer.prefill_trunk_cache(task.prefill_forward(trainer), {"train": train_features, "eval": eval_features})
    return Run(config, task, trainer, tokenizer, data, train_features, eval_features)


def final_eval(run: Run) -> dict[str, float]:
    """One more pass over the held-out pairs: metrics (``eval_*``) plus ``eval_scores.jsonl`` (row, h, p,
    margin) for reports; in float32 where the task says so."""
    from contextlib import nullcontext

    from mmpo.precision import without_mixed_precision

    trainer = run.trainer
    # An autocast reward is rounded to bfloat16 (8 significant bits) and its rounding depends on the batch
    # layout (prefix-shared row vs two rows); the float32 pass scores the saved model as `mmpo eval pairs` does.
    precision = without_mixed_precision(trainer.model) if run.task.final_eval_float32 else nullcontext()
    with precision:
        metrics = trainer.save_eval_scores(run.eval_features)
    trainer.log(dict(metrics))
    return metrics


def write_run_files(run: Run) -> None:
    """``config.yaml`` and ``data_report.json``, written when training starts, so a run that failed earlier
    leaves no files."""
    from mmpo.io import atomic_write_text
    from mmpo.training.files import RunFiles
    from mmpo.training.run_dir import save_run_config

    out = run.config.output_dir
    os.makedirs(out, exist_ok=True)
    save_run_config(run.config, out)
    reports = {split: r.to_dict() for split, r in run.data.reports.items()}
    atomic_write_text(RunFiles(out).data_report, json.dumps(reports, indent=2))


def train(task: Task, config: Any) -> TrainSummary:
    """Train ``task``'s model as ``config`` says and save it to ``config.output_dir`` (see the module docstring
    for the sequence); returns the run's :class:`TrainSummary`.

    ``output_dir`` is resumed, reused (a finished run with the same settings: nothing is trained and its saved
    results are returned) or refused as :func:`mmpo.training.run_dir.plan_run` says.
    """
    from mmpo.training.base import final_results, run_summary
    from mmpo.training.card import push_final_model, write_model_card
    from mmpo.training.run_dir import finish_run_dir, plan_run, write_results

    config.validate()
    plan = plan_run(config, main_process())
    if plan.finished is not None:
        step = plan.finished.get("step")
        return TrainSummary(config.output_dir, task.card_kind, step if isinstance(step, int) else None,
                            metrics=plan.finished, reused=True)
    run = build_run(task, config)
    trainer = run.trainer
    if trainer.args.should_save:
        write_run_files(run)
    if plan.resume_from and trainer.is_world_process_zero():
        print(f"resuming from {plan.resume_from}")
    train_output = trainer.train(resume_from_checkpoint=plan.resume_from)
    step = trainer.state.global_step
    results = final_results(final_eval(run), step) if run.eval_features else {}
    saved = task.save(trainer, run.tokenizer, config)
    freed = None
    if trainer.args.should_save:
        write_model_card(config.output_dir, config, task.card_kind, results)
        write_results(config.output_dir, results)  # last: marks the run finished
        freed = finish_run_dir(config.output_dir)
    if trainer.accelerator.is_main_process:
        print(run_summary(task.what, config.output_dir, results, saved))
        if freed:
            print(freed)
    push_final_model(trainer, config.output_dir)
    return TrainSummary(
        config.output_dir, task.card_kind, step, metrics=results, train_metrics=dict(train_output.metrics), saved=saved,
        resumed_from=plan.resume_from, details=task.details(),
    )
