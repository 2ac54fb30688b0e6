"""`mmpo rm`: train a reward model on preference pairs with MMPO or a baseline loss.

The model is ``AutoModelForSequenceClassification`` with one output (see :mod:`mmpo.models.reward`). A
batch of B pairs is scored in ONE forward pass, as B rows ``[prompt | chosen | rejected]`` with the prompt
shared (``prefix_sharing``, :mod:`mmpo.models.shared_prefix`) or as 2B rows, chosen first; ``h = r(chosen) - r(rejected)``.
Under ``layout: groups`` a batch holds groups of a prompt's responses, one row ``[prompt | r_1 | ... | r_k]`` each,
scored in one forward; the loss is the listwise one or a pairwise one over all pairs of each group
(:func:`mmpo.losses.group_losses`).

Losses (``config.loss``): the reward-model entries of the registry :data:`mmpo.losses.LOSSES` (each with its
formula), e.g.

* ``mmpo``             ``-p log sigmoid(h) - (1 - p) log sigmoid(-h)``, ``p = sigmoid(gamma * margin)``
* ``bt``               ``-log sigmoid(h)`` (hard labels; ``p`` only enters the held-out metrics)
* ``margin``           ``-log sigmoid(h - m)``, ``m`` the raw score margin, 0 where the data gave none
* ``label_smoothing``  ``-(1 - eps) log sigmoid(h) - eps log sigmoid(-h)``, ``eps = config.label_smoothing``
* ``scaled_bt``        ``-m log sigmoid(h)``, BT weighted by the score margin ``m`` (1 where the data gave none)
* ``listwise``         ``-sum_i softmax(gamma s)_i log softmax(r)_i`` over a group's responses (on a pair: ``mmpo``)

Output directory: ``checkpoint-N/`` (resumable), the final model (LoRA merged, or the adapter with its trained
head under ``merge_lora: false``) with its tokenizer,
``config.yaml``, ``data_report.json``, ``metrics.jsonl``, ``eval_results.json`` (final held-out metrics)
and ``eval_scores.jsonl`` (one line per held-out pair: row, h, p, margin).
"""

from __future__ import annotations

from typing import Any

import torch

from mmpo.config import RMConfig, check_loss
from mmpo.losses import LOSSES, LossSettings, group_losses
from mmpo.models.loading import merge_lora_float32, model_load_kwargs, trainable_summary
from mmpo.models.reward import add_lora, load_reward_model
from mmpo.training.base import PairTrainer
from mmpo.training.run import Task, TrainSummary, train


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

    def group_rewards(self, model, batch):
        rewards = self.trunk_forward(model, self.data_collator.rewards, batch)  # [k * groups], response-major
        return rewards.view(batch["group_mask"].shape[1], -1).t()

    def group_loss(self, rewards, batch):
        return group_losses(self.loss_name, rewards, batch["scores"], batch["group_mask"], self.loss_settings)


def build_model(config: RMConfig, tokenizer: Any) -> Any:
    """The reward model to train: backbone + scalar head, LoRA-wrapped when ``lora_r > 0``."""
    model = load_reward_model(config.model, tokenizer, **model_load_kwargs(config, torch.float32))
    if config.lora_r > 0:
        model = add_lora(model, config)
        print(trainable_summary(model, config))
    return model


def save_final_model(trainer: RewardTrainer, tokenizer: Any, output_dir: str, config: RMConfig) -> str:
    """Save the trained model so :func:`mmpo.models.reward.load_reward_model` (every mmpo command that scores
    with it) loads it; returns how: ``full`` (no LoRA), ``merged`` or ``adapter``.

    A LoRA model is merged into the float32 weights of its backbone (:func:`mmpo.models.loading.merge_lora_float32`),
    which ``AutoModelForSequenceClassification.from_pretrained(output_dir)`` loads as well; with
    ``merge_lora: false`` the peft adapter is saved instead (task SEQ_CLS: the LoRA weights and the fully trained
    head, peft's ``modules_to_save``), which the loader merges into its base again. Under DeepSpeed ZeRO-3 the
    weights are partitioned and cannot be merged in place, so the adapter is saved either way.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "merge_and_unload")
    if not is_peft:
        trainer.save_model(output_dir)  # handles ZeRO-3 / FSDP gathering; saves the tokenizer too
        return "full"
    zero3 = trainer.is_deepspeed_enabled and getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    if zero3 or not config.merge_lora:
        trainer.save_model(output_dir)  # peft's save_pretrained: adapter_config.json + the adapter and head weights
        if zero3 and config.merge_lora:
            print(f"note: LoRA under ZeRO-3: saved the adapter in {output_dir} (mmpo's reward-model loader merges it)")
        return "adapter"
    if trainer.args.should_save:
        merged = merge_lora_float32(model, config.revision, config.trust_remote_code)
        merged.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    return "merged"


class RewardModelTask(Task):
    """A reward model: scalar head, rewards scored in one forward, final evaluation in float32."""

    loss_kind = "rm"
    card_kind = "reward_model"
    what = "reward model"
    trainer_class = RewardTrainer
    final_eval_float32 = True

    def build_model(self, config: RMConfig, tokenizer: Any, data: Any) -> Any:
        return build_model(config, tokenizer)

    def trainer_kwargs(self, config: RMConfig) -> dict[str, Any]:
        return {"loss": config.loss, "loss_settings": LossSettings.from_config(config)}

    def prefill_forward(self, trainer: RewardTrainer) -> Any:
        return trainer.data_collator.rewards

    def save(self, trainer: RewardTrainer, tokenizer: Any, config: RMConfig) -> str:
        return save_final_model(trainer, tokenizer, config.output_dir, config)


def train_reward_model(config: RMConfig) -> TrainSummary:
    """Train a reward model as ``config`` says (the sequence of :func:`mmpo.training.run.train`).

    ``summary.metrics`` are the final held-out metrics (``eval_results.json``): n, accuracy, ece, soft_ece,
    nll, brier (see :mod:`mmpo.evaluation.metrics`), loss (the held-out mean of the training loss) and step;
    empty when there is no held-out set.
    """
    return train(RewardModelTask(), config)
