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
    # auto = resume the run in output_dir when its settings match (a finished one is reused; see
    # mmpo.training.run_dir); false = start over there; or a checkpoint path
    resume: Any = "auto"
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start over in output_dir: delete the earlier run's checkpoints, metrics and results there first"})
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
        return value
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
    cli_values: dict[str, Any] = {}
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides:
        cli_values = parse_overrides(overrides)
        values.update(cli_values)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f" in {path}" if path is not None else ""
            raise UserError(f"unknown config key '{key}'{where}{hint}")
    values = {k: _expand_cache(v) for k, v in values.items()}
    types_of = typing.get_type_hints(cls)
    from_file = set(values) - set(overrides if isinstance(overrides, dict) else cli_values)
    kwargs = {}
    for k, v in values.items():
        where = f"in {path}" if k in from_file else ("on the command line" if k in cli_values else "in the overrides")
        kwargs[k] = _coerce(k, v, types_of[k], where)
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
    """Write ``config`` as YAML (atomically), loadable again with :func:`load_config`."""
    from mmpo.paths import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
