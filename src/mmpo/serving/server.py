"""An HTTP server for one model (stdlib ``http.server`` only): a chat model behind OpenAI's chat-completions
API, or a reward model behind scoring endpoints shaped like vLLM's score and pooling APIs.

Chat model endpoints:

* ``POST /v1/chat/completions``: body ``{"model", "messages": [...], "n", "temperature", "max_tokens"
  (or "max_completion_tokens"), "top_p", "seed", "stop", "stream", "stream_options": {"include_usage"},
  "logprobs", "top_logprobs"}``; answers ``{"id", "object": "chat.completion", "created", "model",
  "choices": [{"index", "message": {"role": "assistant", "content"}, "logprobs", "finish_reason"}],
  "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``. ``n`` answers (default 1, at most
  :data:`MAX_CHOICES`) are generated in one batch (:meth:`mmpo.models.chat.ChatModel.generate_n`): choices
  ``0 .. n-1``, usage counting the prompt once and every answer's tokens; ``n > 1`` is for non-streaming
  requests. A ``seed`` makes the answers reproducible. Other OpenAI fields are ignored.

  Limits: prompt tokens + ``max_tokens`` over the model's context is a 400 (as OpenAI and vLLM answer); without
  ``max_tokens`` the answer gets ``min(1024, what the context leaves)``. Generation stops after the server's
  ``request_timeout`` seconds (504, or for a stream a final chunk with ``finish_reason: "length"`` and an
  ``error`` event) and as soon as the client disconnects (checked every token).

  ``"stream": true``: server-sent events, one ``data: {chat.completion.chunk}`` per piece of text (the first
  carries ``delta.role``, the last an empty delta and the finish_reason, then a usage chunk when
  ``stream_options.include_usage``), ending with ``data: [DONE]``. The pieces join to the text a plain request
  returns. ``logprobs`` is served for plain requests only.

Reward model endpoints (``mmpo serve --model RM_DIR``); rewards are read exactly as training and
``mmpo eval pairs`` read them (:class:`mmpo.graders.reward_model.RewardModelGrader`):

* ``POST /v1/score`` (also ``/score``), vLLM's shape: ``{"model", "text_1": PROMPT | [PROMPTS],
  "text_2": RESPONSE | [RESPONSES]}``: one prompt against many responses, or equal-length lists paired
  in order; each pair is the chat ``[user: text_1, assistant: text_2]``. Answers ``{"id", "object": "list",
  "created", "model", "data": [{"index", "object": "score", "score"}], "usage": {"prompt_tokens",
  "total_tokens"}}``.
* ``POST /pooling`` (also ``/v1/pooling``): ``{"messages": [...]}`` (one conversation ending with the
  assistant's answer) or ``{"input": [conversation, ...]}``; answers ``{"id", "object": "list", "created",
  "model", "data": [{"index", "object": "pooling", "data": [reward]}], "usage"}``.
* ``/v1/chat/completions`` on a reward model is a 400 that names these endpoints.

Runtime LoRA adapters (a chat model served with ``enable_lora``, ``mmpo serve --enable-lora``), vLLM's
endpoints and answers (:mod:`mmpo.serving.adapters`):

* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: attach the peft LoRA adapter directory
  ``lora_path`` (a path on the server) under the model id ``lora_name``; 200 with the plain text
  ``Success: LoRA adapter 'NAME' added successfully.``; 400 when the name is taken (or is the base model's),
  the directory is no LoRA adapter or does not fit the base model; 404 when the directory does not exist.
* ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: detach it (200, ``... removed successfully.``; 404 for
  a name not loaded).
* A request whose ``model`` is an adapter's id runs with that adapter and answers with that id as ``model``.
  Without ``enable_lora`` both endpoints are a 404 that names the flag.

Both: the ``model`` field of a POST body must be the served name (``--served-model-name``, else the folder
name; for a LoRA adapter also the adapter folder's name), a loaded adapter's id, or absent; any other name is
a 404 with code ``model_not_found``, as OpenAI and vLLM answer. ``GET /v1/models`` (the base model with
``parent`` null, then each loaded adapter with ``parent`` = the base model's id and ``root`` = its path, as
vLLM lists them), ``GET /health``
(``{"status": "ok", "model", "kind"}`` once loaded; the server listens only after that). On shutdown
``mmpo serve`` prints how many requests it answered, and how many of them were errors.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request,
401 for a wrong API key (when the server was started with one), 404 for an unknown path, 413 for a body
over :data:`MAX_BODY_BYTES`, 500 when the model fails, 504 past the time limit. Requests are handled on
threads but the model runs one request at a time (the adapters' lock, held from choosing the adapter to the
last token).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mmpo.models.chat import ChatModel, ContextOverflow, PromptTooLong, check_messages
from mmpo.serving.adapters import AdapterError, LoraAdapters

MAX_BODY_BYTES = 10 * 1024 * 1024
# OpenAI's defaults where a request leaves a field out (max_tokens: a bound, cut to what the context leaves).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 1024
DEFAULT_REQUEST_TIMEOUT = 600.0
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_CHOICES = 128  # OpenAI's limit on n


class RequestError(Exception):
    """A client error that becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.code: int | str = code or status


