"""From a run config to tokenized train and held-out pair lists, with the data report printed once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mmpo.data.records import PreferencePair
from mmpo.data.report import DataReport
from mmpo.data.sources import PairOptions, load_pairs
from mmpo.data.tokenize import TruncationStats, tokenize_pair


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reports: dict[str, DataReport]

    def render(self) -> str:
        return "\n".join(r.render() for r in self.reports.values())


def pair_options(config: Any, split: str | None = None, held_out: bool = False) -> PairOptions:
    return PairOptions(
        gamma=config.gamma,
        columns=dict(config.data_columns or {}),
        ties=config.ties,
        order_conflict=config.order_conflict,
        pairs_per_prompt=config.pairs_per_prompt,
        margin_bins=config.margin_bins,
        max_pairs=config.max_eval_pairs if held_out else config.max_pairs,
        seed=config.seed,
        split=split,
    )


def _prompt_bucket(pair: PreferencePair, seed: int) -> float:
    """A stable number in [0, 1) per prompt, so all pairs of a prompt land on the same side of the split."""
    key = json.dumps(pair.prompt, sort_keys=True) + f"|{seed}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def split_by_prompt(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out about ``fraction`` of the prompts (with all their pairs)."""
    train, held = [], []
    for pair in pairs:
        (held if _prompt_bucket(pair, seed) < fraction else train).append(pair)
    return train, held


def tokenize_pairs(pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int, report: DataReport) -> list[dict[str, Any]]:
    """Tokenize once; pairs that cannot fit are dropped and counted in ``report``."""
    stats = TruncationStats()
    out = []
    for pair in pairs:
        tok = tokenize_pair(tokenizer, pair, max_length, max_prompt_length, stats)
        if tok is not None:
            out.append(tok.__dict__)
    report.truncation = stats.as_dict()
    if stats.dropped_no_room:
        report.dropped["no room for the response at max_length"] += stats.dropped_no_room
    report.keep([t["p"] for t in out], [t["margin"] for t in out])
    return out


def prepare_data(config: Any, tokenizer: Any) -> PreparedData:
    """Load, split and tokenize ``config.data`` / ``config.eval_data`` (or an ``eval_split`` of data).

    The graded-tasks set a recipe names under ``$MMPO_CACHE/data/graded-tasks-<seed>/`` is written on first use.
    """
    from mmpo.data.synthetic import generate_if_default_and_missing

    for spec in (config.data, config.eval_data):
        generate_if_default_and_missing(spec)
    pairs, train_report = load_pairs(config.data, pair_options(config))
    reports = {"train": train_report}
    if config.eval_data is not None:
        held, eval_report = load_pairs(config.eval_data, pair_options(config, held_out=True))
        train = pairs
    else:
        train, held = split_by_prompt(pairs, config.eval_split, config.seed) if config.eval_split > 0 else (pairs, [])
        eval_report = DataReport(source=f"{train_report.source} (held-out {config.eval_split:.0%} of prompts)")
        eval_report.read = len(held)
        train_report.dropped["held out for evaluation"] += len(held)
    reports["eval"] = eval_report
    budget = config.prompt_budget
    train_tok = tokenize_pairs(train, tokenizer, config.max_length, budget, train_report)
    eval_tok = tokenize_pairs(held, tokenizer, config.max_length, budget, eval_report)
    return PreparedData(train_tok, eval_tok, reports)
