"""Where the ``alpaca_graded`` data is, and how to build it from its public source on first use.

600 AlpacaEval instructions (``idx`` 0..599 in AlpacaEval order), each with up to 18 real models' outputs and
GPT-4-turbo's probability that the output beats the reference answer (``p_beats_reference``). The project
carries no copy. :func:`locate` looks, in order, at

1. the cache, ``$MMPO_CACHE/data/alpaca_graded/responses.jsonl.gz``;
2. ``../shared/data/alpaca_graded/responses.jsonl.gz`` beside the repository root (a development checkout);
3. else it builds the records from AlpacaEval's per-model annotation files
   (``<base>/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json`` in tatsu-lab/alpaca_eval at commit
   cd543a1; ``$MMPO_ALPACA_EVAL_URL`` overrides the base) and writes them atomically into the cache.

A path the user gives (``data: {source: alpaca_graded, path: ...}``) is read as is and never reaches here.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmpo.errors import UserError
from mmpo.paths import apply_umask, cache_dir, fetch_url

FILE_NAME = "responses.jsonl.gz"
URL_ENV = "MMPO_ALPACA_EVAL_URL"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a1/results"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
N_INSTRUCTIONS = 600
MODELS = (
    "FuseChat-Gemma-2-9B-Instruct", "FuseChat-Llama-3.1-8B-Instruct", "FuseChat-Qwen-2.5-7B-Instruct",
    "Mixtral-8x7B-Instruct-v0.1_concise", "alpaca-farm-ppo-human", "claude-2", "claude-instant-1.2",
    "falcon-40b-instruct", "gpt-3.5-turbo-0301", "gpt35_turbo_instruct", "humpback-llama2-70b", "nous-hermes-13b",
    "oasst-rlhf-llama-33b", "phi-2-sft", "text_davinci_001", "ultralm-13b", "vicuna-7b", "jina-chat",
)


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


def _fetch_json(url: str) -> Any:
    failure = ("alpaca_graded: cannot download {url} ({reason}); give a local copy with "
               "data: {{source: alpaca_graded, path: FILE}} or point $" + URL_ENV + " at a mirror of alpaca_eval's results/")
    body = fetch_url(url, failure)
    try:
        return json.loads(body)
    except ValueError as e:
        raise UserError(failure.format(url=url, reason=f"not JSON: {e}")) from None


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


def download(target: Path, base_url: str | None = None, models: tuple[str, ...] | None = None) -> Path:
    """Build the records from ``base_url`` (default ``$MMPO_ALPACA_EVAL_URL``, else alpaca_eval at cd543a1) and
    write them to ``target`` atomically (a temporary file renamed into place)."""
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    annotations = {}
    for model in tqdm(models or MODELS, desc="downloading alpaca_graded (AlpacaEval annotations)", unit=" models", disable=None):
        url = f"{base}/{urllib.parse.quote(model)}/{ANNOTATOR}/annotations.json"
        data = _fetch_json(url)
        if not isinstance(data, list):
            raise UserError(f"alpaca_graded: {url} is not a list of annotations")
        annotations[model] = data
    records = build_records(annotations)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
