"""An OpenAI-compatible HTTP server for one chat model (stdlib ``http.server`` only).

Endpoints:

* ``POST /v1/chat/completions``: body ``{"messages": [...], "temperature", "max_tokens"
  (or "max_completion_tokens"), "top_p", "seed", "stop"}``; answers
  ``{"id", "object": "chat.completion", "created", "model", "choices": [{"index": 0, "message":
  {"role": "assistant", "content"}, "finish_reason"}], "usage": {"prompt_tokens", "completion_tokens",
  "total_tokens"}}``. Only ``n = 1`` and non-streaming requests are served. The ``model`` field is echoed
  but not checked: the server has exactly one model, whatever the client calls it.
* ``GET /v1/models``: the one model, as ``{"object": "list", "data": [{"id", "object": "model", ...}]}``.
* ``GET /health``: ``{"status": "ok"}`` once the model is loaded (the server only listens after that).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request,
401 for a wrong API key (when the server was started with one), 404 for an unknown path, 413 for a body
over :data:`MAX_BODY_BYTES`, 500 when generation itself fails. Requests are handled on threads but
generation is serialized by the model's lock: one model, one generation at a time.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mmpo.serving.chat_model import ChatModel, PromptTooLong, check_messages

MAX_BODY_BYTES = 10 * 1024 * 1024
# OpenAI's defaults where a request leaves a field out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 1024


class RequestError(Exception):
    """A client error that becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise RequestError(400, f"'{key}' must be {'an integer' if integer else 'a number'}", key)
    if not lo <= value <= hi:
        raise RequestError(400, f"'{key}' must be between {lo} and {hi}", key)
    return int(value) if integer else float(value)


def parse_chat_request(body: Any) -> dict[str, Any]:
    """Validated generation arguments from a chat-completions body; raises :class:`RequestError` (400)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported by mmpo serve", "stream")
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n = 1 is supported", "n")
    try:
        messages = check_messages(body.get("messages"))
    except ValueError as e:
        raise RequestError(400, str(e), "messages") from None
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    return {
        "messages": messages,
        "temperature": _number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, 2.0),
        "top_p": _number(body, "top_p", DEFAULT_TOP_P, 1e-9, 1.0),
        "max_new_tokens": _number(body, max_key, DEFAULT_MAX_TOKENS, 1, 1_000_000, integer=True),
        "seed": seed,
        "stop": stop,
    }


class ChatServer(ThreadingHTTPServer):
    """A threading HTTP server holding the one :class:`ChatModel` it serves."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat_model: ChatModel, api_key: str | None = None, quiet: bool = False):
        super().__init__(address, ChatHandler)
        self.chat_model = chat_model
        self.api_key = api_key
        self.quiet = quiet
        self.created = int(time.time())
        self.requests_served = 0

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8000/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"

    # --- plumbing ---------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        if not self.server.quiet:
            sys.stderr.write(f"mmpo serve: {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: RequestError) -> None:
        self._send_json(err.status, {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": None}})

    def _check_auth(self) -> None:
        if self.server.api_key and self.headers.get("Authorization", "") != f"Bearer {self.server.api_key}":
            raise RequestError(401, "missing or wrong API key", kind="authentication_error")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError(400, "bad Content-Length header") from None
        if length > MAX_BODY_BYTES:
            # The body is not read, so the connection cannot be reused.
            self.close_connection = True
            raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _parse_json(raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(400, f"request body is not valid JSON ({e})") from None

    # --- endpoints --------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/health":
                self._send_json(200, {"status": "ok", "model": self.server.chat_model.name})
                return
            self._check_auth()
            if path == "/v1/models":
                model = {"id": self.server.chat_model.name, "object": "model", "created": self.server.created, "owned_by": "mmpo"}
                self._send_json(200, {"object": "list", "data": [model]})
                return
            raise RequestError(404, f"no such endpoint: GET {path}", kind="not_found_error")
        except RequestError as e:
            self._send_error(e)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            # Read the body first, whatever happens next, so a keep-alive connection stays in step.
            raw = self._read_body()
            self._check_auth()
            if path != "/v1/chat/completions":
                raise RequestError(404, f"no such endpoint: POST {path}", kind="not_found_error")
            request = parse_chat_request(self._parse_json(raw))
            try:
                completion = self.server.chat_model.generate(**request)
            except PromptTooLong as e:
                raise RequestError(400, str(e), "messages") from None
            except Exception as e:  # a generation failure is the server's fault, reported as 500
                raise RequestError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from None
            self.server.requests_served += 1
            self._send_json(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.server.chat_model.name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": completion.text},
                            "finish_reason": completion.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens,
                        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                    },
                },
            )
        except RequestError as e:
            self._send_error(e)


def make_server(chat_model: ChatModel, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, quiet: bool = False) -> ChatServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port, readable from ``server.url``."""
    return ChatServer((host, port), chat_model, api_key=api_key, quiet=quiet)
