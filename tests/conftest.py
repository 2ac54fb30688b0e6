"""Shared test fixtures: a tiny Llama causal LM with a byte-level tokenizer, and graded pair files.

Fixtures
--------
``tiny_model_dir`` (session)
    Directory with a randomly initialised 2-layer Llama (hidden 32, vocab 261) saved by ``save_pretrained``
    and its tokenizer: byte-level (every byte one token, so any text round-trips), special tokens
    ``<unk> <s> </s> <pad> <|im_start|> <|im_end|>`` (pad distinct from EOS) and a ChatML chat template.
    Loads with ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` and
    with mmpo's ``model: <path>``. Read-only: copy it if a test must change it.
``tiny_tokenizer`` (session)
    That tokenizer, loaded through :func:`mmpo.models.loading.load_tokenizer`.
``graded_rows``
    ``graded_rows(n, seed=0) -> list[dict]``: ``n`` rows in the flat graded schema (``prompt``, ``chosen``,
    ``rejected`` strings, ``score_chosen``, ``score_rejected`` on 1-10): arithmetic questions whose answers
    are off by 0-3, scored ``10 - 3 * |error|``; chosen always scores higher; margins 3, 6 and 9.
``write_jsonl``
    ``write_jsonl(path, rows) -> Path``: one JSON object per line.
``pair_file``
    ``pair_file(n=32, seed=0, name="pairs.jsonl") -> Path``: ``graded_rows`` written under ``tmp_path``.
``subprocess_env``
    The environment for a test that runs mmpo in another process: this one's, with one OpenMP thread and no
    tokenizer parallelism (the tests share the machine's cores).
``mt_bench`` (session)
    The real MT-bench files (:func:`mmpo.evaluation.mtbench.mt_bench_files`: ``$MMPO_MT_BENCH_DIR``, the cache or
    ``../shared/data/mt_bench`` beside the checkout). Without them the test is skipped, except where ``$CI`` is
    set: CI puts the shared data beside the checkout, so missing files there fail the test.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def build_byte_tokenizer() -> Any:
    """A byte-level tokenizer without merges: 6 special tokens + the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, seed: int = 0, tie: bool = False, pad_token_id: int = 3) -> Any:
    """A randomly initialised 2-layer Llama causal LM (hidden 32); deterministic for a given seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_llama(len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from mmpo.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def make_graded_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        err_chosen = rng.randint(0, 2)
        err_rejected = rng.randint(err_chosen + 1, 3)
        sign = rng.choice((-1, 1))
        rows.append(
            {
                "prompt": f"Q{i}: what is {a} + {b}?",
                "chosen": f"{a} + {b} = {a + b + sign * err_chosen}.",
                "rejected": f"{a} + {b} = {a + b - sign * err_rejected}.",
                "score_chosen": float(10 - 3 * err_chosen),
                "score_rejected": float(10 - 3 * err_rejected),
            }
        )
    return rows


def write_jsonl_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def graded_rows() -> Callable[..., list[dict[str, Any]]]:
    return make_graded_rows


@pytest.fixture(scope="session")
def write_jsonl() -> Callable[[str | Path, list[dict[str, Any]]], Path]:
    return write_jsonl_rows


@pytest.fixture
def pair_file(tmp_path: Path) -> Callable[..., Path]:
    def make(n: int = 32, seed: int = 0, name: str = "pairs.jsonl") -> Path:
        return write_jsonl_rows(tmp_path / name, make_graded_rows(n, seed))

    return make


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def mt_bench() -> Any:
    from mmpo.errors import UserError
    from mmpo.evaluation.mtbench import mt_bench_files

    try:
        return mt_bench_files()
    except UserError as e:
        if os.environ.get("CI"):
            pytest.fail(f"the MT-bench files must be present in CI (shared/data/mt_bench beside the checkout): {e}")
        pytest.skip(f"no MT-bench files here: {e}")
