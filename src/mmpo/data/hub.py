"""Where raw rows come from: a local file, a local copy of a hub data set (a directory), or the Hub itself.

Every reader yields ``(where, row, record)``: ``where`` names the file (or ``hub_id[split]``) for error
messages, ``row`` is the 1-based line number in JSON Lines files and the 0-based row index elsewhere.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from mmpo.errors import DataError, UserError

RawRow = tuple[str, int, dict[str, Any]]

# Suffixes read row by row; ``.json`` may hold one JSON document or JSON Lines (SHP's ``*.json`` files do).
ROW_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")


def file_suffix(path: Path) -> str:
    """``.jsonl.gz`` for a gzipped file, else the last suffix."""
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def json_lines(path: Path) -> Iterator[RawRow]:
    """``(source, line number, object)`` for each non-empty line of a JSONL file (optionally .gz); a
    malformed line is a DataError naming its line."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), lineno, None, f"malformed JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(str(path), lineno, None, "each JSON line must be an object")
            yield str(path), lineno, obj


def _json_document(path: Path) -> Iterator[RawRow]:
    with _open_text(path) as f:
        text = f.read()
    if not text.strip():
        raise UserError(f"{path}: empty file (no rows)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several objects, one per line: JSON Lines under a .json name
            yield from json_lines(path)
            return
        raise DataError(str(path), e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} and similar wrappers
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "expected a list of row objects")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(str(path), i, None, "each row must be an object")
        yield str(path), i, obj


def _table(path: Path, suffix: str) -> Iterator[RawRow]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file (no header and no rows)") from None
    for i, rec in enumerate(frame.to_dict(orient="records")):
        yield str(path), i, {k: plain(v) for k, v in rec.items()}


def plain(value: Any) -> Any:
    """numpy arrays and scalars (from parquet / Arrow) as plain Python lists, dicts and numbers."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [plain(x) for x in value]
    if isinstance(value, dict):
        return {k: plain(x) for k, x in value.items()}
    return value


def read_file(path: str | Path) -> Iterator[RawRow]:
    """Rows of one local file: ``.jsonl``/``.json`` (optionally ``.gz``), ``.parquet`` or ``.csv``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = file_suffix(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (no rows)")
    if suffix in (".jsonl", ".jsonl.gz"):
        return json_lines(path)
    if suffix in (".json", ".json.gz"):
        return _json_document(path)
    if suffix in (".parquet", ".csv"):
        return _table(path, suffix)
    raise UserError(f"unsupported data file type {suffix!r} ({path}): use .jsonl, .json, .parquet or .csv (optionally .gz)")


def _split_of(path: Path, root: Path) -> set[str]:
    """Names a file may belong to: its name up to the first '-' or '.' and its folders under ``root``.

    Hub layouts name splits either way: ``data/train_prefs-00000-of-00001.parquet``, ``preference/train.jsonl.gz``,
    ``askscience/validation.json``, ``train/0000.parquet``.
    """
    stem = path.name.split(".")[0].split("-")[0]
    return {stem, *path.relative_to(root).parent.parts}


# Split names a hub snapshot's files are named for, and the other name each split goes by (SHP_filtered_MMPO and
# UltraFeedback call their splits train_prefs / test_prefs).
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "train_prefs", "test_prefs", "train_gen", "test_gen")
SPLIT_ALIASES = {"train": ("train_prefs",), "test": ("test_prefs",), "train_prefs": ("train",), "test_prefs": ("test",)}


