"""`mmpo serve --model DIR [--port P] [--host 127.0.0.1]`: serve one model over HTTP.

A causal LM (a policy, ``embedded``, a hub id) gets an OpenAI-compatible chat-completions API: any OpenAI
client, `mmpo eval mtbench judge --judge-url http://HOST:PORT/v1` or `mmpo label --judge-url ...` can talk to
it. A reward model (``*ForSequenceClassification``, e.g. from `mmpo rm`) gets scoring endpoints shaped like
vLLM's score and pooling APIs (``POST /v1/score``, ``POST /pooling``) for remote grading. With
``--enable-lora`` a chat server also loads and unloads LoRA adapters at runtime through vLLM's endpoints
(``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``), each served under its own model id. See
:mod:`mmpo.serving.server`. The server binds only after the model is loaded, then prints one line
``mmpo serve: listening on URL``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved causal LM or reward model directory, a hub id, or `embedded` (the kind is read from config.json, or a LoRA adapter's adapter_config.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; the URL is printed)")
    p.add_argument("--served-model-name", default=None, help="model id reported by /v1/models (default: the folder name)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="chat model weight dtype (auto: bfloat16 on a CUDA device that has it, else float32)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("MMPO_SERVE_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $MMPO_SERVE_API_KEY; unset = no key needed)",
    )
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a chat request may generate before it is stopped (default 600)")
    p.add_argument("--enable-lora", action="store_true", help="chat model: accept POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's runtime LoRA API); a request whose model is an adapter's name runs with that adapter")
    p.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH", help="with --enable-lora: LoRA adapter directories to load at startup, each served as NAME")
    p.add_argument("--batch-size", type=int, default=8, help="reward model: responses per forward pass (default 8)")
    p.add_argument("--max-length", type=int, default=None, help="reward model: tokens per sequence (default: its config.yaml, else 1024)")


def run(args: argparse.Namespace) -> int:
    from mmpo.errors import UserError
    from mmpo.evaluation.scoring import model_kind
    from mmpo.models.chat import ChatModel, default_model_name
    from mmpo.models.loading import is_adapter_dir
    from mmpo.serving.adapters import AdapterError
    from mmpo.serving.server import make_server

    if not args.request_timeout > 0:
        raise UserError(f"--request-timeout must be > 0 (got {args.request_timeout})")
    modules = [_lora_module(m) for m in args.lora_modules]
    if modules and not args.enable_lora:
        raise UserError("--lora-modules needs --enable-lora")
    chat_model, reward, aliases = None, None, ()
    if model_kind(args.model) == "reward":
        if args.enable_lora:
            raise UserError(f"--enable-lora serves LoRA adapters on a chat model; {args.model} is a reward model")
        from mmpo.graders.reward_model import RewardModelGrader

        reward = RewardModelGrader(args.model, max_length=args.max_length, device=args.device, batch_size=args.batch_size, progress=False)
        name = args.served_model_name or default_model_name(args.model)
    else:
        chat_model = ChatModel.load(args.model, device=args.device, dtype=args.dtype, name=args.served_model_name)
        name = chat_model.name
        if is_adapter_dir(args.model):
            aliases = (default_model_name(args.model),)
    try:
        server = make_server(chat_model, args.host, args.port, api_key=args.api_key, quiet=args.quiet, reward=reward,
                             name=name, request_timeout=args.request_timeout, aliases=aliases, enable_lora=args.enable_lora,
                             root=args.model)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    for adapter_name, path in modules:
        if adapter_name in server.model_names:
            raise UserError(f"--lora-modules {adapter_name}={path}: {adapter_name!r} is the base model's id; use another name")
        try:
            server.adapters.load(adapter_name, path)
        except AdapterError as e:
            server.server_close()
            raise UserError(f"--lora-modules {adapter_name}={path}: {e.message}") from None

    # SIGTERM (e.g. from a test harness or a process manager) shuts down like Ctrl-C.
    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    what = "reward model: POST /v1/score, /pooling" if reward is not None else "chat model: POST /v1/chat/completions"
    if args.enable_lora:
        what += ", LoRA adapters: POST /v1/load_lora_adapter, /v1/unload_lora_adapter"
    print(f"mmpo serve: listening on {server.url} (model {name}, {what})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print(f"mmpo serve: stopped after {server.request_summary()}", file=sys.stderr, flush=True)
    finally:
        server.server_close()
    return 0


def _lora_module(value: str) -> tuple[str, str]:
    """``NAME=PATH`` from ``--lora-modules`` as ``(name, path)``."""
    from mmpo.errors import UserError

    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--lora-modules {value}: give NAME=PATH (an adapter directory served as NAME)")
    return name, path
