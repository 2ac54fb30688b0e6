"""User-facing errors: the CLI prints these as one line (no traceback unless --debug)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, data, paths) rather than a bug in mmpo."""


class DataError(UserError):
    """Bad preference data. The message names the file, the row (or line) and the field."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem
