"""Run configuration: a YAML recipe, overridden key by key from the command line.

``mmpo rm recipe.yaml --learning_rate 1e-5 --gamma none`` loads the recipe into a dataclass and applies each
``--key value`` (values parsed as YAML, so numbers, booleans, lists and ``null``/``none`` work). Unknown keys
are an error that suggests the closest known key.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmpo.errors import UserError

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Keys shared by `mmpo rm` and `mmpo dpo`."""

    # model
    model: str = "embedded"
    tokenizer: str | None = None
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: Any = "all-linear"
    lora_layers: int | None = None  # adapt only the last N blocks (None = all); backward stops below them
    gradient_checkpointing: bool = False
    bf16: Any = "auto"  # auto = bf16 where the hardware has it, float32 on CPU
    # data (a path, a hub name / source name, or a mapping; see mmpo.data.sources.load_pairs)
    data: Any = None
    eval_data: Any = None
    eval_split: float = 0.05  # held-out share of `data` when eval_data is not given
    data_columns: dict[str, str] = field(default_factory=dict)
    max_pairs: int | None = None  # a seeded sample of this many training pairs (None = all)
    max_eval_pairs: int | None = None  # the same for eval_data (None = all)
    ties: str = "keep"  # keep (p = 0.5) | drop
    order_conflict: str = "swap"  # score_chosen < score_rejected: swap | drop | error
    pairs_per_prompt: int | None = None
    margin_bins: int = 0  # >0: sample pairs uniformly across this many score-difference quantile bins
    over_length: str = field(default="drop", metadata={"help": "a pair longer than max_length: drop it (counted) or truncate it; see docs/data.md"})
    max_length: int = 512
    max_prompt_length: int | None = None  # default: max_length // 2
    # loss
    loss: str = "mmpo"
    gamma: float | None = 1.0  # None = hard labels (p = 1)
    eval_gamma: Any = field(default="same", metadata={"help": "held-out truth p = sigmoid(eval_gamma * margin): 'same' = gamma, a number > 0, or none = hard labels; fix it to score runs with different losses against one truth"})
    label_smoothing: float = 0.1
    # optimisation
    learning_rate: float = 1e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    # bookkeeping
    output_dir: str = "runs/mmpo"
    logging_steps: int = 10
    eval_steps: int | None = None  # None = evaluate at the end of each epoch
    save_steps: int | None = None  # None = save at the end of each epoch
    save_total_limit: int | None = 2
    resume: Any = "auto"  # auto = from the last complete checkpoint in output_dir; false; or a path
    dataloader_num_workers: int = 0
    torch_compile: bool = False
    debug: bool = False

    def validate(self) -> None:
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
        if self.data is None:
            raise UserError("no training data: set `data` in the recipe or pass --data PATH")
        if self.eval_gamma != "same" and self.eval_gamma is not None and (
            isinstance(self.eval_gamma, bool) or not isinstance(self.eval_gamma, (int, float)) or not self.eval_gamma > 0
        ):
            raise UserError(f"eval_gamma must be 'same', a number > 0 or none (got {self.eval_gamma!r})")
        if self.over_length not in ("drop", "truncate"):
            raise UserError(f"over_length must be drop or truncate (got {self.over_length!r})")

    @property
    def prompt_budget(self) -> int:
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2


@dataclass
class RMConfig(TrainConfig):
    """`mmpo rm`: a reward model (backbone + scalar head)."""

    loss: str = "mmpo"  # mmpo | bt | margin | label_smoothing
    output_dir: str = "runs/rm"

    def validate(self) -> None:
        super().validate()
        if self.loss not in ("mmpo", "bt", "margin", "label_smoothing"):
            raise UserError(f"unknown reward-model loss {self.loss!r}: choose mmpo, bt, margin or label_smoothing")


@dataclass
class DPOConfig(TrainConfig):
    """`mmpo dpo`: a policy trained against a reference with DPO-family losses."""

    loss: str = "mmpo"  # mmpo | dpo | cdpo | ipo | simpo | simpo_mmpo
    over_length: str = field(default="truncate", metadata={"help": "a pair longer than max_length: truncate it (a policy compares the answers' openings) or drop it (counted)"})
    beta: float = 0.1
    simpo_margin: float = 0.0  # SimPO's target reward margin (its "gamma")
    ipo_logps: str = field(default="summed", metadata={"help": "IPO's log-probs: summed over the response (TRL 0.7.7, the official MMPO code) or averaged per token (TRL 1.x); betas do not transfer"})
    learning_rate: float = 5e-6
    reference: str = "auto"  # auto | model | adapter | precomputed | none
    ref_model: str | None = None  # default: the starting model
    merge_lora: bool = True
    output_dir: str = "runs/dpo"

    def validate(self) -> None:
        super().validate()
        if self.loss not in ("mmpo", "dpo", "cdpo", "ipo", "simpo", "simpo_mmpo"):
            raise UserError(f"unknown policy loss {self.loss!r}: choose mmpo, dpo, cdpo, ipo, simpo or simpo_mmpo")
        if not self.beta > 0:
            raise UserError(f"beta must be > 0 (got {self.beta})")
        if self.ipo_logps not in ("summed", "averaged"):
            raise UserError(f"ipo_logps must be summed or averaged (got {self.ipo_logps!r})")
        if self.reference is None:  # `reference: none` arrives as None (none/null are YAML's null)
            self.reference = "none"
        if self.reference not in ("auto", "model", "adapter", "precomputed", "none"):
            raise UserError(f"reference must be auto, model, adapter, precomputed or none (got {self.reference!r})")


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


def _coerce(name: str, value: Any, default: Any) -> Any:
    # YAML reads "1e-5" as a string; numbers given for float keys must still be floats.
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return float(value) if isinstance(default, float) or "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise UserError(f"config key '{name}' expects a number (got {value!r})") from None
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML file and ``--key value`` overrides (a list of CLI tokens or a dict)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of config keys")
        values.update(loaded)
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides:
        values.update(parse_overrides(overrides))
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f" in {path}" if path is not None else ""
            raise UserError(f"unknown config key '{key}'{where}{hint}")
    defaults = cls()
    kwargs = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    config = cls(**kwargs)
    if hasattr(config, "validate"):
        config.validate()
    return config


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
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
