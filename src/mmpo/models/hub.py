"""Model names that are not local paths: Hugging Face Hub ids, looked up once, quickly, with one-line errors.

Loading a Hub model the usual way (``from_pretrained("org/name")``) retries an unreachable Hub for about a
minute before it fails with a network traceback, and a mistyped local path such as ``runs/nosuch`` looks like
a Hub id. :func:`resolve_hub_model` settles the name first:

* already in the local Hugging Face cache and the Hub unreachable (or ``HF_HUB_OFFLINE=1``): the cached snapshot
  directory of the requested ``revision`` (branch, tag or commit; none = the default branch), so loading needs
  no network; another revision's snapshot is never returned;
* not cached and ``HF_HUB_OFFLINE=1``: an error at once;
* otherwise one request with a short timeout (:data:`HUB_TIMEOUT_S`): unreachable, or no such model, is an error
  at once; found: the name, for ``from_pretrained`` to download.
"""

from __future__ import annotations

import functools
import os

from mmpo.errors import UserError

HUB_TIMEOUT_S = 10.0


def _cached_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """The cached snapshot directory of ``revision`` of ``repo_id`` (the ref it names, or the commit itself), or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not usable from the cache"
        return None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not only when ``huggingface_hub`` was imported)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=64)
def resolve_hub_model(repo_id: str, revision: str | None = None) -> str:
    """What to hand ``from_pretrained`` for ``revision`` of the Hub id ``repo_id`` (rules in the module docstring)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"model path does not exist: {repo_id} (nor is it a Hugging Face Hub model id)") from None
    cached = _cached_snapshot(repo_id, revision)
    at = f" at revision {revision!r}" if revision else ""
    if hub_offline():
        if cached:
            return cached
        raise UserError(f"model {repo_id!r}{at} is not a local path and not in the Hugging Face cache (HF_HUB_OFFLINE is set)")
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise UserError(f"model {repo_id!r} is not a local path and the Hugging Face Hub has no such model") from None
    except RevisionNotFoundError:
        raise UserError(f"model {repo_id!r}: the Hugging Face Hub has no revision {revision!r}") from None
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeout, proxy: all mean "unreachable"
        if cached:
            return cached
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"model {repo_id!r}{at} is not a local path, and the Hugging Face Hub is unreachable to fetch it ({first}); "
            "check the path, or the network"
        ) from None
    return repo_id
