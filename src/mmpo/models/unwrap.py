"""Reaching the model under its wrappers: one rule for every model helper.

Two depths, for two kinds of caller:

* :func:`unwrap_model` strips what wraps a model for running it: DDP / accelerate (``.module``) and
  ``torch.compile`` (``._orig_mod``), in any nesting. A peft model stays a peft model, so adapter calls
  (``disable_adapter``, ``merge_and_unload``) still work on the result.
* :func:`base_model` goes one step further and also strips peft (``get_base_model``): the transformers model
  itself, for its config, output head, decoder and classification head.

Both return ``model`` itself when nothing wraps it. Calls to run the model go through the wrapped model, not
through either result, so the wrappers' hooks (gradient sync, autocast, adapters) still run.
"""

from __future__ import annotations

from typing import Any


def unwrap_model(model: Any) -> Any:
    """``model`` without DDP / accelerate (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers; peft kept."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def base_model(model: Any) -> Any:
    """The transformers model under DDP / accelerate / ``torch.compile`` / peft wrappers (see the module doc)."""
    model = unwrap_model(model)
    if hasattr(model, "get_base_model"):
        model = unwrap_model(model.get_base_model())
    return model