def data_files(root: Path, split: str | None) -> list[Path]:
    """The data files under a directory that belong to ``split``.

    Files are named for splits (``train.jsonl``, ``data/test_prefs-00000-of-00001.parquet``, ``train/0.parquet``):
    then ``split`` (or its alias, ``train`` <-> ``train_prefs``) picks its files, a split no file is named for is
    an error, and no split means the training split. A directory whose files name no split holds one split (or a
    split column) and is read whole.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file() and file_suffix(p) in ROW_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"no data files (.jsonl, .json, .parquet, .csv) under {root}")
    named = sorted({name for p in files for name in _split_of(p, root) if name in SPLIT_NAMES})
    if not named:
        return files
    wanted = split or "train"
    for name in (wanted, *SPLIT_ALIASES.get(wanted, ())):
        matching = [p for p in files if name in _split_of(p, root)]
        if matching:
            return matching
    if split is None:
        raise UserError(f"{root} holds splits {', '.join(named)} and no train split: choose one with `split`")
    raise UserError(f"{root} has no files for split {split!r}; its files are named for {', '.join(named)}")


def _saved_dataset(root: Path) -> bool:
    return (root / "dataset_dict.json").exists() or (root / "state.json").exists()


def _arrow_rows(dataset: Any, where: str) -> Iterator[RawRow]:
    for i, rec in enumerate(dataset):
        yield where, i, {k: plain(v) for k, v in rec.items()}


def _load_from_disk(root: Path, split: str | None) -> Iterator[RawRow]:
    import datasets

    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise UserError(f"{root} holds splits {', '.join(loaded)}: choose one with `split`")
            split = next(iter(loaded))
        if split not in loaded:
            raise UserError(f"{root} has no split {split!r}; it holds {', '.join(loaded)}")
        return _arrow_rows(loaded[split], f"{root}[{split}]")
    return _arrow_rows(loaded, str(root))


def read_local(path: str | Path, split: str | None = None, subpath: str | None = None) -> Iterator[RawRow]:
    """Rows of a local copy: one file, a directory saved with ``datasets``' ``save_to_disk``, or a directory of
    data files (a hub snapshot), where files named for ``split`` are read if there are any.

    ``subpath`` is where the data sits inside a full snapshot of the hub repository (HelpSteer2's
    ``preference/preference.jsonl.gz``); it is used when the directory has it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data path not found: {path}")
    if path.is_dir() and subpath and (path / subpath).exists():
        path = path / subpath
    if path.is_file():
        return read_file(path)
    if _saved_dataset(path):
        return _load_from_disk(path, split)
    return _chain(read_file(p) for p in data_files(path, split))


def _chain(readers: Iterator[Iterator[RawRow]]) -> Iterator[RawRow]:
    for reader in readers:
        yield from reader


def read_hub(hub_id: str, split: str, config_name: str | None = None, files: str | None = None) -> Iterator[RawRow]:
    """Rows of ``datasets.load_dataset(hub_id, config_name, data_files=files, split=split)``.

    As for models (:mod:`mmpo.models.hub`), the Hub is asked once with a short timeout before ``datasets``
    (which retries an unreachable Hub for about half a minute) is called: unreachable means the copy in the
    Hugging Face cache, read offline, or else an error at once; no such data set is an error at once. With
    ``HF_HUB_OFFLINE=1`` the Hub is not asked. Every failure is one :class:`UserError` line that tells the user
    to pass a local copy.
    """
    from mmpo.models.hub import hub_offline

    def failure(reason: str) -> UserError:
        return UserError(
            f"cannot load {hub_id} (split {split}) from the Hugging Face Hub: {reason}; "
            f"pass a local copy instead, e.g. data: {{source: {hub_id}, path: /path/to/copy}}"
        )

    offline = hub_offline()
    unreachable = None if offline else _hub_unreachable(hub_id, failure)
    try:
        dataset = _load_dataset(hub_id, split, config_name, files, offline=offline or unreachable is not None)
    except Exception as e:  # unknown id, gated, bad split, not cached: all mean "use a local copy"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        # datasets says "Couldn't reach ... (OfflineModeIsEnabled)", a ConnectionError, when the cache lacks it.
        not_cached = isinstance(e, ConnectionError)
        if offline and not_cached:
            raise failure("not in the Hugging Face cache, and HF_HUB_OFFLINE is set") from None
        if unreachable is not None and not_cached:
            raise failure(f"the Hub is unreachable ({unreachable}) and the data set is not in the Hugging Face cache") from None
        raise failure(reason) from None
    return _arrow_rows(dataset, f"{hub_id}[{split}]")


def _hub_unreachable(hub_id: str, failure: Any) -> str | None:
    """None when the Hub answers for the data set ``hub_id``; the reason (one line) when it cannot be reached.
    A Hub that answers that there is no such data set raises ``failure(reason)``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from mmpo.models.hub import HUB_TIMEOUT_S

    try:
        HfApi().dataset_info(hub_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise failure("the Hub has no such data set (or it is private)") from None
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeout, proxy: all mean "unreachable"
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None


def _load_dataset(hub_id: str, split: str, config_name: str | None, files: str | None, offline: bool) -> Any:
    """``datasets.load_dataset``; with ``offline`` from the Hugging Face cache only, with no request sent."""
    import datasets
    from huggingface_hub import constants

    if not offline:
        return datasets.load_dataset(hub_id, config_name, data_files=files, split=split)
    # Both libraries read HF_HUB_OFFLINE once, when imported: set it for this call.
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(hub_id, config_name, data_files=files, split=split)
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
