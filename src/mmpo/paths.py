"""Where mmpo keeps models, data and caches: outside the repository, under one cache directory."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator


def cache_dir() -> Path:
    """``$MMPO_CACHE``, else ``$XDG_CACHE_HOME/mmpo``, else ``~/.cache/mmpo``."""
    root = os.environ.get("MMPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mmpo"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


_CACHE_VARIABLE = re.compile(r"\$\{MMPO_CACHE\}|\$MMPO_CACHE(?![A-Za-z0-9_])")


def expand_cache_variable(value: str) -> str:
    """``$MMPO_CACHE`` or ``${MMPO_CACHE}`` in a config value (a recipe's data path) becomes :func:`cache_dir`,
    which has a default when the variable is unset; nothing else in the text is touched."""
    if "MMPO_CACHE" not in value:
        return value
    return _CACHE_VARIABLE.sub(lambda _: str(cache_dir()), value)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a directory and everything under it) the permissions ``open`` and ``mkdir``
    would: files ``0o666 & ~umask``, directories ``0o777 & ~umask``.

    ``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files and 0700 directories, and safetensors writes its files
    0600; what mmpo writes for the user (models, configs, results) should be readable as the user's umask says.
    """
    mask = current_umask()
    path = Path(path)
    if path.is_file():
        os.chmod(path, 0o666 & ~mask)
        return
    if not path.is_dir():
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, 0o666 & ~mask)


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it into place only if the block succeeds.

    A reader therefore sees either no directory or a complete one, never a half-written one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp made it 0700; what was written inside may be 0600 (safetensors)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_url(url: str, failure: str, timeout: float = 60.0) -> bytes:
    """The body at ``url``. Unreachable (or any transport error): one ``UserError`` line, ``failure`` with
    ``{url}`` and ``{reason}`` filled in, which should say where else the data can come from."""
    import urllib.error
    import urllib.request

    from mmpo.errors import UserError

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(failure.format(url=url, reason=reason)) from None

