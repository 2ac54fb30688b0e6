"""`mmpo serve --model DIR [--port P] [--host 127.0.0.1]`: an OpenAI-compatible chat-completions server.

Any OpenAI client (or `mmpo eval mtbench judge --judge-url http://HOST:PORT/v1`) can talk to it. The
server binds only after the model is loaded, then prints one line ``mmpo serve: listening on URL``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="saved causal LM directory, a hub id, or `embedded`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; the URL is printed)")
    p.add_argument("--served-model-name", default=None, help="model id reported by /v1/models (default: the folder name)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument(
        "--api-key",
        default=os.environ.get("MMPO_SERVE_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $MMPO_SERVE_API_KEY; unset = no key needed)",
    )
    p.add_argument("--quiet", action="store_true", help="do not log each request")


def run(args: argparse.Namespace) -> int:
    from mmpo.errors import UserError
    from mmpo.serving.chat_model import ChatModel
    from mmpo.serving.server import make_server

    chat_model = ChatModel.load(args.model, device=args.device, dtype=args.dtype, name=args.served_model_name)
    try:
        server = make_server(chat_model, args.host, args.port, api_key=args.api_key, quiet=args.quiet)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None

    # SIGTERM (e.g. from a test harness or a process manager) shuts down like Ctrl-C.
    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    print(f"mmpo serve: listening on {server.url} (model {chat_model.name})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print(f"mmpo serve: stopped after {server.requests_served} completions", file=sys.stderr, flush=True)
    finally:
        server.server_close()
    return 0
