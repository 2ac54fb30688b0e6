"""The frozen-trunk cache: hidden states after the frozen lower blocks, computed once per token sequence.

With adapters only on the top k of L blocks (``lora_layers: k``) no parameter below block L-k is trained, so
the output of block L-k-1, ``h(x)`` for a token sequence ``x``, is a fixed function of ``x``: the same every
epoch, every seed and every loss, in training and in evaluation. The cache keeps ``h(x)`` for the real
(non-padding) tokens of each sequence, ``[n_tokens, hidden]``, and a forward pass then runs the model's own
``forward`` with blocks 0..L-k-1 skipped: each returns its input unchanged, the last returns the cached states
placed at the row's non-padding positions. Everything else (attention masks, rotary positions, per-layer
attention types such as sliding windows, which are looked up by the unchanged layer index; the final norm and
head) is computed by the model's forward exactly as on the plain path, so only the trunk's work is saved.

Why it is exact. In a causal decoder a real token never attends to padding, so a row's real-token states do
not depend on the padding around it, and with rotary position embeddings (every supported architecture) only
relative positions enter attention, so a left-padded row read at shifted positions gives the same states. The
cached and plain paths therefore agree to float rounding (batches of another width sum in another order):
float32 losses and adapter gradients agree to ~1e-6 relative (tests/test_trunk_cache.py). A sequence not in
the cache is computed from the batch it arrives in by the plain path's own forward, stopped after the trunk.
Under autocast the trunk is computed under the same autocast as training, and its output dtype is kept.

Memory: ``hidden x tokens x bytes`` per sequence (SmolLM2-135M, float32: 576 x 4 = 2.3 kB a token), held in
memory for the run and on disk in ``cache_dir()/trunk_states/<key>``; the key hashes the model's identity
(:func:`mmpo.models.reference.model_identity`: path, Hub revision, quantisation, files), every sequence's
token ids, the trunk depth, dtype, autocast, attention implementation and library versions. An entry is
written atomically and rebuilt when its meta, key, shapes or values do not check out.

Turned off (``trunk_cache: auto`` says so in one line; ``true`` makes it an error): no frozen block at the
bottom (full fine-tuning, adapters on every block), dropout in the trunk, an architecture not listed in
:data:`SUPPORTED_MODEL_TYPES`, several processes, ``torch_compile``, and packed / prefix-shared rows (a row
then holds several sequences under a custom mask; the simpler correct choice is the plain path).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from mmpo.errors import UserError
from mmpo.models.unwrap import base_model
from mmpo.paths import atomic_directory, cache_dir

# Decoders whose forward is "embed, then hidden = layer(hidden, mask, positions) per block, then norm" with
# rotary positions; each is checked against the plain path in tests/test_trunk_cache.py.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
CACHE_VERSION = 1
_META = "meta.json"
_VALUES = "trunk_states.pt"
# Batch keys that mean rows are laid out differently from one sequence per row (packing, prefix sharing).
_LAYOUT_KEYS = ("position_ids", "seq_idx", "segment_ids", "cu_seq_lens_q", "packed_seq_lens")

Forward = Callable[[torch.nn.Module, dict[str, torch.Tensor]], Any]


class _TrunkDone(Exception):
    """Raised by the capture hook once the trunk's output is caught: nothing above it needs to run."""


def _notice(message: str) -> None:
    print(f"trunk cache: {message}")


def decoder_layers(model: Any) -> torch.nn.ModuleList | None:
    """The decoder's block list (``model.model.layers`` for Llama-family heads), or None."""
    base = base_model(model)
    decoder = getattr(base, "base_model", base)
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def frozen_depth(model: Any) -> int:
    """How many blocks at the bottom of the decoder have no trainable parameter (0 if the embeddings train)."""
    base = base_model(model)
    layers = decoder_layers(model)
    if layers is None:
        return 0
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if embeddings is not None and any(p.requires_grad for p in embeddings.parameters()):
        return 0
    depth = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        depth += 1
    return depth


