"""The DPO reference policy: which one a run uses, and reference log-probabilities computed once and cached.

Modes (``reference:`` in a `mmpo dpo` recipe):

* ``model``        a frozen second copy of the starting model (or of ``ref_model``), scored live every step.
* ``adapter``      with LoRA, the policy itself with its adapter switched off (peft's ``disable_adapter``):
                   the frozen base weights *are* the reference, so no second copy is held in memory.
* ``precomputed``  ``log pi_ref(y|x)`` for every chosen and rejected response, computed once before training
                   and stored in the cache directory; training then needs no reference forward pass at all.
* ``none``         reference-free losses (SimPO and its soft-target variant) only.
* ``auto``         ``none`` for reference-free losses, else ``adapter`` with LoRA and no other ``ref_model``,
                   else ``precomputed``.

The precomputed cache lives in ``cache_dir()/reference_logps/<key>``. The key hashes (1) the reference model's
identity (resolved path, Hub revision, quantisation, config.json contents, and name/size/mtime of every
weight file), (2) the token ids of
every pair in order, and (3) the settings that change the numbers (tokenization limits, dtype). An entry is
written atomically with its key and pair count in ``meta.json``; an entry whose meta, key, count or values do
not check out is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmpo.errors import UserError
from mmpo.losses import losses_for, needs_reference
from mmpo.models.shared_prefix import prefix_sharing_unsupported
from mmpo.models.batching import shared_prompt_batching, two_row_batching
from mmpo.paths import atomic_directory, cache_dir

REFERENCE_MODES = ("auto", "model", "adapter", "precomputed", "none")
CACHE_VERSION = 1
_META = "meta.json"
_VALUES = "reference_logps.pt"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def resolve_reference_mode(loss: str, reference: str, lora_r: int, ref_model: str | None = None) -> str:
    """The reference mode a run actually uses (``auto`` resolved), or a UserError for an impossible combination.

    ``adapter`` scores the starting model (the LoRA base), so it cannot serve another ``ref_model``: ``auto``
    then resolves to ``precomputed``, and an explicit ``adapter`` is refused.
    """
    if reference not in REFERENCE_MODES:
        raise UserError(f"reference must be one of {', '.join(REFERENCE_MODES)} (got {reference!r})")
    if reference == "auto":
        if not needs_reference(loss):
            return "none"
        return "adapter" if lora_r > 0 and ref_model is None else "precomputed"
    if reference == "none" and needs_reference(loss):
        free = [name for name in losses_for("policy") if not needs_reference(name)]
        raise UserError(f"reference: none only works with the reference-free losses {', '.join(free)}, not {loss!r}")
    if reference == "adapter" and lora_r <= 0:
        raise UserError("reference: adapter needs LoRA (lora_r > 0); use reference: precomputed or model for full fine-tuning")
    if reference == "adapter" and ref_model is not None:
        raise UserError("ref_model cannot be used with reference: adapter (the reference is the LoRA base itself); "
                        "use reference: precomputed or model")
    return reference


# --- cache keys ----------------------------------------------------------------------------------------

def model_identity(path: str, revision: str | None = None, quantization: str | None = None) -> dict[str, Any]:
    """What identifies a model's weights as loaded, without reading them: path, Hub ``revision``, ``quantization``
    (:func:`mmpo.models.loading.quantization_setting`), config.json digest, weight files' size/mtime.

    A hub id that is not on disk is identified by its name and revision only (its files are not ours to stat).
    """
    p = Path(path)
    loaded_as = {"revision": revision, "quantization": quantization}
    if not p.is_dir():
        return {"path": str(path), **loaded_as}
    identity: dict[str, Any] = {"path": str(p.resolve()), **loaded_as}
    config = p / "config.json"
    if config.exists():
        identity["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    weights = []
    for f in sorted(p.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            st = f.stat()
            weights.append([f.name, st.st_size, st.st_mtime_ns])
    identity["weights"] = weights
    return identity


def token_ids_digest(features: Sequence[dict[str, Any]]) -> str:
    """sha256 over every pair's prompt, chosen and rejected token ids, in order."""
    h = hashlib.sha256()
    for f in features:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            h.update(key.encode())
            h.update(json.dumps(list(f[key])).encode())
    return h.hexdigest()


