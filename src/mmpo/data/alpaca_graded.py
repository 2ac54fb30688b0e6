"""Where the ``alpaca_graded`` data is, and how to build it from its public source on first use.

600 AlpacaEval instructions (``idx`` 0..599 in AlpacaEval order), each with up to 18 real models' outputs and
GPT-4-turbo's probability that the output beats the reference answer (``p_beats_reference``). The project
carries no copy. :func:`locate` looks, in order, at

1. the cache, ``$MMPO_CACHE/data/alpaca_graded/responses.jsonl.gz``;
2. ``../shared/data/alpaca_graded/responses.jsonl.gz`` beside the repository root (a development checkout);
3. else it downloads AlpacaEval's per-model annotation files (:data:`SOURCE_FILES`:
   ``<base>/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json`` of tatsu-lab/alpaca_eval at commit
   :data:`COMMIT`; ``$MMPO_ALPACA_EVAL_URL`` overrides the base, e.g. a mirror or a ``file://`` copy of
   ``results/``), checks each file's size and sha256 against the pinned values, builds the records and writes
   them atomically into the cache.

A path the user gives (``data: {source: alpaca_graded, path: ...}``) is read as is and never reaches here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmpo.errors import UserError
from mmpo.paths import apply_umask, cache_dir

FILE_NAME = "responses.jsonl.gz"
URL_ENV = "MMPO_ALPACA_EVAL_URL"
COMMIT = "cd543a149df89434d8a54582c0151c0b945c3d20"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/{COMMIT}/results"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
N_INSTRUCTIONS = 600
# model -> (sha256, size in bytes) of its annotations.json at COMMIT. Built from these files, the records are
# byte for byte the development copy (../shared/data/alpaca_graded, once decompressed).
SOURCE_FILES: dict[str, tuple[str, int]] = {
    "FuseChat-Gemma-2-9B-Instruct": ("72945b6a549eadcd18940fee835343d62985fced144e5b7a2b69c79e120d3cab", 3796694),
    "FuseChat-Llama-3.1-8B-Instruct": ("7ef73623093cb690473d201417d3c6dfcb0e8d1c1f329180d802ab7dec81b1dc", 3698500),
    "FuseChat-Qwen-2.5-7B-Instruct": ("c816628e6973dc86ed95e6f6a50fdc09fbc4fcb970ee39140138e652cbf2a505", 3823962),
    "Mixtral-8x7B-Instruct-v0.1_concise": ("5f0d215b9a5796ad666dfce980ab4f8db38efa68b766b114f5d44cf85ce25315", 4037143),
    "alpaca-farm-ppo-human": ("e810c1b2388dba56d0786af540f062e974e8a10903ea6ffc728b20f5e0b68f2e", 3926757),
    "claude-2": ("cb4ef83e4f77bc2106c53ec0645a47e0b704b6ff7d013936ef9e70f330ca264b", 4148620),
    "claude-instant-1.2": ("d1e37abd139b989524f2474129eaffc5ca18b050c1a6d9a874a7f1683ee5a50b", 4187801),
    "falcon-40b-instruct": ("177afc64ebb05efe334c74eebea68a658b30f70667b55f7122da2f8416058762", 3816205),
    "gpt-3.5-turbo-0301": ("dfd85130894e07d8e1443714cfa5bc3376699526472119549d20af2f48ff7cc5", 3956312),
    "gpt35_turbo_instruct": ("d5ace3c2c30946f79b6360b80f8f2fdf78a2e0fabcff8142695bd7929f9bb353", 4112115),
    "humpback-llama2-70b": ("881c16cefd18f3fded2cd39d3ed0fe5678bf326c6cdd61f81b213a4830a56da2", 4189975),
    "nous-hermes-13b": ("4e2407e06bbd7dd3d788aeed3095d8152b0a11f27baa45e92265d4b4016fc24f", 3966510),
    "oasst-rlhf-llama-33b": ("9b3bbcb1887c292f11f13b0104270ab2d0c3a232ab57bc6963f1d15a21bb0c3e", 4181210),
    "phi-2-sft": ("0d54686115010ee168d34af611f0bcc659c03fdf9549923ff26cdcf0272863ae", 4144018),
    "text_davinci_001": ("8f0d04e5d31cca5aebe37d876fb798a6cf4b96fef655213c1fda03f8b4791130", 3498051),
    "ultralm-13b": ("ba88ad8119d5bd9746f52392f003604b20cb1b1339a8d75e242371ea79dec63f", 4156821),
    "vicuna-7b": ("86387fd674fc860d352750ff022c4d3b12daaf2fc51f0c70e62da81205f0a4f4", 4122851),
    "jina-chat": ("4daf25a6c419f45d99a0c24e5e06c49f34c905e2bf5150123ea61018dcfd58fb", 3820096),
}
CHUNK_BYTES = 1 << 16


def cached_file() -> Path:
    return cache_dir() / "data" / "alpaca_graded" / FILE_NAME


def development_file() -> Path:
    """``../shared/data/alpaca_graded`` relative to the repository root (src/mmpo/data/ is three levels down)."""
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "alpaca_graded" / FILE_NAME


def locate() -> Path:
    """The cached copy, else the development checkout's shared copy, else a fresh download into the cache."""
    for candidate in (cached_file(), development_file()):
        if candidate.is_file():
            return candidate
    return download(cached_file())


