"""LoRA adapters loaded into a running chat server, as vLLM's ``--enable-lora`` server does it at runtime
(``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``).

Every adapter is a peft LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, what
``mmpo dpo`` saves with ``merge_lora: false``) attached by name to the one base model the server holds: the
first load wraps the base in a peft model, later loads add adapters beside it, unloading the last one unwraps the
base again. A request names the adapter it wants; :meth:`LoraAdapters.using` makes that adapter (or, for the base
name, none) the active one and holds one lock for the whole generation, so a request never runs with another
request's adapter active.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmpo.errors import UserError
from mmpo.models.chat import ChatModel
from mmpo.models.loading import adapter_config, is_adapter_dir


class AdapterError(Exception):
    """A load or unload request that cannot be done; ``status`` is the HTTP status vLLM answers with
    (400 for a bad request, 404 for a name or path that does not exist); ``param`` the request field at fault."""

    def __init__(self, status: int, message: str, param: str = "lora_name"):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass(frozen=True)
class LoadedAdapter:
    """One adapter as ``GET /v1/models`` lists it: ``name`` (its model id), ``path`` (``root``, as given in the
    load request) and ``created`` (load time, Unix seconds)."""

    name: str
    path: str
    created: int


class LoraAdapters:
    """The LoRA adapters attached to ``chat``'s model, and the lock every generation on it holds.

    ``enabled`` False (``mmpo serve`` without ``--enable-lora``) refuses every load; generation still goes
    through :meth:`using` so requests stay one at a time either way.
    """

    def __init__(self, chat: ChatModel, enabled: bool = False):
        self.chat = chat
        self.enabled = enabled
        self.lock = threading.Lock()
        self._base = chat.model  # the unwrapped model, restored when the last adapter goes
        self._loaded: dict[str, LoadedAdapter] = {}

    def listed(self) -> list[LoadedAdapter]:
        """The loaded adapters, in load order."""
        return list(self._loaded.values())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded

    def load(self, name: str, path: str) -> LoadedAdapter:
        """Attach the LoRA adapter saved at ``path`` under ``name``.

        Raises :class:`AdapterError`: 404 when ``path`` is not a directory (vLLM: "No adapter found"), 400 when
        the name is taken, the directory is not a peft LoRA adapter, or its weights do not fit the base model
        (other module names or shapes). A failed load leaves the model as it was.
        """
        if not self.enabled:
            raise AdapterError(404, "loading LoRA adapters at runtime is off: start mmpo serve with --enable-lora")
        if name in self._loaded:
            raise AdapterError(400, f"The lora adapter '{name}' has already been loaded.")
        if not Path(path).is_dir():
            raise AdapterError(404, f"No adapter found for {path!r}: no such directory on the server", "lora_path")
        if not is_adapter_dir(path):
            raise AdapterError(400, f"{path!r} is not a peft adapter directory (it has no adapter_config.json)", "lora_path")
        try:
            settings = adapter_config(path)
        except UserError as e:
            raise AdapterError(400, str(e), "lora_path") from None
        if settings.get("peft_type") != "LORA":
            raise AdapterError(400, f"{path!r} holds a {settings.get('peft_type') or 'non-peft'} adapter; only LoRA adapters are served", "lora_path")
        with self.lock:
            if name in self._loaded:  # loaded by a request that held the lock first
                raise AdapterError(400, f"The lora adapter '{name}' has already been loaded.")
            self._attach(name, path, settings.get("base_model_name_or_path"))
            adapter = LoadedAdapter(name, path, int(time.time()))
            # A new dict, not an update: listing and model checks read it without the lock.
            self._loaded = {**self._loaded, name: adapter}
        return adapter

    def _attach(self, name: str, path: str, trained_on: str | None) -> None:
        from peft import PeftConfig, PeftModelForCausalLM

        from mmpo.models.loading import quiet_peft_wrapping
        from mmpo.models.policy import freeze

        model = self.chat.model
        first = model is self._base
        try:
            if first:
                # Built from the config first, then loaded, so a failed load can be undone by unwrapping.
                with quiet_peft_wrapping():
                    model = PeftModelForCausalLM(self._base, PeftConfig.from_pretrained(path), adapter_name=name)
            model.load_adapter(path, adapter_name=name)
        except Exception as e:  # noqa: BLE001 - any failure to fit the weights is the request's fault
            self._undo(model, name, first)
            line = str(e).strip().splitlines()
            detail = " ".join(line[:2])[:500] if line else type(e).__name__
            base = f" (it was trained on {trained_on!r})" if trained_on else ""
            raise AdapterError(400, f"the adapter at {path!r}{base} does not fit the served model {self.chat.name!r}: {detail}", "lora_path") from None
        freeze(model)  # eval mode: a LoRA layer's dropout must not act on answers
        self.chat.model = model

    def _undo(self, model: object, name: str, first: bool) -> None:
        """Remove a half-loaded adapter: unwrap the base when it was the first, else delete just that one."""
        if not hasattr(model, "peft_config"):
            return
        if first:
            model.unload()  # type: ignore[attr-defined]
        elif name in model.peft_config:  # type: ignore[attr-defined]
            model.delete_adapter(name)  # type: ignore[attr-defined]

    def unload(self, name: str) -> None:
        """Detach the adapter ``name`` and free its weights; a 404 :class:`AdapterError` when none is loaded under
        that name (vLLM's answer)."""
        if not self.enabled:
            raise AdapterError(404, "loading LoRA adapters at runtime is off: start mmpo serve with --enable-lora")
        with self.lock:
            if name not in self._loaded:
                raise AdapterError(404, f"The lora adapter '{name}' cannot be found.")
            model = self.chat.model
            if len(self._loaded) == 1:
                # peft cannot run with zero adapters: take the LoRA layers out and serve the bare base again.
                model.unload()  # type: ignore[attr-defined]
                self.chat.model = self._base
            else:
                with warnings.catch_warnings():
                    # peft warns when the active adapter goes; using() sets the active one for every request.
                    warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
                    model.delete_adapter(name)  # type: ignore[attr-defined]
            self._loaded = {k: v for k, v in self._loaded.items() if k != name}

    @contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Hold the generation lock with adapter ``name`` active (``None``: the base model, adapters off).

        Raises :class:`AdapterError` (404) when ``name`` was unloaded before this request got the lock.
        """
        with self.lock:
            model = self.chat.model
            if name is None:
                if model is self._base:
                    yield
                else:
                    with model.disable_adapter():  # type: ignore[attr-defined]
                        yield
                return
            if name not in self._loaded:
                raise AdapterError(404, f"The lora adapter '{name}' cannot be found.")
            model.set_adapter(name)  # type: ignore[attr-defined]
            yield
