"""Scoring a pair file with a trained model: the library behind ``mmpo eval pairs``.

:func:`evaluate_pairs` scores every pair of a data file with a reward model or a policy (implicit reward, see
:mod:`mmpo.evaluation.scoring`) and returns the held-out metrics of :func:`mmpo.evaluation.metrics.pair_metrics`
(n, accuracy, ece, soft_ece, nll, brier) with ``h = reward(chosen) - reward(rejected)`` against the data's soft
targets ``p = sigmoid(gamma * margin)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.io import atomic_write_text, write_jsonl_atomic

# ``gamma`` of :func:`evaluate_pairs` when not given: the one in the model's config.yaml, else 1.0.
TRAINED_GAMMA = "trained"


def evaluate_pairs(model: str, data: str, out: str | os.PathLike | None = None, scores_out: str | os.PathLike | None = None,
                   gamma: Any = TRAINED_GAMMA, ref_model: str | None = None, beta: float | None = None,
                   batch_size: int = 8, max_length: int | None = None, max_prompt_length: int | None = None,
                   max_pairs: int | None = None, say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Score the pairs of ``data`` (a file or a registered data set, its test split) with ``model`` and return the
    metrics, with ``model``, ``kind``, ``data``, ``gamma`` and ``max_length`` (and ``beta``, ``ref_model`` for a
    policy).

    ``gamma``: :func:`mmpo.gamma.parse_gamma` spellings, or :data:`TRAINED_GAMMA` for the model's own. A policy
    needs ``ref_model``: the model it was trained from, or ``"none"`` for the reference-free reward
    ``beta * log pi(y|x)``. ``out`` gets the result as JSON; ``scores_out`` one JSON line per pair:
    ``{"row", "chosen_reward", "rejected_reward", "p"}``. ``say`` gets the data report.
    """
    import numpy as np

    from mmpo.data.pipeline import PairOptions, load_pairs
    from mmpo.data.sources import held_out_split, normalize_spec
    from mmpo.evaluation.metrics import pair_metrics
    from mmpo.evaluation.scoring import DEFAULT_BETA, load_scoring_model, model_kind, score_with_models, trained_over_length, training_config
    from mmpo.gamma import parse_gamma

    # A missing data file is named before the model is looked up (which may reach for the Hub).
    spec = normalize_spec(data)
    if "path" in spec and not Path(spec["path"]).expanduser().exists():
        raise UserError(f"data path not found: {spec['path']}")
    trained = training_config(model)
    gamma = (trained["gamma"] if "gamma" in trained else 1.0) if gamma == TRAINED_GAMMA else parse_gamma(gamma, "--gamma")
    ref_name = None if ref_model is None or str(ref_model).strip().lower() in ("none", "null") else ref_model
    # The model's kind comes from its config.json; the choice of reference is checked before weights load.
    kind = model_kind(model)
    if kind == "policy" and ref_model is None:
        # With and without a reference the scores differ widely (DPO's implicit reward is a log-ratio):
        # the choice is the user's, never a silent default.
        trained_from = trained.get("ref_model") or trained.get("model")
        hint = f" ({trained_from!r} per its config.yaml)" if trained_from else ""
        raise UserError(
            f"{model} is a policy: pass --ref-model PATH, the model it was trained from{hint}, or "
            "--ref-model none for the reference-free reward beta * log pi(y|x)"
        )
    if kind == "reward" and (ref_model is not None or beta is not None):
        raise UserError(f"{model} is a reward model: --ref-model and --beta only apply to a policy")
    # A data set named without a split is scored on its test split (a local file is read whole).
    pairs, report = load_pairs(data, PairOptions(gamma=gamma, max_pairs=max_pairs, split=held_out_split(data)))
    say(report.render())
    if not pairs:
        raise UserError(f"{data}: no pairs to score")
    net, tokenizer, kind = load_scoring_model(model, kind=kind)
    ref = None
    given_beta, beta = beta, None
    if kind == "policy":
        beta = given_beta if given_beta is not None else trained.get("beta", DEFAULT_BETA)
        if ref_name is not None:
            ref, _, _ = load_scoring_model(ref_name, kind="policy", device=next(net.parameters()).device)
    if max_prompt_length is None and max_length is None and trained.get("max_prompt_length"):
        max_prompt_length = int(trained["max_prompt_length"])
    max_length = max_length or int(trained.get("max_length") or 1024)

    scores = score_with_models(
        net, tokenizer, pairs, kind, ref_model=ref, beta=beta,
        batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length,
        over_length=trained_over_length(trained),  # a pair its training kept whole is scored whole
    )
    h = np.array([c - r for c, r in scores], dtype=np.float64)
    p = np.array([pair.p for pair in pairs], dtype=np.float64)
    metrics = pair_metrics(h, p)
    result = {
        **metrics,
        "model": model,
        "kind": kind,
        "data": str(data),
        "gamma": gamma,
        "max_length": max_length,
        **({"beta": beta, "ref_model": ref_name} if kind == "policy" else {}),
    }
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2))
    if scores_out is not None:
        write_jsonl_atomic(scores_out, [{"row": pair.row, "chosen_reward": chosen, "rejected_reward": rejected, "p": pair.p}
                                        for pair, (chosen, rejected) in zip(pairs, scores)])
    return result