def _number(body: dict[str, Any], key: str, default: Any, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise RequestError(400, f"'{key}' must be {'an integer' if integer else 'a number'}", key)
    if not lo <= value <= hi:
        raise RequestError(400, f"'{key}' must be between {lo} and {hi}", key)
    return int(value) if integer else float(value)


def parse_chat_request(body: Any) -> dict[str, Any]:
    """Validated generation arguments from a chat-completions body; raises :class:`RequestError` (400).

    ``max_new_tokens`` is None when the request gives no limit; ``strict_length`` is True when it does (then
    prompt + limit over the context is an error rather than a silent cut). ``n`` (answers, 1 when absent),
    ``stream`` and ``include_usage`` are for the server, the rest for :meth:`ChatModel.generate`.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object", "stream_options")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RequestError(400, "'n' must be a positive integer", "n")
    n = n or 1
    if n > MAX_CHOICES:
        raise RequestError(400, f"'n' must be at most {MAX_CHOICES}", "n")
    if n > 1 and stream:
        raise RequestError(400, "n > 1 is served for non-streaming requests only", "n")
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
    want_logprobs = body.get("logprobs", False)
    if not isinstance(want_logprobs, bool):
        raise RequestError(400, "'logprobs' must be true or false", "logprobs")
    top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
    if top and not want_logprobs:
        raise RequestError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    if want_logprobs and stream:
        raise RequestError(400, "logprobs are served for non-streaming requests only", "logprobs")
    max_new = _number(body, max_key, None, 1, 10_000_000, integer=True)
    return {
        "messages": messages,
        "temperature": _number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, 2.0),
        "top_p": _number(body, "top_p", DEFAULT_TOP_P, 1e-9, 1.0),
        "max_new_tokens": max_new if max_new is not None else DEFAULT_MAX_TOKENS,
        "strict_length": max_new is not None,
        "max_key": max_key,
        "seed": seed,
        "stop": stop,
        "logprobs": top if want_logprobs else None,
        "n": n,
        "stream": stream,
        "include_usage": bool(options.get("include_usage")),
    }


def _text_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise RequestError(400, f"'{name}' must be a string or a non-empty list of strings", name)


def parse_score_request(body: Any) -> list[tuple[list[dict[str, str]], str]]:
    """``(prompt messages, response)`` per pair from a vLLM-style score body (``text_1`` against ``text_2``)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    first, second = _text_list(body.get("text_1"), "text_1"), _text_list(body.get("text_2"), "text_2")
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise RequestError(400, f"text_1 has {len(first)} items and text_2 {len(second)}: give one text_1 or equal lengths", "text_2")
    return [([{"role": "user", "content": a}], b) for a, b in zip(first, second)]


def parse_pooling_request(body: Any) -> list[tuple[list[dict[str, str]], str]]:
    """``(prompt messages, response)`` per conversation from ``{"messages": [...]}`` or ``{"input": [[...], ...]}``;
    each conversation ends with the assistant's answer."""
    from mmpo.data.pairs import split_conversation

    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if body.get("messages") is not None:
        conversations, param = [body["messages"]], "messages"
    elif isinstance(body.get("input"), list) and body["input"] and all(isinstance(c, list) for c in body["input"]):
        conversations, param = body["input"], "input"
    else:
        raise RequestError(400, "give 'messages' (one conversation) or 'input' (a list of conversations)", "messages")
    out = []
    for i, conv in enumerate(conversations):
        try:
            messages = check_messages(conv)
        except ValueError as e:
            raise RequestError(400, f"{param}[{i}]: {e}" if param == "input" else str(e), param) from None
        prompt, answer = split_conversation(messages)
        if not answer or not prompt:
            raise RequestError(400, f"{param}{f'[{i}]' if param == 'input' else ''}: a conversation must end with the assistant's answer to a prompt", param)
        out.append((prompt, "\n\n".join(m["content"] for m in answer)))
    return out


class ChatServer(ThreadingHTTPServer):
    """A threading HTTP server holding the one model it serves: a :class:`ChatModel` (``chat_model``) or a
    reward model grader (``reward``, a :class:`mmpo.graders.reward_model.RewardModelGrader`).

    ``model_names`` are the ids of the base model a request's ``model`` field may give: ``model_name`` and any
    ``aliases``; a chat server's ``adapters`` (:class:`LoraAdapters`, loadable when ``enable_lora``) add one id
    each. ``root`` is the base model's path or hub id, listed by ``GET /v1/models``. ``requests_served`` counts every request answered (any status), ``requests_failed`` those answered
    with a status of 400 or more or never answered (client gone).
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        chat_model: ChatModel | None = None,
        api_key: str | None = None,
        quiet: bool = False,
        reward: Any = None,
        name: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        aliases: tuple[str, ...] = (),
        enable_lora: bool = False,
        root: str | None = None,
    ):
        if (chat_model is None) == (reward is None):
            raise ValueError("serve exactly one model: a chat model or a reward model")
        if enable_lora and chat_model is None:
            raise ValueError("LoRA adapters are served on a chat model only")
        super().__init__(address, ChatHandler)
        self.chat_model = chat_model
        self.reward = reward
        self.model_name = name or (chat_model.name if chat_model is not None else "reward-model")
        self.model_names = (self.model_name, *(a for a in aliases if a != self.model_name))
        self.root = root
        self.adapters = LoraAdapters(chat_model, enabled=enable_lora) if chat_model is not None else None
        self.api_key = api_key
        self.quiet = quiet
        self.request_timeout = request_timeout
        self.created = int(time.time())
        self.requests_served = 0
        self.requests_failed = 0
        self._count_lock = threading.Lock()
        self.reward_lock = threading.Lock()

    def record_request(self, status: int | None) -> None:
        """Count one handled request; ``status`` is the HTTP status sent, None when none was."""
        with self._count_lock:
            self.requests_served += 1
            if status is None or status >= 400:
                self.requests_failed += 1

    def request_summary(self) -> str:
        """``"7 requests (3 ok, 4 errors)"``: what the server answered since it started."""
        ok = self.requests_served - self.requests_failed
        return f"{self.requests_served} request{'s' if self.requests_served != 1 else ''} ({ok} ok, {self.requests_failed} errors)"

    def check_model(self, body: Any) -> str | None:
        """The LoRA adapter ``body["model"]`` names, None for the base model (or no ``model`` field); a 404
        (``model_not_found``) when it names a model this server does not serve."""
        model = body.get("model") if isinstance(body, dict) else None
        if model is None or model in self.model_names:
            return None
        if not isinstance(model, str):
            raise RequestError(400, "'model' must be a string", "model")
        if self.adapters is not None and model in self.adapters:
            return model
        raise self.model_not_found(model)

    def model_not_found(self, model: str) -> RequestError:
        """The 404 (``model_not_found``) for a request naming ``model``, listing what is served."""
        names = [*self.model_names, *(a.name for a in self.adapters.listed())] if self.adapters is not None else self.model_names
        served = " or ".join(repr(n) for n in names)
        return RequestError(404, f"the model {model!r} does not exist; this server serves {served}", "model", kind="not_found_error", code="model_not_found")

    def model_cards(self) -> list[dict[str, Any]]:
        """``GET /v1/models``'s ``data``: the base model (with ``max_model_len``, its context, for a chat model),
        then each LoRA adapter with ``parent`` = the base model's id and ``root`` = its path, as vLLM's model
        cards give them."""
        base: dict[str, Any] = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "mmpo",
                                "root": self.root, "parent": None}
        if self.chat_model is not None:
            base["max_model_len"] = self.chat_model.max_positions
        cards = [base]
        if self.adapters is not None:
            cards += [{"id": a.name, "object": "model", "created": a.created, "owned_by": "mmpo", "root": a.path,
                       "parent": self.model_name} for a in self.adapters.listed()]
        return cards

    @property
    def kind(self) -> str:
        return "chat" if self.chat_model is not None else "reward"

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8000/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class ClientGone(Exception):
    """The client closed the connection while its answer was being generated."""


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"
    _status: int | None = None  # the status sent for the current request, None until one is

    # --- plumbing ---------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        if not self.server.quiet:
            sys.stderr.write(f"mmpo serve: {self.address_string()} {format % args}\n")

    def send_response(self, code: int, message: str | None = None) -> None:
        # Counted as the status line goes out, so a client that has its answer sees it counted.
        if self._status is None:
            self._status = code
            self.server.record_request(code)
        super().send_response(code, message)

    def parse_request(self) -> bool:
        self._status = None  # one handler serves every request of a keep-alive connection
        return super().parse_request()

    def _counted(self, handle: Any) -> None:
        """Run ``handle()``; a request that ends with no response sent (the client left) is counted as failed."""
        try:
            handle()
        finally:
            if self._status is None:
                self.server.record_request(None)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: RequestError) -> None:
        self._send_json(err.status, {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}})

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

    def _client_gone(self) -> bool:
        """True once the client has closed its end (the socket reads as end-of-file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # --- endpoints --------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        self._counted(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._counted(self._post)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/health":
                self._send_json(200, {"status": "ok", "model": self.server.model_name, "kind": self.server.kind})
                return
            self._check_auth()
            if path == "/v1/models":
                self._send_json(200, {"object": "list", "data": self.server.model_cards()})
                return
            raise RequestError(404, f"no such endpoint: GET {path}", kind="not_found_error")
        except RequestError as e:
            self._send_error(e)

    def _post(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            # Read the body first, whatever happens next, so a keep-alive connection stays in step.
            raw = self._read_body()
            self._check_auth()
            if path == "/v1/chat/completions":
                if self.server.kind != "chat":
                    raise RequestError(400, "this server serves a reward model: POST /v1/score (vLLM score API) or /pooling instead")
                body = self._parse_json(raw)
                self._chat(body, self.server.check_model(body))
            elif path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                if self.server.adapters is None:
                    raise RequestError(400, f"{path} needs a chat model; this server serves a reward model")
                self._adapter_request(path.endswith("/load_lora_adapter"), self._parse_json(raw))
            elif path in ("/v1/score", "/score", "/pooling", "/v1/pooling"):
                if self.server.kind != "reward":
                    raise RequestError(400, f"{path} needs a reward model; this server serves a chat model (/v1/chat/completions)")
                body = self._parse_json(raw)
                self.server.check_model(body)
                pooling = path.endswith("pooling")
                self._score(parse_pooling_request(body) if pooling else parse_score_request(body), "pooling" if pooling else "score")
            else:
                raise RequestError(404, f"no such endpoint: POST {path}", kind="not_found_error")
        except RequestError as e:
            self._send_error(e)

    def _score(self, pairs: list[tuple[list[dict[str, str]], str]], kind: str) -> None:
        from mmpo.graders.base import ScoreItem

        grader = self.server.reward
        try:
            with self.server.reward_lock:
                tokens = sum(grader.token_count(prompt, response) for prompt, response in pairs)
                scores = grader.score([ScoreItem(prompt, response) for prompt, response in pairs])
        except Exception as e:  # noqa: BLE001 - a scoring failure is the server's fault, reported as 500
            from mmpo.errors import UserError

            if isinstance(e, UserError):
                raise RequestError(400, str(e)) from None
            raise RequestError(500, f"scoring failed: {type(e).__name__}: {e}", kind="server_error") from None
        data = [{"index": i, "object": kind, **({"score": s} if kind == "score" else {"data": [s]})} for i, s in enumerate(scores)]
        self._send_json(200, {
            "id": f"{kind}-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": self.server.model_name,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        })

    def _adapter_request(self, load: bool, body: Any) -> None:
        """vLLM's runtime LoRA endpoints: ``{"lora_name", "lora_path"}`` loads an adapter, ``{"lora_name"}``
        unloads one; success is a 200 with vLLM's plain-text line ``Success: LoRA adapter 'NAME' added
        successfully.`` (``removed`` for an unload)."""
        adapters = self.server.adapters
        if not adapters.enabled:
            raise RequestError(404, "loading LoRA adapters at runtime is off: start mmpo serve with --enable-lora", kind="not_found_error")
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not (isinstance(name, str) and name):
            raise RequestError(400, "Both 'lora_name' and 'lora_path' must be provided." if load else "'lora_name' must be provided.", "lora_name")
        if load and not (isinstance(path, str) and path):
            raise RequestError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_path")
        if load and name in self.server.model_names:
            raise RequestError(400, f"'{name}' is the base model's id; load the adapter under another name", "lora_name")
        try:
            if load:
                adapters.load(name, path)
            else:
                adapters.unload(name)
        except AdapterError as e:
            raise RequestError(e.status, e.message, e.param, kind="not_found_error" if e.status == 404 else "invalid_request_error") from None
        self.log_message("LoRA adapter %r %s", name, f"loaded from {path}" if load else "unloaded")
        data = f"Success: LoRA adapter '{name}' {'added' if load else 'removed'} successfully.".encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body: Any, adapter: str | None) -> None:
        """Answer a chat-completions request with the base model (``adapter`` None) or the LoRA adapter named."""
        request = parse_chat_request(body)
        stream, include_usage, max_key = request.pop("stream"), request.pop("include_usage"), request.pop("max_key")
        n = request.pop("n")
        model_id = adapter or self.server.model_name
        deadline = time.monotonic() + self.server.request_timeout
        chat_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        started = {"yes": False}

        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
            return {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

        def send_event(payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            try:
                self.wfile.write(f"data: {data}\n\n".encode("utf-8"))
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                raise ClientGone from None

        def start_stream() -> None:
            if not started["yes"]:
                started["yes"] = True
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                send_event(chunk({"role": "assistant", "content": ""}, None))

        def on_text(piece: str) -> None:
            start_stream()
            send_event(chunk({"content": piece}, None))

        chat = self.server.chat_model
        try:
            with self.server.adapters.using(adapter):
                choices = chat.generate_n(n=n, **request, deadline=deadline, cancelled=self._client_gone,
                                          on_text=on_text if stream else None)
        except AdapterError:  # unloaded while this request waited for the model
            raise self.server.model_not_found(adapter or "") from None
        except ContextOverflow as e:
            raise RequestError(400, str(e), max_key) from None
        except PromptTooLong as e:
            raise RequestError(400, str(e), "messages") from None
        except ClientGone:
            self.close_connection = True
            self.log_message("client disconnected; generation stopped")
            return
        except Exception as e:  # a generation failure is the server's fault, reported as 500
            if started["yes"]:
                self._stream_error(send_event, f"generation failed: {type(e).__name__}: {e}", 500)
                return
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from None
        if any(c.finish_reason == "cancelled" for c in choices):
            self.close_connection = True
            self.log_message("client disconnected; generation stopped after %d tokens", sum(c.completion_tokens for c in choices))
            return
        # The prompt is counted once, the completions all together (OpenAI's and vLLM's usage for n > 1).
        prompt_tokens, completion_tokens = choices[0].prompt_tokens, sum(c.completion_tokens for c in choices)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        timed_out = any(c.finish_reason == "timeout" for c in choices)
        if stream:
            try:
                start_stream()
                send_event(chunk({}, "length" if timed_out else choices[0].finish_reason))
                if timed_out:
                    self._stream_error(send_event, self._timeout_message(), 504, done=False)
                if include_usage:
                    payload = chunk({}, None, usage=usage)
                    payload["choices"] = []
                    send_event(payload)
                send_event("[DONE]")
            except ClientGone:
                self.close_connection = True
            return
        if timed_out:
            raise RequestError(504, self._timeout_message(), kind="timeout_error")
        answers = [{"index": i, "message": {"role": "assistant", "content": c.text},
                    "logprobs": None if c.logprobs is None else {"content": c.logprobs}, "finish_reason": c.finish_reason}
                   for i, c in enumerate(choices)]
        self._send_json(200, {"id": chat_id, "object": "chat.completion", "created": created, "model": model_id,
                              "choices": answers, "usage": usage})

    def _timeout_message(self) -> str:
        return f"generation stopped at the server's time limit of {self.server.request_timeout:g} s per request"

    @staticmethod
    def _stream_error(send_event: Any, message: str, code: int, done: bool = True) -> None:
        try:
            send_event({"error": {"message": message, "type": "server_error" if code >= 500 else "invalid_request_error", "param": None, "code": code}})
            if done:
                send_event("[DONE]")
        except ClientGone:
            pass


def make_server(
    chat_model: ChatModel | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    quiet: bool = False,
    reward: Any = None,
    name: str | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    aliases: tuple[str, ...] = (),
    enable_lora: bool = False,
    root: str | None = None,
) -> ChatServer:
    """A bound (not yet serving) server for a chat model or a reward model grader; ``port=0`` picks a free
    port, readable from ``server.url``. ``aliases``: more ids a request's ``model`` may give. ``enable_lora``:
    accept ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (a chat model only). ``root``: the
    base model's path, listed by ``GET /v1/models``."""
    return ChatServer((host, port), chat_model, api_key=api_key, quiet=quiet, reward=reward, name=name,
                      request_timeout=request_timeout, aliases=aliases, enable_lora=enable_lora, root=root)