def reference_cache_key(identity: dict[str, Any], features: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The cache key: a digest of model identity, token ids and the settings that change the numbers."""
    blob = json.dumps(
        {"version": CACHE_VERSION, "model": identity, "tokens": token_ids_digest(features), "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# --- computing ------------------------------------------------------------------------------------------

def _length_sorted_batches(features: Sequence[dict[str, Any]], batch_size: int) -> Iterator[list[int]]:
    # Longest pairs first and similar lengths together: less padding, and an out-of-memory error shows at once.
    def length(i: int) -> int:
        f = features[i]
        return len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"]))

    order = sorted(range(len(features)), key=length, reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def compute_reference_logps(
    model: torch.nn.Module,
    features: Sequence[dict[str, Any]],
    pad_token_id: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    full_logits: bool = False,
    desc: str = "reference log-probs",
    prefix_sharing: bool = False,
    packing: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log pi_ref(chosen|x), log pi_ref(rejected|x))`` per pair, float32 ``[n]`` each, in the order of ``features``.

    The model is put in eval mode (no dropout) and restored afterwards; ``autocast_dtype`` reproduces the
    mixed precision training will run in, so cached and live reference numbers agree. ``prefix_sharing``
    scores each pair in one row with its prompt encoded once where the model can take that mask
    (:mod:`mmpo.models.shared_prefix`; the numbers are the same), several pairs per row with ``packing``.
    """
    n = len(features)
    chosen = torch.zeros(n, dtype=torch.float32)
    rejected = torch.zeros(n, dtype=torch.float32)
    if n == 0:
        return chosen, rejected
    device = torch.device(device) if device is not None else next(model.parameters()).device
    longest = max(len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) for f in features)
    shared = prefix_sharing and prefix_sharing_unsupported(model, longest) is None
    batching = shared_prompt_batching(model, pad_token_id, packing) if shared else two_row_batching(pad_token_id)
    was_training = model.training
    model.eval()
    try:
        batches = list(_length_sorted_batches(features, batch_size))
        for idx in tqdm(batches, desc=desc, unit="batch", disable=None):
            batch = batching([features[i] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logps, _ = batching.logps(model, batch, full_logits=full_logits)
            logps = logps.float().cpu()
            b = len(idx)
            chosen[idx] = logps[:b]
            rejected[idx] = logps[b:]
    finally:
        model.train(was_training)
    return chosen, rejected


@dataclass
class CachedReference:
    chosen: torch.Tensor
    rejected: torch.Tensor
    path: Path
    from_cache: bool


def _read_entry(path: Path, key: str, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The stored values when meta, key, count and values all check out; None for anything else."""
    try:
        meta = json.loads((path / _META).read_text())
        if meta.get("key") != key or meta.get("count") != count:
            return None
        values = torch.load(path / _VALUES, weights_only=True)
        chosen, rejected = values["chosen"], values["rejected"]
    except Exception:  # noqa: BLE001 - whatever a damaged file raises, the answer is "rebuild"
        return None
    ok = (
        isinstance(chosen, torch.Tensor)
        and isinstance(rejected, torch.Tensor)
        and chosen.shape == (count,)
        and rejected.shape == (count,)
        and bool(torch.isfinite(chosen).all())
        and bool(torch.isfinite(rejected).all())
    )
    return (chosen.float(), rejected.float()) if ok else None


def cached_reference_logps(
    get_model: Callable[[], torch.nn.Module],
    features: Sequence[dict[str, Any]],
    identity: dict[str, Any],
    settings: dict[str, Any],
    pad_token_id: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    full_logits: bool = False,
    desc: str = "reference log-probs",
    root: Path | None = None,
    prefix_sharing: bool = False,
    packing: bool | str = False,
) -> CachedReference:
    """Reference log-probs for ``features`` from the cache, or computed with ``get_model()`` and stored.

    ``get_model`` is only called on a cache miss, so a rerun never loads or runs the reference model. Under
    several processes each rank computes its shard of the pairs, the shards are gathered on every rank, and
    only the main process writes the cache entry.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    from mmpo.distributed import process_state

    key = reference_cache_key(identity, features, settings)
    path = (root or cache_dir() / "reference_logps") / key
    state = process_state()
    found = _read_entry(path, key, len(features)) if path.exists() else None
    if state.num_processes > 1:
        # Every rank takes the main process's branch, or some would wait forever in the gather below.
        hit = [found is not None]
        broadcast_object_list(hit)
        if hit[0] and found is None:
            found = _read_entry(path, key, len(features))
            if found is None:
                raise RuntimeError(f"reference cache {path} readable on the main process but not on rank {state.process_index}")
        if not hit[0]:
            found = None
    if found is not None:
        return CachedReference(found[0], found[1], path, from_cache=True)
    # Each rank scores its shard (rows rank, rank + world, ...); the shards are gathered on every rank.
    mine = list(range(state.process_index, len(features), state.num_processes))
    if state.num_processes > 1:
        print(f"{desc}: process {state.process_index} of {state.num_processes} scores {len(mine)} of {len(features)} pairs", flush=True)
    part_chosen, part_rejected = compute_reference_logps(
        get_model(), [features[i] for i in mine], pad_token_id, batch_size, device, autocast_dtype, full_logits, desc,
        prefix_sharing, packing,
    )
    chosen = torch.zeros(len(features), dtype=torch.float32)
    rejected = torch.zeros(len(features), dtype=torch.float32)
    shards = [(mine, part_chosen.tolist(), part_rejected.tolist())]
    for idx, c, r in (gather_object(shards) if state.num_processes > 1 else shards):
        chosen[idx] = torch.tensor(c, dtype=torch.float32)
        rejected[idx] = torch.tensor(r, dtype=torch.float32)
    if not (torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
        raise FloatingPointError("non-finite reference log-probabilities; not caching them")
    if state.is_main_process:
        with atomic_directory(path) as tmp:
            torch.save({"chosen": chosen, "rejected": rejected}, tmp / _VALUES)
            # meta.json last: its presence with the right key and count marks a complete entry.
            (tmp / _META).write_text(
                json.dumps({"key": key, "count": len(features), "model": identity, "settings": settings, "pid": os.getpid()})
            )
    state.wait_for_everyone()
    return CachedReference(chosen, rejected, path, from_cache=False)


def attach_reference_logps(features: list[dict[str, Any]], chosen: torch.Tensor, rejected: torch.Tensor) -> list[dict[str, Any]]:
    """Copies of ``features`` carrying ``reference_chosen_logps`` / ``reference_rejected_logps`` (the collator passes them on)."""
    if len(features) != len(chosen) or len(features) != len(rejected):
        raise ValueError(f"{len(features)} pairs but {len(chosen)}/{len(rejected)} reference values")
    return [
        {**f, "reference_chosen_logps": float(c), "reference_rejected_logps": float(r)}
        for f, c, r in zip(features, chosen.tolist(), rejected.tolist())
    ]


def responses_as_pairs(features: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[tuple[int, int]]]]:
    """Groups (``layout: groups``) as the pairs the reference cache scores: each group's responses two by two
    (an odd one out paired with the group's first), and where each response's value lands
    (``(pair index, 0 chosen / 1 rejected)`` per response), for :func:`attach_group_reference_logps`."""
    pairs: list[dict[str, Any]] = []
    where: list[list[tuple[int, int]]] = []
    for f in features:
        responses = f["response_ids"]
        slots = []
        for a in range(0, len(responses), 2):
            b = a + 1 if a + 1 < len(responses) else 0
            # p is a placeholder the collator wants; only the token ids enter the log-probs and the cache key.
            pairs.append({"prompt_ids": f["prompt_ids"], "chosen_ids": responses[a], "rejected_ids": responses[b], "p": 1.0})
            slots.append((len(pairs) - 1, 0))
            if b:
                slots.append((len(pairs) - 1, 1))
        where.append(slots)
    return pairs, where


def attach_group_reference_logps(features: list[dict[str, Any]], where: list[list[tuple[int, int]]], chosen: torch.Tensor,
                                 rejected: torch.Tensor) -> list[dict[str, Any]]:
    """Copies of the groups ``features`` carrying ``reference_logps`` (one per response), read from the values
    the reference cache gave the pairs of :func:`responses_as_pairs`."""
    values = (chosen.tolist(), rejected.tolist())
    return [{**f, "reference_logps": [values[side][i] for i, side in slots]} for f, slots in zip(features, where)]
