"""Which floating-point precision the hardware runs natively: bfloat16 autocast where it is fast, else float32."""

from __future__ import annotations

import contextlib
import functools
import platform
from typing import Iterator

import torch

# /proc/cpuinfo flags of CPUs that multiply bfloat16 natively: x86 AVX512-BF16 and AMX, ARM's BF16 extension.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 arithmetic (AVX512-BF16, AMX or ARM BF16), read from ``/proc/cpuinfo``.

    Elsewhere (no ``/proc/cpuinfo``, e.g. macOS) False: bfloat16 emulated in float32 units is slower, not faster.
    """
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def cuda_has_bf16() -> bool:
    """A CUDA device is present and supports bfloat16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def native_bf16(device_type: str | None = None) -> bool:
    """Does the device that will run (``cuda`` when present, else ``cpu``) have native bfloat16?"""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return cuda_has_bf16() if device_type == "cuda" else cpu_has_native_bf16()


@contextlib.contextmanager
def without_mixed_precision(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` in its weights' own dtype (float32) inside the block: accelerate's mixed-precision forward
    wrapper (bfloat16 autocast, installed by ``prepare_model`` as ``model.forward``, the original kept as
    ``model._original_forward``) is taken off and put back after. A model without that wrapper is untouched."""
    wrapped = model.__dict__.get("forward")
    original = getattr(model, "_original_forward", None)
    if wrapped is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped
