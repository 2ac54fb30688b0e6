"""`mmpo rm`: train a reward model on preference pairs with MMPO or a baseline loss.

The model is ``AutoModelForSequenceClassification`` with one output (see :mod:`mmpo.models.reward`). A
batch of B pairs is scored in ONE forward pass, as B rows ``[prompt | chosen | rejected]`` with the prompt
shared (``prefix_sharing``, :mod:`mmpo.models.shared_prefix`) or as 2B rows, chosen first; ``h = r(chosen) - r(rejected)``.

Losses (``config.loss``): the reward-model entries of the registry :data:`mmpo.losses.LOSSES` (each with its
formula), e.g.

* ``mmpo``             ``-p log sigmoid(h) - (1 - p) log sigmoid(-h)``, ``p = sigmoid(gamma * margin)``
* ``bt``               ``-log sigmoid(h)`` (hard labels; ``p`` only enters the held-out metrics)
* ``margin``           ``-log sigmoid(h - m)``, ``m`` the raw score margin, 0 where the data gave none
* ``label_smoothing``  ``-(1 - eps) log sigmoid(h) - eps log sigmoid(-h)``, ``eps = config.label_smoothing``
* ``scaled_bt``        ``-m log sigmoid(h)``, BT weighted by the score margin ``m`` (1 where the data gave none)

Output directory: ``checkpoint-N/`` (resumable), the final model (LoRA merged) with its tokenizer,
``config.yaml``, ``data_report.json``, ``metrics.jsonl``, ``eval_results.json`` (final held-out metrics)
and ``eval_scores.jsonl`` (one line per held-out pair: row, h, p, margin).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import set_seed

from mmpo.config import RMConfig, check_loss
from mmpo.data.pipeline import prepare_data
from mmpo.errors import UserError
from mmpo.host_memory import prepare_host
from mmpo.losses import LOSSES, LossSettings
from mmpo.models.loading import load_tokenizer, merge_lora_float32, model_load_kwargs, trainable_summary
from mmpo.models.reward import add_lora, load_reward_model
from mmpo.models.batching import pair_batching
from mmpo.models.trunk_cache import build_trunk_cache
from mmpo.precision import without_mixed_precision
from mmpo.training.args import training_arguments, use_bf16
from mmpo.training.base import PairTrainer, final_results, run_summary
from mmpo.training.card import push_final_model, write_model_card
from mmpo.training.run_dir import RESULTS_FILE, RunFiles, finish_run_dir, plan_run, save_run_config, write_results

EVAL_RESULTS_FILE = RESULTS_FILE


def reward_pair_loss(
    loss: str, chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, torch.Tensor], label_smoothing: float = 0.1,
    settings: LossSettings | None = None,
) -> torch.Tensor:
    """Per-pair reward-model loss ``loss`` from rewards and the batch's ``p`` / ``margin`` (via :data:`LOSSES`).

    ``settings`` carries the loss keys of the config; without it, defaults with ``label_smoothing``.
    """
    check_loss(loss, "rm", "reward-model")
    return LOSSES[loss].fn(chosen, rejected, batch, settings or LossSettings(label_smoothing=label_smoothing))


class RewardTrainer(PairTrainer):
    """PairTrainer for a scalar-head reward model: one forward on the 2B rows, split into chosen / rejected."""

    def __init__(
        self, *args: Any, loss: str = "mmpo", label_smoothing: float = 0.1, loss_settings: LossSettings | None = None, **kwargs: Any
    ):
        check_loss(loss, "rm", "reward-model")
        self.loss_name = loss
        self.loss_settings = loss_settings or LossSettings(label_smoothing=label_smoothing)
        super().__init__(*args, **kwargs)

    def pair_rewards(self, model, batch):
        rewards = self.trunk_forward(model, self.data_collator.rewards, batch)
        n_pairs = batch["p"].shape[0]
        return rewards[:n_pairs], rewards[n_pairs:], {}

    def pair_loss(self, chosen, rejected, batch):
        return reward_pair_loss(self.loss_name, chosen, rejected, batch, settings=self.loss_settings)


def build_model(config: RMConfig, tokenizer: Any) -> Any:
    """The reward model to train: backbone + scalar head, LoRA-wrapped when ``lora_r > 0``."""
    model = load_reward_model(config.model, tokenizer, **model_load_kwargs(config, torch.float32))
    if config.lora_r > 0:
        model = add_lora(model, config)
        print(trainable_summary(model, config))
    return model


def save_final_model(trainer: RewardTrainer, tokenizer: Any, output_dir: str, config: RMConfig) -> None:
    """Save the trained model so ``AutoModelForSequenceClassification.from_pretrained(output_dir)`` loads it.

    A LoRA model is merged into the float32 weights of its backbone first
    (:func:`mmpo.models.loading.merge_lora_float32`). Under DeepSpeed ZeRO-3 the weights are partitioned and
    cannot be merged in place, so Trainer's own saver writes the adapter (merge it later with peft).
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "merge_and_unload")
    if not is_peft:
        trainer.save_model(output_dir)  # handles ZeRO-3 / FSDP gathering; saves the tokenizer too
        return
    if trainer.is_deepspeed_enabled and getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3:
        trainer.save_model(output_dir)
        print(f"note: LoRA under ZeRO-3: saved the adapter in {output_dir}; merge it with peft's merge_and_unload")
        return
    if trainer.args.should_save:
        merged = merge_lora_float32(model, config.revision, config.trust_remote_code)
        merged.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def train_reward_model(config: RMConfig) -> dict[str, float]:
    """Train a reward model as ``config`` says; return the final held-out metrics (``eval_results.json``).

    Keys: n, accuracy, ece, soft_ece, nll, brier (see :mod:`mmpo.evaluation.metrics`), loss (the held-out
    mean of the training loss) and step. Empty when there is no held-out set. ``output_dir`` is resumed,
    reused (a finished run with the same settings: its saved results are returned) or refused as
    :func:`mmpo.training.run_dir.plan_run` says.
    """
    config.validate()
    prepare_host(config)
    # Under accelerate/torchrun every rank runs this; only the first writes files and prints the report.
    main_process = int(os.environ.get("RANK", "0")) == 0
    plan = plan_run(config, main_process)
    if plan.finished is not None:
        return plan.finished

    tokenizer = load_tokenizer(config.tokenizer or config.model, config.revision if not config.tokenizer else None, config.trust_remote_code)
    data = prepare_data(config, tokenizer)
    if main_process:
        print(data.render())
    if not data.train:
        raise UserError(f"no training pairs left after filtering {config.data!r} (see the data report above)")

    set_seed(config.seed)  # the new reward head's initialisation is part of the run's seed
    model = build_model(config, tokenizer)
    extra: dict[str, Any] = {}
    if not data.eval:
        print("no held-out pairs: skipping evaluation (set eval_data or eval_split > 0)")
        extra["eval_strategy"] = "no"
    # A cached trunk needs one sequence per row: it takes the place of prefix sharing / packing for this run.
    trunk = build_trunk_cache(config, model, "rm", use_bf16(config.bf16))
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(config, **extra),
        data_collator=pair_batching(
            model, tokenizer.pad_token_id, config.prefix_sharing and trunk is None, config.max_length,
            packing=config.packing if trunk is None else False,
        ),
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        processing_class=tokenizer,
        loss=config.loss,
        loss_settings=LossSettings.from_config(config),
        trunk_cache=trunk,
    )
    trainer.prefill_trunk_cache(trainer.data_collator.rewards, {"train": data.train, "eval": data.eval})
    # Training starts: only now does output_dir get the run's files, so a run that failed earlier leaves none.
    if main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        save_run_config(config, config.output_dir)
        with open(RunFiles(config.output_dir).data_report, "w") as f:
            json.dump({name: r.to_dict() for name, r in data.reports.items()}, f, indent=2)
    if plan.resume_from:
        print(f"resuming from {plan.resume_from}")
    trainer.train(resume_from_checkpoint=plan.resume_from)

    results: dict[str, float] = {}
    if data.eval:
        # One more pass over the held-out pairs: metrics plus eval_scores.jsonl (row, h, p, margin) for reports.
        # In float32 even under bf16 autocast: these describe the saved (float32) model, as `mmpo eval pairs`
        # and the reward-model grader score it; an autocast reward is rounded to bfloat16 (8 significant bits,
        # +-0.004 at |r| ~ 1) and its rounding depends on the batch layout (prefix-shared row vs two rows).
        with without_mixed_precision(trainer.model):
            final = trainer.save_eval_scores(data.eval)
        trainer.log(dict(final))
        results = final_results(final, trainer.state.global_step)
    save_final_model(trainer, tokenizer, config.output_dir, config)
    if trainer.args.should_save:
        write_model_card(config.output_dir, config, "reward_model", results)
        write_results(config.output_dir, results)  # last: marks the run finished
        print(run_summary("reward model", config.output_dir, results))
        freed = finish_run_dir(config.output_dir)
        if freed:
            print(freed)
    push_final_model(trainer, config.output_dir)
    return results
