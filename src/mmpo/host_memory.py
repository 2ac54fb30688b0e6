"""Host memory on CPU runs: the memory a training step frees is kept for the next step instead of returned.

glibc's malloc hands every allocation above its mmap threshold (128 KiB, adapting up to at most 32 MiB) to the
kernel with ``mmap`` and returns it with ``munmap`` when freed, and gives the free top of its heap back once it
exceeds the trim threshold. A CPU training step allocates and frees the same large tensors every time (weight
gradients, bfloat16 copies of the weights under autocast, activations; a 49152 x 576 embedding gradient alone is
113 MB), so each step page-faults them in again: 80k-100k minor faults a step for a SmolLM2-135M reward model,
140k-160k for a policy. With both thresholds raised, freed blocks go back to malloc's free lists and the next step
reuses them without faults, and steps run faster (docs/performance.md).

What it costs: the process's resident memory does not shrink after a peak until it exits, so a long run's peak
can be a few percent higher.
Setting ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment, or preloading jemalloc or
tcmalloc, does the same for any program (a TRL run included).

Kernel caches: oneDNN, which runs bfloat16 matmuls on CPUs, keeps every kernel it compiles in a cache keyed by
the tensors' shapes, and PyTorch's ideep layer over it keeps its computations in another; 1024 entries each by
default. When sequence lengths change from step to step, every step adds new shapes (about 20 a step for
SmolLM2-135M) and live memory grows by ~10 MiB a step until the caches fill, hundreds of MiB later. A step reuses
only its own shapes, so a few dozen entries keep every hit (:func:`bound_kernel_caches`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from typing import Any

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Below this an allocation comes from the heap (its free lists), above it from mmap. glibc before 2.35 refuses
# values above 32 MiB (HEAP_MAX_SIZE / 2); then 32 MiB, which still covers every tensor but the largest.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
# The largest value mallopt takes (an int): the heap's free top is never handed back while the process runs.
TRIM_THRESHOLD = (1 << 31) - 1


@functools.lru_cache(maxsize=1)
def keep_freed_host_memory() -> int:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return the first result).

    Returns the mmap threshold set, in bytes (allocations below it are reused from malloc's free lists once
    freed), or 0 where nothing was changed: not Linux, not glibc (musl's ``mallopt`` does nothing), or glibc
    refused both values.
    """
    if platform.system() != "Linux":
        return 0
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version  # the second exists only in glibc
    except (OSError, AttributeError):
        return 0
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    for threshold in MMAP_THRESHOLDS:
        if mallopt(M_MMAP_THRESHOLD, threshold) == 1:
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            return threshold
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


@functools.lru_cache(maxsize=1)
def _mallinfo2() -> Any:
    try:
        function = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


def glibc_bytes_in_use() -> int | None:
    """Bytes this process's malloc has handed out and not had back: heap chunks in use plus mmapped blocks
    (glibc's ``mallinfo2``: ``uordblks + hblkhd``); None without glibc 2.33 or later. It walks malloc's free
    lists, so it costs more the more the heap holds: a sampler should call it tens of times a second, not more."""
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return info.uordblks + info.hblkhd


# oneDNN's primitive cache and ideep's computation cache; each library reads its variable once, at its first kernel.
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(capacity: int) -> dict[str, str]:
    """Cap oneDNN's and ideep's caches of CPU kernels at ``capacity`` entries each, through their environment
    variables; a variable already set is left as it is, and ``capacity <= 0`` sets nothing.

    Returns the variables as they now stand. They take effect only if set before the process's first oneDNN
    kernel (a training run sets them before it loads its model); after that they change nothing.
    """
    if capacity > 0:
        for name in KERNEL_CACHE_VARIABLES:
            os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in KERNEL_CACHE_VARIABLES if name in os.environ}


def prepare_host(config: object) -> dict[str, object]:
    """What a CPU training run does to its process before it allocates: :func:`keep_freed_host_memory` when
    ``config.keep_host_memory`` (default true) and :func:`bound_kernel_caches` with
    ``config.kernel_cache_capacity`` (default 64). Nothing on a machine with CUDA. Returns what was set:
    ``mmap_threshold`` (0 when skipped) and ``kernel_caches`` (the variables as they stand)."""
    import torch

    if torch.cuda.is_available():
        return {"mmap_threshold": 0, "kernel_caches": {}}
    keep = keep_freed_host_memory() if getattr(config, "keep_host_memory", True) else 0
    return {"mmap_threshold": keep, "kernel_caches": bound_kernel_caches(int(getattr(config, "kernel_cache_capacity", 64)))}
