"""`mmpo dpo`: train a causal LM as a policy from preference pairs with DPO-family losses.

For a pair (x, y_w, y_l) with soft target p (see :func:`mmpo.losses.soft_targets`) the policy's preference
logit is DPO's implicit reward difference

    h = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]

and the losses are the policy entries of the registry :data:`mmpo.losses.LOSSES` (each with its formula):

* ``mmpo``        -p log sigmoid(h) - (1-p) log sigmoid(-h)       (soft targets; MMPO)
* ``dpo``         -log sigmoid(h)                                 (hard targets, p = 1)
* ``cdpo``        the same cross-entropy with every target at 1 - label_smoothing
* ``ipo``         (h / beta - 1 / (2 beta))^2, with ``ipo_logps: summed`` (default; TRL 0.7.7 and the official
                  MMPO code) or ``averaged`` (every log-prob divided by its response length, as TRL 1.x does;
                  a beta tuned for one form does not transfer to the other)
* ``simpo``       -log sigmoid(h'),  h' = beta * (log pi(y_w|x)/|y_w| - log pi(y_l|x)/|y_l|) - simpo_margin
* ``simpo_mmpo``  the MMPO cross-entropy on SimPO's h'             (reference-free, length-normalised)
* ``odpo``        -log sigmoid(h - odpo_alpha * f(margin)), f = odpo_offset (log by default; ODPO)
* ``rdpo``        -log sigmoid(h - rdpo_scale * margin)           (Rating-DPO)
* ``rpo_sq``, ``rpo_fwd_kl``, ``rpo_bwd_kl``  squared distance / forward KL / backward KL between h and
                  gamma * margin (as Bernoulli logits for the KLs; RPO as in NeMo-Aligner)
* ``gdpo``        -log sigmoid((2p - 1) h)                         (GDPO, geometric averaging)
* ``listwise``    -sum_i softmax(gamma s)_i log softmax(r)_i over a group's implicit rewards (``layout: groups``;
                  on a pair it is ``mmpo``)

Chosen and rejected are scored in ONE forward pass: spans ``[prompt | chosen | rejected]`` with the prompt
encoded once (``prefix_sharing``, :mod:`mmpo.models.shared_prefix`; several pairs per row with ``packing``), or
the 2B rows ``prompt + response``. Under ``layout: groups`` a prompt's k responses share one row
``[prompt | r_1 | ... | r_k]`` and each gets its implicit reward :func:`response_rewards`; the loss is the
listwise one or a pairwise one over all pairs of the group (:func:`mmpo.losses.group_losses`). The reference is a frozen copy, the LoRA base with the adapter disabled, or log-probs precomputed and cached
(:mod:`mmpo.models.reference`).

Logged with every training log and every evaluation (as ``train_*`` / ``eval_*``): loss, accuracy of
``h > 0``, mean margin ``h``, calibration of ``sigmoid(h)`` against the soft targets (ECE, soft ECE, NLL,
Brier; evaluation only, from :func:`mmpo.evaluation.metrics.pair_metrics`), the policy's summed response
log-probs, and the log-ratio drift from the reference

    logratio_chosen = mean over pairs of (log pi(y_w|x) - log pi_ref(y_w|x))       (likewise logratio_rejected)

This is the Monte-Carlo estimate of KL(pi || pi_ref) only when y_w is *sampled from pi*. Preference data
comes from other models, so here it is the log-ratio drift on the data's responses: it can be negative
(DPO usually pushes both log-probs down) and is reported under that honest name; no ``kl_estimate`` is
claimed, since an unbiased one would need samples from the policy.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial
from typing import Any

import numpy as np
import torch

from mmpo.config import DPOConfig, check_loss
from mmpo.data.pipeline import PreparedData
from mmpo.errors import UserError
from mmpo.evaluation.metrics import pair_metrics
from mmpo.losses import LOSSES, LossSettings, dpo_rewards, group_losses, needs_reference, simpo_rewards
from mmpo.models.embedded import resolve_model_path
from mmpo.models.loading import (
    adapter_base,
    continue_lora,
    get_lora_model,
    lora_config,
    model_load_kwargs,
    prepare_quantized_for_lora,
    quantization_setting,
    trainable_summary,
)
from mmpo.models.policy import freeze, load_causal_lm, save_policy
from mmpo.models.reference import (
    attach_group_reference_logps,
    attach_reference_logps,
    cached_reference_logps,
    model_identity,
    resolve_reference_mode,
    responses_as_pairs,
)
from mmpo.training.args import use_bf16
from mmpo.training.base import PairTrainer
from mmpo.training.run import Task, TrainSummary, train


# --- the math on recorded log-probs ------------------------------------------------------------------------

def response_rewards(
    loss: str, logps: torch.Tensor, lengths: torch.Tensor, reference_logps: torch.Tensor | None, beta: float,
    average_logps: bool = False,
) -> torch.Tensor:
    """Each response's implicit reward: :func:`mmpo.losses.dpo_rewards` for the DPO family (on per-token averages
    ``log pi / |y|``, policy and reference alike, with ``average_logps``), :func:`mmpo.losses.simpo_rewards` for
    the reference-free SimPO family. A pair's ``h`` is the difference of its two responses' rewards (SimPO's
    target margin aside, :func:`policy_rewards`)."""
    if not needs_reference(loss):
        return simpo_rewards(logps, lengths, beta)
    if reference_logps is None:
        raise ValueError(f"loss {loss!r} needs reference log-probabilities")
    if average_logps:
        n = lengths.float().clamp(min=1)
        logps, reference_logps = logps / n, reference_logps.float() / n
    return dpo_rewards(logps, reference_logps, beta)


def policy_rewards(
    loss: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    reference_chosen_logps: torch.Tensor | None,
    reference_rejected_logps: torch.Tensor | None,
    beta: float,
    simpo_margin: float = 0.0,
    average_logps: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair (chosen, rejected) rewards whose difference is ``h``: :func:`response_rewards` of each side, with
    SimPO's ``simpo_margin`` taken off chosen (as :func:`mmpo.losses.simpo_logits` takes its target margin off).
    """
    if needs_reference(loss) and (reference_chosen_logps is None or reference_rejected_logps is None):
        raise ValueError(f"loss {loss!r} needs reference log-probabilities")
    chosen = response_rewards(loss, policy_chosen_logps, chosen_lengths, reference_chosen_logps, beta, average_logps)
    rejected = response_rewards(loss, policy_rejected_logps, rejected_lengths, reference_rejected_logps, beta, average_logps)
    return (chosen - simpo_margin if not needs_reference(loss) else chosen), rejected


def policy_loss(
    loss: str, chosen: torch.Tensor, rejected: torch.Tensor, p: torch.Tensor, beta: float, label_smoothing: float = 0.0,
    *, margin: torch.Tensor | None = None, settings: LossSettings | None = None,
) -> torch.Tensor:
    """Per-pair loss for rewards from :func:`policy_rewards` (via :data:`mmpo.losses.LOSSES`).

    ``margin``: the raw score margins (NaN where unknown; none = all unknown), for the margin-aware losses.
    ``settings`` carries the other loss keys (ODPO's, Rating-DPO's, gamma); ``beta`` and ``label_smoothing``
    override its values.
    """
    check_loss(loss, "policy", "policy")
    settings = dataclasses.replace(settings or LossSettings(), beta=beta, label_smoothing=label_smoothing)
    if margin is None:
        margin = torch.full_like(torch.as_tensor(p, dtype=torch.float32), float("nan"))
    return LOSSES[loss].fn(chosen, rejected, {"p": p, "margin": margin}, settings)


def policy_eval_metrics(eval_pred: Any, extra_names: tuple[str, ...] = ()) -> dict[str, float]:
    """`compute_metrics`: predictions are ``[n, 1 + k]`` (``h`` then the extras), label_ids the targets ``p``.

    Returns :func:`pair_metrics` (accuracy, ECE, soft ECE, NLL, Brier), the mean margin, and each extra's mean.
    """
    preds = np.asarray(eval_pred.predictions, dtype=np.float64)
    if preds.ndim == 1:
        preds = preds[:, None]
    h = preds[:, 0]
    labels = np.asarray(eval_pred.label_ids, dtype=np.float64)
    p = labels[:, 0] if labels.ndim == 2 else labels.reshape(-1)  # [p, margin, row] per pair
    out = pair_metrics(h, p)
    out["margin"] = float(h.mean())
    for i, name in enumerate(extra_names):
        out[name] = float(preds[:, 1 + i].mean())
    return out


