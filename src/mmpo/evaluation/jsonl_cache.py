"""Append-only JSON Lines files that make long evaluations resumable.

Each finished unit of work (a scored pair, an answered question, a judgment) is appended as one line and
flushed at once, so a crash loses at most the line being written. On a rerun the file is read back and
done work is skipped. A final line cut short by a crash is dropped (and cut from the file before new
lines are appended); a malformed line anywhere else is an error, since it means the file was edited.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmpo.errors import DataError


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of ``path`` (none if it does not exist), in file order."""
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
    """``with JsonlAppender(path) as log: log.write(record)``: one flushed line per record."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: Any = None

    def __enter__(self) -> "JsonlAppender":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` and push them to disk before returning."""
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc: Any) -> None:
        self._file.close()
