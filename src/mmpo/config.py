"""Run configuration: a YAML recipe, overridden key by key from the command line.

``mmpo rm recipe.yaml --learning_rate 1e-5 --gamma none`` loads the recipe into a dataclass and applies each
``--key value`` (values parsed as YAML, so numbers, booleans, lists and ``null``/``none`` work). Every value is
checked against its field's type (``none`` only where the type allows it; a number written as text, e.g. ``1e-5``,
becomes the field's number type); a mismatch, like ``gamma: true`` or a bare ``--lora_r``, is a one-line error
naming the key and where it came from. Unknown keys are an error that suggests the closest known key.
``$MMPO_CACHE`` (or ``${MMPO_CACHE}``) in a value is the cache directory, also when the variable is unset
(default ``~/.cache/mmpo``): recipes name data made by `mmpo make-data` that way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmpo.errors import UserError
from mmpo.losses import ODPO_OFFSETS, losses_for

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Keys shared by `mmpo rm` and `mmpo dpo`."""

    # model
    model: str = field(default="embedded", metadata={"help": "model to start from: a hub id, a local directory, or `embedded` (SmolLM2-135M-Instruct)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer to use (none = the model's)"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (branch, tag or commit) of model and tokenizer (none = the default branch)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub repository (only for models you trust)"})
    attn_implementation: str | None = field(default=None, metadata={"help": "attention kernel: eager | sdpa | flex_attention (CUDA training; block-sparse shared/packed masks) | flash_attention_2 (no prefix sharing) | ... (none = transformers' choice)"})
    dtype: str | None = field(default=None, metadata={"help": "weight dtype: float32 | bfloat16 | float16 | auto (checkpoint's); none = float32, or bfloat16 for a frozen LoRA base under bf16"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base in 4 bit through bitsandbytes (CUDA only; needs lora_r > 0)"})
    load_in_8bit: bool = field(default=False, metadata={"help": "load the base in 8 bit through bitsandbytes (CUDA only; needs lora_r > 0)"})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit quantisation type for load_in_4bit: nf4 | fp4"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0 = full fine-tuning)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path"})
    lora_target_modules: Any = field(default="all-linear", metadata={"help": "modules to adapt: all-linear, a name, or a list of names"})
    lora_layers: int | None = field(default=None, metadata={"help": "adapt only the last N blocks (none = all); backward stops below them"})
    merge_lora: bool = field(default=True, metadata={"help": "save a LoRA run merged into its base as one float32 model (false = save the peft adapter, with a reward model's trained head)"})
    trunk_cache: Any = field(
        default="auto",
        metadata={
            "help": "auto | true | false: with lora_layers, compute the frozen lower blocks' output once per "
            "sequence and train/evaluate only the top blocks (auto = where exact; turns prefix_sharing and packing "
            "off for the run; see mmpo.models.trunk_cache)"
        },
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={"help": "recompute each block's activations in backward instead of keeping them: less peak memory, "
                          "slower steps (on by default, as in TRL; false where memory is to spare)"},
    )
    bf16: Any = field(default="auto", metadata={"help": "bfloat16 autocast over float32 weights: auto (where the hardware has it natively: CUDA, AVX512-BF16/AMX CPUs; else float32) | true | false"})
    prefix_sharing: bool = field(
        default=True,
        metadata={"help": "score each pair in one row [prompt | chosen | rejected] so the prompt is encoded once "
                          "(exact; off, or unsupported attention, = two rows per pair)"},
    )
    packing: Any = field(
        default="auto",
        metadata={"help": "auto | true | false: with prefix_sharing, put several pairs in one row so padding mostly "
                          "disappears (exact; see mmpo.models.shared_prefix); auto = on where attention runs per pair "
                          "(CPU under SDPA)"},
    )
    layout: str = field(
        default="pairs",
        metadata={"help": "pairs | groups: train on pairs, or on each prompt's graded responses together, one row "
                          "[prompt | r_1 | ... | r_k] per group (needs prefix_sharing and per-response scores; "
                          "batch sizes count groups; held-out data stays pairs; see docs/performance.md)"},
    )
    group_size: int = field(
        default=8,
        metadata={"help": "layout groups: most responses in one group; a prompt with more is split into near-equal "
                          "groups, its responses dealt in an order seeded by seed"},
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": "order training pairs so each step's pairs have similar token counts (random blocks of up "
                          "to 50 steps, each sorted by length; resumable): less padding where a step's pairs are not "
                          "packed into shared rows (GPUs, packing: false); changes which pairs share a step"},
    )
    keep_host_memory: bool = field(
        default=True,
        metadata={"help": "CPU runs on glibc: keep the memory a step frees for the next step instead of returning it "
                          "to the OS (no page faults re-touching it every step; resident memory stays at its peak "
                          "until the process exits; see mmpo.host_memory)"},
    )
    kernel_cache_capacity: int = field(
        default=64,
        metadata={"help": "CPU runs: entries kept in each of oneDNN's and ideep's caches of compiled kernels (keyed "
                          "by tensor shapes), which bounds their memory when sequence lengths change every step (see "
                          "mmpo.host_memory); 0 = the libraries' defaults; ONEDNN_PRIMITIVE_CACHE_CAPACITY / "
                          "LRU_CACHE_CAPACITY in the environment win"},
    )
    # data (a path, a hub name / source name, or a mapping; see mmpo.data.pipeline.load_pairs)
    data: Any = field(default=None, metadata={"help": "training pairs: a file, a hub data set or source name, or a mapping (see docs)"})
    eval_data: Any = field(default=None, metadata={"help": "held-out pairs, in the same forms as data (none = split eval_split off data)"})
    eval_split: float = field(default=0.05, metadata={"help": "held-out share of data when eval_data is not given"})
    allow_eval_overlap: bool = field(default=False, metadata={"help": "accept held-out prompts that also occur in training (eval_data vs data; eval_prompts vs prompts in mmpo online): false refuses them. Their count is in the data report either way; held-out data identical to the training data is always refused"})
    data_columns: dict[str, str] = field(default_factory=dict, metadata={"help": "column renames, e.g. {prompt: question, score_chosen: rating_a}"})
    max_pairs: int | None = field(default=None, metadata={"help": "a seeded sample of this many training pairs (none = all)"})
    max_eval_pairs: int | None = field(default=None, metadata={"help": "a seeded sample of this many held-out pairs (none = all)"})
    ties: str = field(default="keep", metadata={"help": "pairs with equal scores: keep (target p = 0.5) | drop"})
    order_conflict: str = field(default="swap", metadata={"help": "score_chosen < score_rejected: swap | drop | error"})
    pairs_per_prompt: int | None = field(default=None, metadata={"help": "at most this many pairs per prompt (none = all)"})
    margin_bins: int = field(default=0, metadata={"help": "> 0: sample pairs uniformly across this many score-difference quantile bins"})
    over_length: str = field(default="drop", metadata={"help": "a pair longer than max_length: drop it (counted) or truncate it; see docs/data.md"})
    max_length: int = field(default=512, metadata={"help": "tokens per prompt + response"})
    max_prompt_length: int | None = field(default=None, metadata={"help": "prompt tokens kept (none = max_length // 2)"})
    # loss
    loss: str = field(default="mmpo", metadata={"help": "training loss"})
    gamma: float | None = field(default=1.0, metadata={"help": "MMPO target sharpness: p = sigmoid(gamma * score margin); none or hard = hard labels (p = 1)"})
    eval_gamma: float | str | None = field(default="same", metadata={"help": "held-out truth p = sigmoid(eval_gamma * margin): 'same' = gamma, a number > 0, or none / hard = hard labels; fix it to score runs with different losses against one truth"})
    label_smoothing: float = field(default=0.1, metadata={"help": "epsilon of the label_smoothing / cdpo losses"})
    # optimisation
    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs (max_steps > 0 overrides)"})
    max_steps: int = field(default=-1, metadata={"help": "optimiser steps to train (-1 = num_train_epochs)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs (layout groups: groups) per device per step"})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "pairs per device per evaluation batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches accumulated into one optimiser step"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers learning-rate schedule: linear | cosine | constant | ..."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of the steps spent warming the learning rate up, in [0, 1)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    seed: int = field(default=42, metadata={"help": "seed for sampling, initialisation and data order"})
    # bookkeeping
    output_dir: str = field(default="runs/mmpo", metadata={"help": "run directory: checkpoints, metrics, the final model and its card"})
    logging_steps: int = field(default=10, metadata={"help": "log training statistics every N steps"})
    eval_steps: int | None = field(default=None, metadata={"help": "evaluate every N steps (none = at the end of each epoch)"})
    save_steps: int | None = field(default=None, metadata={"help": "checkpoint every N steps (none = at the end of each epoch)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (none = all)"})
    resume: Any = field(default="auto", metadata={"help": "auto (resume the run in output_dir when its settings match; a finished one is reused) | false (start over) | a checkpoint path"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start over in output_dir: delete the earlier run's checkpoints, metrics and results there first"})
    report_to: Any = field(default=None, metadata={"help": "experiment trackers: tensorboard | wandb | trackio | mlflow | a list (those installed; none = no tracker)"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    torch_compile: bool = field(default=False, metadata={"help": "compile the model with torch.compile"})
    debug: bool = field(default=False, metadata={"help": "show tracebacks for user errors"})
    trainer_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "any other transformers.TrainingArguments key (optim, adam_beta2, push_to_hub, ...); also accepted at the top level"})

    def validate(self) -> None:
        check_ranges(self, TRAIN_RANGES)
        if not (isinstance(self.bf16, bool) or str(self.bf16).lower() in ("auto", "true", "false")):
            raise UserError(f"bf16 must be auto, true or false (got {self.bf16!r})")
        if not isinstance(self.bf16, bool) and str(self.bf16).lower() != "auto":
            self.bf16 = str(self.bf16).lower() == "true"
        if self.max_steps != -1 and self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1, or -1 for num_train_epochs (got {self.max_steps})")
        if self.gamma is not None and not self.gamma > 0:
            raise UserError(f"gamma must be > 0 (got {self.gamma}); use 'gamma: none' for hard labels")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise UserError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio must lie in [0, 1) (got {self.warmup_ratio})")
        if self.ties not in ("keep", "drop"):
            raise UserError(f"ties must be 'keep' or 'drop' (got {self.ties!r})")
        if self.order_conflict not in ("swap", "drop", "error"):
            raise UserError(f"order_conflict must be swap, drop or error (got {self.order_conflict!r})")
        if not (isinstance(self.trunk_cache, bool) or str(self.trunk_cache).lower() in ("auto", "true", "false")):
            raise UserError(f"trunk_cache must be auto, true or false (got {self.trunk_cache!r})")
        if not (isinstance(self.packing, bool) or str(self.packing).lower() in ("auto", "true", "false")):
            raise UserError(f"packing must be auto, true or false (got {self.packing!r})")
        if not isinstance(self.packing, bool):
            self.packing = {"auto": "auto", "true": True, "false": False}[str(self.packing).lower()]
        if isinstance(self.kernel_cache_capacity, bool) or not isinstance(self.kernel_cache_capacity, int) or self.kernel_cache_capacity < 0:
            raise UserError(f"kernel_cache_capacity must be an integer >= 0 (got {self.kernel_cache_capacity!r}); 0 keeps the libraries' defaults")
        if self.data is None:
            raise UserError("no training data: set `data` in the recipe or pass --data PATH")
        if self.eval_gamma != "same" and self.eval_gamma is not None and (
            isinstance(self.eval_gamma, bool) or not isinstance(self.eval_gamma, (int, float)) or not self.eval_gamma > 0
        ):
            raise UserError(f"eval_gamma must be 'same', a number > 0 or none (got {self.eval_gamma!r})")
        if self.layout not in ("pairs", "groups"):
            raise UserError(f"layout must be pairs or groups (got {self.layout!r})")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 2:
            raise UserError(f"group_size must be a whole number >= 2 (got {self.group_size!r})")
        if self.layout == "groups" and not self.prefix_sharing:
            raise UserError("layout: groups scores each group in one shared row: it needs prefix_sharing: true")
        if self.layout == "groups" and str(self.trunk_cache).lower() == "true":
            raise UserError("layout: groups scores each group in one shared row, which the trunk cache cannot hold: set trunk_cache: auto or false")
        if self.over_length not in ("drop", "truncate"):
            raise UserError(f"over_length must be drop or truncate (got {self.over_length!r})")
        if self.load_in_4bit and self.load_in_8bit:
            raise UserError("choose one of load_in_4bit and load_in_8bit")
        if (self.load_in_4bit or self.load_in_8bit) and self.lora_r <= 0:
            raise UserError("load_in_4bit / load_in_8bit train a LoRA adapter on a frozen quantised base: set lora_r > 0")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise UserError(f"bnb_4bit_quant_type must be nf4 or fp4 (got {self.bnb_4bit_quant_type!r})")
        if self.dtype not in (None, "auto", "float32", "bfloat16", "float16"):
            raise UserError(f"dtype must be float32, bfloat16, float16 or auto (got {self.dtype!r})")
        check_trainer_args(self.trainer_args)

    @property
    def prompt_budget(self) -> int:
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2


def check_loss(loss: str, kind: str, what: str) -> None:
    """A UserError naming the choices unless ``loss`` is a registered loss for ``kind`` (rm / policy)."""
    if loss not in losses_for(kind):
        raise UserError(f"unknown {what} loss {loss!r}: choose {', '.join(losses_for(kind))}")


def in_range(value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, optional: bool = False) -> bool:
    """Whether ``value`` is a number (not a bool, not NaN) in the interval ``[low, high]`` (``(`` / ``)`` where
    ``low_open`` / ``high_open``; no bound where ``None``); ``None`` passes where ``optional``."""
    if value is None:
        return optional
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


# key -> (what the error says it must be, the in_range arguments). Checked before any work by validate().
Range = tuple[str, dict[str, Any]]
TRAIN_RANGES: dict[str, Range] = {
    "lora_r": (">= 0 (0 = full fine-tuning)", {"low": 0}),
    "lora_alpha": ("> 0", {"low": 0, "low_open": True}),
    "lora_dropout": ("in [0, 1)", {"low": 0, "high": 1, "high_open": True}),
    "lora_layers": (">= 1 or none", {"low": 1, "optional": True}),
    "eval_split": ("in [0, 1)", {"low": 0, "high": 1, "high_open": True}),
    "max_pairs": (">= 1 or none", {"low": 1, "optional": True}),
    "max_eval_pairs": (">= 0 or none", {"low": 0, "optional": True}),
    "pairs_per_prompt": (">= 0 or none (0 or none = no cap)", {"low": 0, "optional": True}),
    "margin_bins": (">= 0", {"low": 0}),
    "max_length": (">= 2", {"low": 2}),
    "max_prompt_length": (">= 1 or none", {"low": 1, "optional": True}),
    "label_smoothing": ("in [0, 0.5)", {"low": 0, "high": 0.5, "high_open": True}),
    "learning_rate": ("> 0", {"low": 0, "low_open": True}),
    "num_train_epochs": ("> 0", {"low": 0, "low_open": True}),
    "per_device_train_batch_size": (">= 1", {"low": 1}),
    "per_device_eval_batch_size": (">= 1", {"low": 1}),
    "gradient_accumulation_steps": (">= 1", {"low": 1}),
    "weight_decay": (">= 0", {"low": 0}),
    "max_grad_norm": (">= 0", {"low": 0}),
    "seed": (">= 0", {"low": 0}),
    "logging_steps": (">= 1", {"low": 1}),
    "eval_steps": (">= 1 or none", {"low": 1, "optional": True}),
    "save_steps": (">= 1 or none", {"low": 1, "optional": True}),
    "save_total_limit": (">= 1 or none", {"low": 1, "optional": True}),
    "dataloader_num_workers": (">= 0", {"low": 0}),
}


def check_ranges(config: Any, ranges: dict[str, Range]) -> None:
    """A one-line UserError naming the first key of ``ranges`` whose value on ``config`` is out of its range."""
    for key, (rule, bounds) in ranges.items():
        value = getattr(config, key)
        if not in_range(value, **bounds):
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            raise UserError(f"{key} must be {rule} (got {shown})")


@dataclass
class RMConfig(TrainConfig):
    """`mmpo rm`: a reward model (backbone + scalar head)."""

    loss: str = field(default="mmpo", metadata={"help": " | ".join(losses_for("rm"))})
    output_dir: str = field(default="runs/rm", metadata={"help": "run directory: checkpoints, metrics, the final model and its card"})

    def validate(self) -> None:
        super().validate()
        check_loss(self.loss, "rm", "reward-model")


@dataclass
class DPOConfig(TrainConfig):
    """`mmpo dpo`: a policy trained against a reference with DPO-family losses."""

    loss: str = field(default="mmpo", metadata={"help": " | ".join(losses_for("policy"))})
    over_length: str = field(default="truncate", metadata={"help": "a pair longer than max_length: truncate it (a policy compares the answers' openings) or drop it (counted)"})
    beta: float = field(default=0.1, metadata={"help": "strength of the pull toward the reference (DPO's beta)"})
    simpo_margin: float = field(default=0.0, metadata={"help": "SimPO's target reward margin (its gamma)"})
    odpo_alpha: float = field(default=1.0, metadata={"help": "odpo: the offset's strength alpha, >= 0 (offset = alpha * f(score margin); 0 = DPO)"})
    odpo_offset: str = field(default="log", metadata={"help": "odpo: f of the offset: log (the ODPO paper's; a tie gets no constraint) | log1p (0 at a tie) | linear"})
    rdpo_scale: float = field(default=1.0, metadata={"help": "rdpo: the score-margin shift's scale, >= 0 (0 = DPO)"})
    ipo_logps: str = field(default="summed", metadata={"help": "IPO's log-probs: summed over the response (TRL 0.7.7, the official MMPO code) or averaged per token (TRL 1.x); betas do not transfer"})
    learning_rate: float = field(default=5e-6, metadata={"help": "peak learning rate"})
    reference: str = field(default="auto", metadata={"help": "reference log-probs: auto | model | adapter | precomputed | none"})
    ref_model: str | None = field(default=None, metadata={"help": "reference model (none = the starting model)"})
    output_dir: str = field(default="runs/dpo", metadata={"help": "run directory: checkpoints, metrics, the final model and its card"})

    def validate(self) -> None:
        super().validate()
        check_loss(self.loss, "policy", "policy")
        if self.layout == "groups" and self.simpo_margin and self.loss in ("simpo", "simpo_mmpo"):
            raise UserError("simpo_margin offsets a pair's chosen response, which a group does not name: "
                            "use simpo_margin: 0 with layout: groups")
        if not self.odpo_alpha >= 0:
            raise UserError(f"odpo_alpha must be >= 0 (got {self.odpo_alpha})")
        if self.odpo_offset not in ODPO_OFFSETS:
            raise UserError(f"odpo_offset must be {', '.join(ODPO_OFFSETS)} (got {self.odpo_offset!r})")
        if not self.rdpo_scale >= 0:
            raise UserError(f"rdpo_scale must be >= 0 (got {self.rdpo_scale})")
        if self.loss.startswith("rpo_") and self.gamma is None:
            raise UserError(f"loss {self.loss} regresses onto gamma * score margin: set gamma > 0 (not none)")
        if not self.beta > 0:
            raise UserError(f"beta must be > 0 (got {self.beta})")
        if self.ipo_logps not in ("summed", "averaged"):
            raise UserError(f"ipo_logps must be summed or averaged (got {self.ipo_logps!r})")
        if self.reference is None:  # `reference: none` arrives as None (none/null are YAML's null)
            self.reference = "none"
        if self.reference not in ("auto", "model", "adapter", "precomputed", "none"):
            raise UserError(f"reference must be auto, model, adapter, precomputed or none (got {self.reference!r})")
        from mmpo.models.reference import resolve_reference_mode

        # Impossible reference settings (adapter without LoRA or with a ref_model, none with a reference loss) are
        # refused here, before any data or model is loaded.
        resolve_reference_mode(self.loss, self.reference, self.lora_r, self.ref_model)


def _parse_value(text: str) -> Any:
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads "1e-5" as a string; a command-line number should be a number.
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(tp: Any) -> str:
    """How an error message names a field type: ``int | None`` -> "an integer or none"."""
    members = typing.get_args(tp) if _is_union(tp) else (tp,)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    words = [names.get(typing.get_origin(m) or m, str(m)) for m in members if m is not type(None)]
    if type(None) in members:
        words.append("none")
    return " or ".join(words)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _as_number(value: Any, kind: type) -> Any:
    """``value`` as an int or float, or ``_NO`` when it is not one. Booleans are not numbers here."""
    if isinstance(value, bool):
        return _NO
    if isinstance(value, str):
        # YAML 1.1 reads "1e-5" (no dot) as a string; a number written so is still a number.
        try:
            value = float(value) if kind is float or any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return _NO
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e3 for an integer key
    return _NO


_NO = object()  # "does not fit this type"


def _fit(value: Any, tp: Any) -> Any:
    """``value`` converted to field type ``tp``, or ``_NO``."""
    if tp is Any:
        # An untyped key takes any value; the word none still means null, as YAML's null does.
        return None if isinstance(value, str) and value.strip().lower() in ("none", "null") else value
    if _is_union(tp):
        members = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None if type(None) in members else _NO
        for member in (m for m in members if m is not type(None)):
            fitted = _fit(value, member)
            if fitted is not _NO:
                return fitted
        return _NO
    origin = typing.get_origin(tp) or tp
    if origin in (int, float):
        return _as_number(value, origin)
    if origin is bool:
        return value if isinstance(value, bool) else _NO
    if origin is str:
        if value is None:
            return "none"  # `key: none` / `--key none` read as null; for a plain string key it is the word
        return value if isinstance(value, str) else _NO
    if origin is dict:
        return value if isinstance(value, dict) else _NO
    return value


def _coerce(name: str, value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the field type ``tp`` (converting numbers written as text); a mismatch is a
    one-line UserError, so ``--lora_r`` without a value (read as true) or ``gamma: true`` never reach training."""
    fitted = _fit(value, tp)
    if fitted is _NO:
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        raise UserError(f"config key '{name}' expects {_type_name(tp)} (got {shown} {where})")
    return fitted


def _expand_cache(value: Any) -> Any:
    """``$MMPO_CACHE`` in any string of a value (also inside mappings and lists), see :func:`expand_cache_variable`."""
    from mmpo.paths import expand_cache_variable

    if isinstance(value, str):
        return expand_cache_variable(value)
    if isinstance(value, dict):
        return {k: _expand_cache(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_cache(v) for v in value]
    return value


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe's keys as written: a YAML file, or a packaged recipe by name (``embedded/rm``)."""
    from mmpo.recipes import resolve_recipe

    p = resolve_recipe(path)
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    return loaded


# Keys read by mmpo.gamma.parse_gamma: a number > 0, or none / hard for hard labels.
GAMMA_KEYS = frozenset({"gamma", "eval_gamma"})


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML file and ``--key value`` overrides (a list of CLI tokens or a dict)."""
    values: dict[str, Any] = read_recipe(path) if path is not None else {}
    cli_values: dict[str, Any] = {}
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides:
        cli_values = parse_overrides(overrides)
        values.update(cli_values)
    known = {f.name: f for f in dataclasses.fields(cls)}
    # Any other TrainingArguments key passes through, collected under `trainer_args` (see training.args).
    passthrough = trainer_argument_names() if "trainer_args" in known else set()
    trainer_args = dict(values.pop("trainer_args", None) or {})
    for key in list(values):
        if key in known:
            continue
        if key in passthrough:
            trainer_args[key] = values.pop(key)
            continue
        close = difflib.get_close_matches(key, list(known) + sorted(passthrough), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        where = f" in {path}" if path is not None else ""
        raise UserError(f"unknown config key '{key}'{where}{hint}")
    if trainer_args:
        values["trainer_args"] = trainer_args
    values = {k: _expand_cache(v) for k, v in values.items()}
    types_of = typing.get_type_hints(cls)
    from mmpo.gamma import parse_gamma

    from_file = set(values) - set(overrides if isinstance(overrides, dict) else cli_values)
    kwargs = {}
    for k, v in values.items():
        where = f"in {path}" if k in from_file else ("on the command line" if k in cli_values else "in the overrides")
        if k in GAMMA_KEYS and isinstance(v, str) and v != "same":  # eval_gamma's "same" = gamma; other types: _coerce
            v = parse_gamma(v, f"config key '{k}'", where)
        kwargs[k] = _coerce(k, v, types_of[k], where)
    config = cls(**kwargs)
    if hasattr(config, "validate"):
        config.validate()
    return config


# TrainingArguments keys mmpo sets from its own logic; a different value would break the pair trainer.
MANAGED_TRAINER_ARGS = frozenset({"output_dir", "remove_unused_columns", "label_names"})


def trainer_argument_names() -> set[str]:
    """The ``transformers.TrainingArguments`` keys a recipe may pass through (all but :data:`MANAGED_TRAINER_ARGS`)."""
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init and not f.name.startswith("_")} - MANAGED_TRAINER_ARGS


def check_trainer_args(trainer_args: Any) -> None:
    """``trainer_args`` must map TrainingArguments keys to values; an unknown key names the closest one."""
    if not isinstance(trainer_args, dict):
        raise UserError(f"trainer_args must be a mapping of TrainingArguments keys (got {trainer_args!r})")
    names = trainer_argument_names()
    for key in trainer_args:
        if key in MANAGED_TRAINER_ARGS:
            raise UserError(f"trainer_args: '{key}' is set by mmpo itself")
        if key == "train_sampling_strategy" and trainer_args[key] == "batch_rebalance":
            # transformers reads its lengths from an `input_ids` field; a pair has three id lists.
            raise UserError("trainer_args: train_sampling_strategy batch_rebalance is not supported for pairs; "
                            "use group_by_length: true")
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"trainer_args: '{key}' is not a transformers.TrainingArguments key{hint}")


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``["--lr", "1e-5", "--bf16", "--gamma=none"]`` -> ``{"lr": 1e-05, "bf16": True, "gamma": None}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise UserError(f"expected --key value, got {tok!r}")
        key = tok[2:].replace("-", "_")
        if "=" in key:
            key, raw = key.split("=", 1)
            out[key] = _parse_value(raw)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[key] = _parse_value(tokens[i + 1])
            i += 2
        else:
            out[key] = True
            i += 1
    return out


def save_config(config: Any, path: str | Path) -> None:
    """Write ``config`` as YAML (atomically), loadable again with :func:`load_config`."""
    from mmpo.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


# --- discoverable configuration: --help listings and docs/config.md, both generated from the dataclasses ------


def _default_text(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def config_keys(cls: type) -> list[tuple[str, str, str]]:
    """``(key, default, one line of meaning)`` for every field of a config dataclass, in declaration order."""
    return [(f.name, _default_text(f), f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def help_listing(cls: type) -> str:
    """The key listing ``mmpo rm --help`` / ``mmpo dpo --help`` / ``mmpo online --help`` print (every key, its
    default, its meaning)."""
    rows = config_keys(cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (in the recipe, or --key value on the command line; default in brackets):"]
    for key, default, meaning in rows:
        lines.append(f"  {key:<{width}}  {meaning} [{default}]")
    lines.append("  ...and any transformers.TrainingArguments key (optim, adam_beta2, push_to_hub, hub_model_id, ddp_timeout, ...)")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_markdown() -> str:
    """docs/config.md: every key of `mmpo rm` and `mmpo dpo` with both defaults and its meaning."""
    rm = {k: (d, h) for k, d, h in config_keys(RMConfig)}
    dpo = {k: (d, h) for k, d, h in config_keys(DPOConfig)}
    order = list(rm) + [k for k in dpo if k not in rm]
    lines = [
        "# Configuration keys",
        "",
        "<!-- Generated from the dataclasses in src/mmpo/config.py; do not edit by hand. Regenerate with:",
        "     python -m mmpo.config --markdown > docs/config.md -->",
        "",
        "A recipe (YAML) sets these keys; any of them can be overridden as `--key value` after the recipe, e.g.",
        "`mmpo rm embedded/rm --gamma 2.2 --max_steps 100`. A recipe is a file path or the name of a packaged recipe",
        "(`embedded/rm`, `embedded/dpo`, `paper/rm-gemma-2b-ultrafeedback`, ...). `mmpo rm --help` and",
        "`mmpo dpo --help` print the same listing.",
        "",
        "Any other [`transformers.TrainingArguments`](https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments)",
        "key passes through unchanged, at the top level of a recipe or on the command line (`--optim adamw_torch_fused`,",
        "`--adam_beta2 0.95`, `--push_to_hub --hub_model_id me/rm`, `--ddp_timeout 7200`, ...); it is recorded under",
        "`trainer_args` in the run's `config.yaml`. A misspelt key is an error naming the closest known key.",
        f"mmpo sets {', '.join(sorted(MANAGED_TRAINER_ARGS))} itself.",
        "",
        "| key | `mmpo rm` default | `mmpo dpo` default | meaning |",
        "|---|---|---|---|",
    ]
    for key in order:
        rm_default = f"`{rm[key][0]}`" if key in rm else "-"
        dpo_default = f"`{dpo[key][0]}`" if key in dpo else "-"
        meaning = (dpo.get(key) or rm[key])[1] if key not in rm or rm[key][1] == dpo.get(key, rm[key])[1] else (
            f"rm: {rm[key][1]}; dpo: {dpo[key][1]}")
        lines.append(f"| `{key}` | {_cell(rm_default)} | {_cell(dpo_default)} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mmpo.config", description="print the configuration reference")
    parser.add_argument("--markdown", action="store_true", help="docs/config.md (the default)")
    parser.parse_args()
    sys.stdout.write(config_markdown())