# --- the trainer -------------------------------------------------------------------------------------------

class PolicyTrainer(PairTrainer):
    """PairTrainer for a causal-LM policy: rewards are DPO's implicit rewards (or SimPO's), see module docstring."""

    def __init__(
        self,
        *args: Any,
        loss: str = "mmpo",
        beta: float = 0.1,
        simpo_margin: float = 0.0,
        label_smoothing: float = 0.0,
        ipo_logps: str = "summed",
        loss_settings: LossSettings | None = None,
        reference_mode: str = "precomputed",
        reference_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ):
        check_loss(loss, "policy", "policy")
        if reference_mode == "model" and reference_model is None:
            raise ValueError("reference_mode 'model' needs a reference_model")
        self.loss_name = loss
        self.beta = beta
        self.simpo_margin = simpo_margin
        self.label_smoothing = label_smoothing
        self.loss_settings = loss_settings or LossSettings()
        if ipo_logps not in ("summed", "averaged"):
            raise UserError(f"ipo_logps must be summed or averaged (got {ipo_logps!r})")
        self.average_logps = loss == "ipo" and ipo_logps == "averaged"
        self.reference_mode = reference_mode
        self.reference_model = reference_model
        self._reference_on_device = False
        self.extra_names: tuple[str, ...] = ("policy_chosen_logps", "policy_rejected_logps")
        if reference_mode != "none":
            self.extra_names += ("logratio_chosen", "logratio_rejected")
        kwargs.setdefault("compute_metrics", partial(policy_eval_metrics, extra_names=self.extra_names))
        super().__init__(*args, **kwargs)

    def _full_logits(self) -> bool:
        # Sharded heads (FSDP, ZeRO-3) are only whole inside the model's forward: take its logits.
        if self.is_fsdp_enabled:
            return True
        if self.is_deepspeed_enabled:
            plugin = self.accelerator.state.deepspeed_plugin
            return plugin is not None and plugin.zero_stage == 3
        return False

    def batch_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log pi(y|x), |y|)`` for the batch's 2B responses, chosen first, scored by the run's batch layout
        (the data collator, a :class:`~mmpo.models.batching.PairBatching`).

        Under mixed precision the vocabulary projection, which runs outside the model's (autocast) forward,
        is autocast as well.
        """
        with self.accelerator.autocast():
            return self.data_collator.logps(model, batch, full_logits=self._full_logits())

    def reference_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(log pi_ref(y_w|x), log pi_ref(y_l|x))`` for the batch, or None when running reference-free."""
        mode = self.reference_mode
        if mode == "none":
            return None
        if mode == "precomputed":
            if "reference_chosen_logps" not in batch:
                raise RuntimeError("reference: precomputed, but the batch carries no reference log-probs")
            return batch["reference_chosen_logps"], batch["reference_rejected_logps"]
        if mode == "model":
            if not self._reference_on_device:
                self.reference_model.to(self.accelerator.device)
                self._reference_on_device = True
            with torch.no_grad(), self.accelerator.autocast():
                logps, _ = self.batch_logps(self.reference_model, batch)
        elif mode == "adapter":
            peft_model = self.accelerator.unwrap_model(model)
            was_training = model.training
            model.eval()  # the reference has no dropout
            try:
                # The frozen trunk carries no adapter, so its cached states serve the reference too.
                with torch.no_grad(), peft_model.disable_adapter():
                    logps, _ = self.trunk_forward(model, self.batch_logps, batch)
            finally:
                model.train(was_training)
        else:
            raise ValueError(f"unknown reference mode {mode!r}")
        half = logps.shape[0] // 2
        return logps[:half].detach(), logps[half:].detach()

    def pair_rewards(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        reference = self.reference_logps(model, batch)
        logps, n_tokens = self.trunk_forward(model, self.batch_logps, batch)
        half = logps.shape[0] // 2
        policy_chosen, policy_rejected = logps[:half], logps[half:]
        ref_chosen, ref_rejected = reference if reference is not None else (None, None)
        chosen, rejected = policy_rewards(
            self.loss_name, policy_chosen, policy_rejected, n_tokens[:half], n_tokens[half:],
            ref_chosen, ref_rejected, self.beta, self.simpo_margin, average_logps=self.average_logps,
        )
        extras = {"policy_chosen_logps": policy_chosen.detach(), "policy_rejected_logps": policy_rejected.detach()}
        if reference is not None:
            extras["logratio_chosen"] = (policy_chosen.detach() - ref_chosen.float())
            extras["logratio_rejected"] = (policy_rejected.detach() - ref_rejected.float())
        return chosen, rejected, extras

    def pair_loss(self, chosen: torch.Tensor, rejected: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return policy_loss(
            self.loss_name, chosen, rejected, batch["p"], self.beta, self.label_smoothing,
            margin=batch["margin"], settings=self.loss_settings,
        )

    def group_rewards(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each response's implicit reward (:func:`response_rewards`), ``[groups, k]``; the reference's log-probs
        come from the batch (precomputed), the reference model or the LoRA base, scored on the same rows."""
        k = batch["group_mask"].shape[1]
        mode = self.reference_mode
        reference = None
        if mode == "precomputed":
            if "reference_logps" not in batch:
                raise RuntimeError("reference: precomputed, but the batch carries no reference log-probs")
            reference = batch["reference_logps"].t().reshape(-1)  # [k * groups], response-major as the logps
        elif mode != "none":
            reference = torch.cat(self.reference_logps(model, batch))  # the two halves put back together
        logps, n_tokens = self.trunk_forward(model, self.batch_logps, batch)
        rewards = response_rewards(self.loss_name, logps, n_tokens, reference, self.beta, self.average_logps)
        return rewards.view(k, -1).t()

    def group_loss(self, rewards: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        settings = dataclasses.replace(self.loss_settings, beta=self.beta, label_smoothing=self.label_smoothing)
        return group_losses(self.loss_name, rewards, batch["scores"], batch["group_mask"], settings)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            chosen, rejected, extras = self.pair_rewards(model, inputs)
            loss = self.pair_loss(chosen, rejected, inputs).mean().detach()
        if prediction_loss_only:
            return loss, None, None
        # One [B, 1 + k] tensor so the extras are gathered across processes along with h.
        columns = [(chosen - rejected).float()] + [extras[name].float() for name in self.extra_names]
        return loss, torch.stack(columns, dim=1).detach(), self.pair_labels(inputs)


# --- the policy task -----------------------------------------------------------------------------------------

def _model_dtype(config: DPOConfig, bf16: bool) -> torch.dtype | str:
    # `dtype` set: as asked. Else a frozen LoRA base can live in bf16; fully trained weights stay float32
    # masters under mixed precision.
    if config.dtype is not None:
        return "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    return torch.bfloat16 if bf16 and config.lora_r > 0 else torch.float32


def _reference_load_kwargs(config: DPOConfig, dtype: Any) -> dict[str, Any]:
    # ref_model is another checkpoint: the policy's revision does not apply to it.
    kwargs = model_load_kwargs(config, dtype)
    kwargs.pop("revision", None)
    return kwargs


def reference_identity(config: DPOConfig) -> dict[str, Any]:
    """The reference model's identity for the precomputed cache's key: ``ref_model`` as loaded (no revision), or
    the policy's starting model at ``revision``; both with the run's quantisation."""
    revision = None if config.ref_model else config.revision
    name = config.ref_model or config.model
    return model_identity(resolve_model_path(name, revision), revision, quantization_setting(config))


def _precompute(config: DPOConfig, model: torch.nn.Module, dtype: torch.dtype, bf16: bool, features: dict[str, list], pad_token_id: int) -> tuple[dict[str, list], dict[str, dict[str, Any]]]:
    from mmpo.distributed import process_state

    identity = reference_identity(config)
    settings = {
        "max_length": config.max_length,
        "max_prompt_length": config.prompt_budget,
        "dtype": str(dtype),
        "autocast_bf16": bf16,
    }
    device = process_state().device  # this rank's device
    loaded: dict[str, torch.nn.Module] = {}

    def get_model() -> torch.nn.Module:
        if "model" not in loaded:
            ref = model if config.ref_model is None else freeze(load_causal_lm(config.ref_model, **_reference_load_kwargs(config, dtype)))
            # A quantised model was placed on its GPU when loaded and cannot be moved.
            loaded["model"] = ref if getattr(ref, "is_quantized", False) else ref.to(device)
        return loaded["model"]

    out, info = {}, {}
    # Every rank takes part: on a cache miss each computes its shard (see cached_reference_logps).
    for split, feats in features.items():
        groups = bool(feats) and "response_ids" in feats[0]  # layout: groups: the responses go through as pairs
        pairs, where = responses_as_pairs(feats) if groups else (feats, [])
        cached = cached_reference_logps(
            get_model, pairs, identity, settings, pad_token_id,
            batch_size=config.per_device_eval_batch_size, device=device,
            autocast_dtype=torch.bfloat16 if bf16 else None, desc=f"reference log-probs ({split})",
            prefix_sharing=config.prefix_sharing, packing=config.packing,
        )
        if groups:
            out[split] = attach_group_reference_logps(feats, where, cached.chosen, cached.rejected)
        else:
            out[split] = attach_reference_logps(feats, cached.chosen, cached.rejected)
        info[split] = {"path": str(cached.path), "from_cache": cached.from_cache, "pairs": len(pairs)}
        print(f"reference log-probs ({split}): {'reused' if cached.from_cache else 'computed and cached'} at {cached.path}")
    if "model" in loaded and loaded["model"] is not model:
        del loaded["model"]
    return out, info


class PolicyTask(Task):
    """A causal-LM policy: the reference (frozen copy, LoRA base or precomputed log-probs) is set up with the
    model; the final evaluation runs in the training precision (see :mod:`mmpo.training.run`)."""

    loss_kind = "policy"
    card_kind = "policy"
    what = "policy"
    trainer_class = PolicyTrainer
    final_eval_float32 = False

    def __init__(self) -> None:
        self.reference_mode = "none"
        self.reference_model: torch.nn.Module | None = None
        self.reference_cache: dict[str, dict[str, Any]] = {}
        self.train_features: list[dict[str, Any]] = []
        self.eval_features: list[dict[str, Any]] = []

    def build_model(self, config: DPOConfig, tokenizer: Any, data: PreparedData) -> Any:
        """The policy (+LoRA) and its reference; precomputed reference log-probs are attached to the features."""
        mode = self.reference_mode = resolve_reference_mode(config.loss, config.reference, config.lora_r, config.ref_model)
        # A LoRA run that starts from a LoRA adapter directory trains that adapter on (the result stays one adapter
        # on the same base); its base with the adapter off is then not the starting policy.
        start_adapter = adapter_base(resolve_model_path(config.model)) if config.lora_r > 0 else None
        if start_adapter is not None and mode == "adapter":
            if config.reference == "adapter":
                raise UserError(f"reference: adapter: model {config.model} is a LoRA adapter, so its base with the adapter "
                                "off is not the starting policy; use reference: precomputed or model")
            mode = self.reference_mode = "precomputed"
        bf16 = use_bf16(config.bf16)
        dtype = _model_dtype(config, bf16)
        model = load_causal_lm(start_adapter or config.model, **model_load_kwargs(config, dtype))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.config.use_cache = False  # no generation during training; the KV cache only costs memory
        if start_adapter is not None:
            model = continue_lora(prepare_quantized_for_lora(model, config), resolve_model_path(config.model))

        self.train_features, self.eval_features = data.train, data.eval
        if mode == "precomputed":
            splits = {"train": self.train_features}
            if self.eval_features:
                splits["eval"] = self.eval_features
            with_ref, self.reference_cache = _precompute(config, model, dtype, bf16, splits, tokenizer.pad_token_id)
            self.train_features, self.eval_features = with_ref["train"], with_ref.get("eval", [])
        elif mode == "model":
            self.reference_model = freeze(
                load_causal_lm(config.ref_model, **_reference_load_kwargs(config, dtype)) if config.ref_model else copy.deepcopy(model)
            )

        if config.lora_r > 0 and start_adapter is None:
            model = prepare_quantized_for_lora(model, config)  # QLoRA: a 4/8-bit base
            model = get_lora_model(model, lora_config(config, "CAUSAL_LM", model=model))
            print(trainable_summary(model, config))
        return model

    def features(self, data: PreparedData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.train_features, self.eval_features

    def scored_also(self) -> tuple[Any, ...]:
        return (self.reference_model,)

    def trainer_kwargs(self, config: DPOConfig) -> dict[str, Any]:
        return {
            "loss": config.loss,
            "beta": config.beta,
            "simpo_margin": config.simpo_margin,
            "label_smoothing": config.label_smoothing,
            "ipo_logps": config.ipo_logps,
            "loss_settings": LossSettings.from_config(config),
            "reference_mode": self.reference_mode,
            "reference_model": self.reference_model,
        }

    def prefill_forward(self, trainer: PolicyTrainer) -> Any:
        return trainer.batch_logps

    def save(self, trainer: PolicyTrainer, tokenizer: Any, config: DPOConfig) -> str | None:
        """The model (LoRA merged into the base when ``merge_lora``, else the adapter) with its tokenizer and
        chat template, so ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads it."""
        if trainer.is_deepspeed_enabled:
            # ZeRO-3 holds shards; Trainer gathers them for saving (merging LoRA is left to a later step).
            trainer.save_model(config.output_dir)
            return "deepspeed"
        if trainer.args.should_save:
            return save_policy(
                trainer.accelerator.unwrap_model(trainer.model), tokenizer, config.output_dir, config.merge_lora,
                config.revision, config.trust_remote_code,
            )
        return None

    def details(self) -> dict[str, Any]:
        return {"reference": self.reference_mode, "reference_cache": self.reference_cache}


def train_policy(config: DPOConfig) -> TrainSummary:
    """Train a policy per ``config`` and save it to ``config.output_dir`` (the sequence of
    :func:`mmpo.training.run.train`); ``summary.details`` holds the ``reference`` mode and ``reference_cache``.

    Writes ``config.yaml`` and ``data_report.json`` when training starts, ``checkpoint-N/`` while training (a
    rerun of the same command resumes from the last complete one, or reuses a finished run; see ``resume`` and
    :mod:`mmpo.training.run_dir`), and at the end the model with its tokenizer and chat template, plus
    ``eval_results.json`` (last).
    """
    return train(PolicyTask(), config)
