"""Writing and reading run files: whole files atomically, JSON Lines appended resumably.

* :func:`atomic_write_text` / :func:`write_jsonl_atomic`: a reader sees the old file or the whole new one.
* :func:`append_jsonl` / :class:`JsonlAppender`: each finished unit of work (a graded prompt, a scored pair,
  a logged step) is appended as one line and flushed at once, so a crash loses at most the line being
  written. A final line cut short by a crash is cut from the file before new lines are appended, so the
  new lines never land after a torn one.
* :func:`read_jsonl`: every complete record; a torn final line (no newline after it) is dropped, a malformed
  line anywhere else is an error naming the file and line, since it means the file was edited.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmpo.errors import DataError
from mmpo.paths import apply_umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: readers see the old file or the
    whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        apply_umask(tmp)  # mkstemp creates 0600; the file gets what any other file of the user's would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonl_text(records: Iterable[dict[str, Any]], default: Callable[[Any], Any] | None = None) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=default) + "\n" for r in records)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]],
                       default: Callable[[Any], Any] | None = None) -> None:
    """All of ``records``, one JSON object a line, or nothing (see :func:`atomic_write_text`); ``default`` turns
    values JSON lacks (numpy scalars, say) into ones it has, as in :func:`json.dumps`."""
    atomic_write_text(path, _jsonl_text(records, default))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of ``path`` (none if it does not exist), in file order.

    The last line, when it has no newline after it and is not valid JSON, is a write cut short by a crash and
    is dropped; any other malformed line raises :class:`mmpo.errors.DataError` with the file and line number.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # the last line, with no newline after it: a write cut short
                break
            raise DataError(str(path), lineno, None, f"malformed JSON line ({e.msg}); delete the line or the file to redo it") from None
        if not isinstance(obj, dict):
            raise DataError(str(path), lineno, None, "each line must be a JSON object")
        records.append(obj)
    return records


def _drop_partial_tail(path: Path) -> None:
    """Cut a final line that has no newline (a write interrupted mid-line) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)


class JsonlAppender:
    """``with JsonlAppender(path) as log: log.write(record)``: one flushed line per record, after cutting a torn
    final line left by a crash."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: Any = None

    def __enter__(self) -> "JsonlAppender":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` and push them to disk before returning."""
        self._file.write(_jsonl_text(records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc: Any) -> None:
        self._file.close()


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append ``records`` to ``path`` as one :class:`JsonlAppender` would (torn tail cut first, flushed to disk)."""
    with JsonlAppender(path) as log:
        log.write_many(records)