def _failure(url: str, reason: Any) -> UserError:
    return UserError(f"alpaca_graded: cannot download {url} ({reason}); give a local copy with "
                     f"data: {{source: alpaca_graded, path: FILE}} or point ${URL_ENV} at a mirror of alpaca_eval's results/")


def fetch_checked(url: str, sha256: str, size: int, progress: Any = None) -> bytes:
    """The body at ``url``, read in chunks (each counted on ``progress``, a tqdm bar), checked against the
    pinned ``size`` and ``sha256``; a transport error or a mismatch is one :class:`UserError` line naming ``url``."""
    digest, chunks, got = hashlib.sha256(), [], 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                chunks.append(chunk)
                got += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _failure(url, getattr(e, "reason", None) or e) from None
    if got != size or digest.hexdigest() != sha256:
        raise UserError(f"alpaca_graded: {url} is not the pinned file ({got} bytes, sha256 {digest.hexdigest()}; "
                        f"expected {size} bytes, sha256 {sha256}); is ${URL_ENV} a mirror of alpaca_eval at {COMMIT}?")
    return b"".join(chunks)


def build_records(annotations: dict[str, list[dict[str, Any]]], n: int | None = None) -> list[dict[str, Any]]:
    """Per-instruction records from per-model annotation lists.

    Each annotation has ``instruction``, ``output_1`` (the reference), ``output_2`` (the model's output) and
    ``preference`` in [1, 2]; ``p_beats_reference = preference - 1`` (rounded to 6 decimals, as stored).
    The instructions are the first ``n`` in AlpacaEval order (the order of the first model's file); an
    annotation without a preference leaves that model out for that instruction.
    """
    n = N_INSTRUCTIONS if n is None else n
    order: list[str] = []
    seen: set[str] = set()
    for records in annotations.values():
        for rec in records:
            if rec["instruction"] not in seen:
                seen.add(rec["instruction"])
                order.append(rec["instruction"])
        break
    chosen = {instruction: i for i, instruction in enumerate(order[:n])}
    out: list[dict[str, Any]] = [{"idx": i, "instruction": text, "dataset": None, "outputs": {}} for text, i in chosen.items()]
    for model, records in annotations.items():
        for rec in records:
            i = chosen.get(rec.get("instruction"))
            if i is None or rec.get("preference") is None or rec.get("output_2") is None:
                continue
            if out[i]["dataset"] is None and rec.get("dataset") is not None:
                out[i]["dataset"] = rec["dataset"]
            out[i]["outputs"][model] = {"output": rec["output_2"], "p_beats_reference": round(float(rec["preference"]) - 1.0, 6)}
    return out


def download(target: Path, base_url: str | None = None) -> Path:
    """Download :data:`SOURCE_FILES` from ``base_url`` (default ``$MMPO_ALPACA_EVAL_URL``, else alpaca_eval at
    :data:`COMMIT`), check each against its pinned size and sha256, build the records and write them to
    ``target`` atomically (a temporary file renamed into place)."""
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    total = sum(size for _, size in SOURCE_FILES.values())
    print(f"alpaca_graded: first use: downloading {len(SOURCE_FILES)} AlpacaEval annotation files "
          f"({total / 1e6:.1f} MB) from {base} into {target.parent}", file=sys.stderr, flush=True)
    annotations = {}
    with tqdm(total=total, desc="alpaca_graded", unit="B", unit_scale=True, disable=None) as bar:
        for model, (sha256, size) in SOURCE_FILES.items():
            url = f"{base}/{urllib.parse.quote(model)}/{ANNOTATOR}/annotations.json"
            try:
                data = json.loads(fetch_checked(url, sha256, size, bar))
            except ValueError as e:
                raise _failure(url, f"not JSON: {e}") from None
            if not isinstance(data, list):
                raise UserError(f"alpaca_graded: {url} is not a list of annotations")
            annotations[model] = data
    records = build_records(annotations)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")  # ASCII escapes, as the development copy is written
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