def unsupported_reason(model: Any, depth: int) -> str | None:
    """Why the trunk of ``model`` (its lowest ``depth`` blocks) cannot be cached exactly; None when it can."""
    base = base_model(model)
    model_type = getattr(base.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"architecture {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    n_blocks = len(decoder_layers(model) or [])
    if depth == 0:
        return "no frozen block at the bottom (full fine-tuning or adapters on every block)"
    if depth >= n_blocks:
        return "every block is frozen"
    if float(getattr(base.config, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout in the frozen blocks makes their output random"
    for layer in decoder_layers(model)[:depth]:
        for m in layer.modules():
            if isinstance(m, torch.nn.Dropout) and m.p > 0:
                return "dropout in the frozen blocks makes their output random"
    return None


def resolve_trunk_cache(setting: Any, model: Any, *, processes: int = 1, torch_compile: bool = False, packed: bool = False) -> int:
    """The trunk depth to cache for ``trunk_cache: setting`` (auto | true | false), or 0 for the plain path.

    ``auto`` turns the cache on where it is exact and says in one line why not otherwise; ``true`` makes
    "not possible" a UserError; ``false`` is the plain path.
    """
    if setting is None or setting is False or str(setting).lower() == "false":
        return 0
    if not (setting is True or str(setting).lower() in ("auto", "true")):
        raise UserError(f"trunk_cache must be auto, true or false (got {setting!r})")
    depth = frozen_depth(model)
    reason = unsupported_reason(model, depth)
    if reason is None and processes > 1:
        reason = "several processes (each would hold its own copy)"
    if reason is None and torch_compile:
        reason = "torch_compile is on"
    if reason is None and packed:
        reason = "rows are packed / prefix-shared (several sequences per row)"
    if reason is not None:
        if setting is True or str(setting).lower() == "true":
            raise UserError(f"trunk_cache: true, but {reason}; use trunk_cache: auto or false")
        if depth > 0:  # only worth a line where a frozen trunk exists at all
            _notice(f"off: {reason}")
        return 0
    return depth


def sequence_key(ids: torch.Tensor) -> bytes:
    """The in-memory key of a sequence: its token ids (int64) as bytes."""
    return ids.to(device="cpu", dtype=torch.int64).numpy().tobytes()


def trunk_cache_key(identity: dict[str, Any], token_digest: str, settings: dict[str, Any]) -> str:
    """A digest of the model identity, the token ids of every sequence and the settings that change the states."""
    import transformers

    blob = json.dumps(
        {
            "version": CACHE_VERSION,
            "model": identity,
            "tokens": token_digest,
            "settings": settings,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class TrunkCache:
    """Hidden states of the frozen trunk (the lowest ``depth`` blocks), per token sequence, in memory.

    :meth:`run` is the one entry point for training and evaluation: ``run(model, forward, batch)`` returns what
    ``forward(model, batch)`` returns, with the trunk's states taken from the cache (computed by the same
    ``forward`` on a miss). :meth:`prefill` fills the cache for a list of pairs, from disk or computed.
    """

    def __init__(self, depth: int, identity: dict[str, Any] | None = None, settings: dict[str, Any] | None = None):
        if depth < 1:
            raise ValueError("a trunk cache needs at least one frozen block")
        self.depth = depth
        self.identity = identity or {}
        self.settings = {**(settings or {}), "depth": depth}
        self.states: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self._warned_layout = False

    # --- the forward pass ----------------------------------------------------------------------------
    def run(self, model: torch.nn.Module, forward: Forward, batch: dict[str, torch.Tensor]) -> Any:
        """``forward(model, batch)`` with the frozen blocks skipped and their output read from the cache."""
        # The trainers turn prefix sharing and packing off for a run that caches its trunk; a batch that still
        # holds several sequences a row is run in full rather than read from states of whole sequences.
        if any(k in batch for k in _LAYOUT_KEYS) or batch["attention_mask"].dim() != 2:
            if not self._warned_layout:
                self._warned_layout = True
                _notice("rows hold several sequences (packed / prefix-shared): this batch takes the plain path")
            return forward(model, batch)
        layers = decoder_layers(model)
        states = self._batch_states(model, forward, batch, layers)
        with _skip_trunk(layers, self.depth, states):
            return forward(model, batch)

    def _batch_states(self, model, forward, batch, layers) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        real = mask.bool()
        real_cpu, ids_cpu = real.cpu(), ids.cpu()
        keys = [sequence_key(ids_cpu[i][real_cpu[i]]) for i in range(ids.shape[0])]
        if all(k in self.states for k in keys):
            self.hits += len(keys)
            rows = torch.cat([self.states[k] for k in keys]).to(ids.device, non_blocking=True)
            out = rows.new_zeros(ids.shape[0], ids.shape[1], rows.shape[-1])
            out[real] = rows  # row-major order of the mask = the rows' real tokens in order
            return out
        # A miss: the trunk's output for this very batch, from the plain path's own forward.
        self.misses += sum(k not in self.states for k in keys)
        hidden = capture_trunk(model, forward, batch, layers, self.depth)
        self._store(keys, hidden, real)
        return hidden

    def _store(self, keys: list[bytes], hidden: torch.Tensor, real: torch.Tensor) -> None:
        for i, k in enumerate(keys):
            if k not in self.states:
                self.states[k] = hidden[i][real[i]].detach().to("cpu").clone()

    # --- filling it ------------------------------------------------------------------------------------
    def prefill(
        self,
        model: torch.nn.Module,
        forward: Forward,
        features: Sequence[dict[str, Any]],
        collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
        batch_size: int = 8,
        autocast_dtype: torch.dtype | None = None,
        desc: str = "trunk states",
        root: Path | None = None,
    ) -> tuple[Path | None, bool]:
        """Put the trunk states of every sequence of ``features`` in memory, from disk or computed and stored.

        Returns ``(entry path, read from disk)``. ``forward`` is the plain path's call; ``autocast_dtype`` the
        mixed precision training runs in, so the cached states are what training would compute.
        """
        from mmpo.models.reference import _length_sorted_batches, token_ids_digest

        if not features:
            return None, False
        key = trunk_cache_key(self.identity, token_ids_digest(features), self.settings)
        path = (root or cache_dir() / "trunk_states") / key
        found = _read_entry(path, key) if path.exists() else None
        if found is not None:
            self.states.update(found)
            return path, True
        layers = decoder_layers(model)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        computed: dict[bytes, torch.Tensor] = {}
        try:
            for idx in tqdm(list(_length_sorted_batches(features, batch_size)), desc=desc, unit="batch", disable=None):
                batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    hidden = capture_trunk(model, forward, batch, layers, self.depth)
                real = batch["attention_mask"].bool()
                ids = batch["input_ids"]
                for i in range(ids.shape[0]):
                    computed[sequence_key(ids[i][real[i]])] = hidden[i][real[i]].detach().to("cpu").clone()
        finally:
            model.train(was_training)
        if not all(bool(torch.isfinite(v).all()) for v in computed.values()):
            raise FloatingPointError("non-finite hidden states in the frozen trunk; not caching them")
        self.states.update(computed)
        _write_entry(path, key, computed, {"model": self.identity, "settings": self.settings})
        return path, False

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.states.values())


def capture_trunk(model: torch.nn.Module, forward: Forward, batch: dict[str, torch.Tensor], layers: torch.nn.ModuleList, depth: int) -> torch.Tensor:
    """``[N, T, H]``: the output of block ``depth - 1`` when ``forward(model, batch)`` runs; nothing above it runs."""
    caught: dict[str, torch.Tensor] = {}

    def catch(module, args, output):
        caught["hidden"] = output[0] if isinstance(output, tuple) else output
        raise _TrunkDone

    handle = layers[depth - 1].register_forward_hook(catch)
    try:
        with torch.no_grad():
            forward(model, batch)
    except _TrunkDone:
        pass
    finally:
        handle.remove()
    if "hidden" not in caught:
        raise RuntimeError("the model's forward never reached its frozen trunk's last block")
    return caught["hidden"].detach()


@contextmanager
def _skip_trunk(layers: torch.nn.ModuleList, depth: int, states: torch.Tensor) -> Iterator[None]:
    """Blocks ``0..depth-1`` skipped for the duration: each returns its input, the last returns ``states``."""

    def passthrough(hidden_states, *args, **kwargs):
        return hidden_states

    def cached(hidden_states, *args, **kwargs):
        return states

    for i in range(depth):
        # An instance attribute shadows the class's forward (and its checkpointing wrapper) for this module only.
        layers[i].forward = cached if i == depth - 1 else passthrough
    try:
        yield
    finally:
        for i in range(depth):
            layers[i].__dict__.pop("forward", None)


# --- disk entries -------------------------------------------------------------------------------------------

def _write_entry(path: Path, key: str, states: dict[bytes, torch.Tensor], info: dict[str, Any]) -> None:
    keys = list(states)
    ids = [torch.frombuffer(bytearray(k), dtype=torch.int64) for k in keys]
    with atomic_directory(path) as tmp:
        torch.save(
            {
                "ids": torch.cat(ids),
                "lengths": torch.tensor([len(t) for t in ids], dtype=torch.int64),
                "states": torch.cat([states[k] for k in keys]),
            },
            tmp / _VALUES,
        )
        # meta.json last: its presence with the right key and count marks a complete entry.
        (tmp / _META).write_text(json.dumps({"key": key, "count": len(keys), **info, "pid": os.getpid()}))


def _read_entry(path: Path, key: str) -> dict[bytes, torch.Tensor] | None:
    """The stored states by sequence when meta, key, shapes and values all check out; None for anything else."""
    try:
        meta = json.loads((path / _META).read_text())
        if meta.get("key") != key:
            return None
        values = torch.load(path / _VALUES, weights_only=True)
        ids, lengths, states = values["ids"], values["lengths"], values["states"]
        ok = (
            lengths.dim() == 1
            and len(lengths) == meta.get("count")
            and int(lengths.sum()) == ids.numel() == states.shape[0]
            and states.dim() == 2
            and bool(torch.isfinite(states).all())
        )
        if not ok:
            return None
        out = {}
        for seq, hidden in zip(torch.split(ids, lengths.tolist()), torch.split(states, lengths.tolist())):
            out[sequence_key(seq)] = hidden
        return out
    except Exception:  # noqa: BLE001 - whatever a damaged file raises, the answer is "rebuild"
        return None



# --- building one for a run --------------------------------------------------------------------------------

# Config keys (of other features) under which rows hold several sequences; any of them true turns the cache off.
# (prefix_sharing / packing are not among them: the trainers turn those off for a run that caches its trunk.)
PACKING_KEYS = ("pack_sequences", "share_prompt")


def build_trunk_cache(config: Any, model: torch.nn.Module, kind: str, bf16: bool) -> TrunkCache | None:
    """The run's trunk cache per ``config.trunk_cache`` (None = plain path); ``kind`` is ``rm`` or ``policy``.

    ``model`` is the model as trained (LoRA applied), so the frozen depth is read from its ``requires_grad``.
    """
    from mmpo.distributed import process_state
    from mmpo.models.embedded import resolve_model_path
    from mmpo.models.loading import quantization_setting
    from mmpo.models.reference import model_identity

    depth = resolve_trunk_cache(
        getattr(config, "trunk_cache", "auto"),
        model,
        processes=process_state().num_processes,
        torch_compile=bool(getattr(config, "torch_compile", False)),
        packed=any(bool(getattr(config, k, False)) for k in PACKING_KEYS),
    )
    if not depth:
        return None
    base = base_model(model)
    settings = {
        "kind": kind,
        "dtype": str(next(base.parameters()).dtype),
        "autocast_bf16": bool(bf16),
        "attn_implementation": str(getattr(base.config, "_attn_implementation", None)),
    }
    n_blocks = len(decoder_layers(model))
    _notice(f"on: blocks 0..{depth - 1} of {n_blocks} are frozen; their output is computed once per sequence")
    revision = getattr(config, "revision", None)
    identity = model_identity(resolve_model_path(config.model, revision), revision, quantization_setting(config))
    return TrunkCache(depth, identity, settings)
