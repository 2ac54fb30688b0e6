"""A small client for any OpenAI-compatible ``/v1/chat/completions`` endpoint (stdlib ``urllib`` only),
used by the MT-bench judge.

Retries: a request that fails with a network error, a timeout, or HTTP 408 / 409 / 429 / 5xx is retried up
to ``max_retries`` times, waiting ``min(backoff_max, backoff_base * 2**attempt)`` seconds before retry
``attempt + 1`` (or the server's ``Retry-After`` seconds when it sends one, capped the same way).
Other answers are not retried: 401 / 403 / 404 mean the endpoint, key or model name is wrong for every
request, and a refused connection (nothing listens at the URL) or a host name that does not resolve means the
URL is wrong, so these raise :class:`JudgeConfigError` at once; any other HTTP error (e.g. 400 for an
over-long prompt) raises :class:`JudgeRequestError` for that one request.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from mmpo.errors import UserError

RETRY_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = frozenset({401, 403, 404})
API_KEY_ENV = ("MMPO_JUDGE_API_KEY", "OPENAI_API_KEY")


class JudgeRequestError(Exception):
    """One request failed for good (retries exhausted, or a non-retryable answer); ``status`` is the HTTP status
    of a non-retryable answer (None otherwise)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class JudgeConfigError(UserError):
    """The endpoint refuses every request (bad URL, API key or model): stop instead of failing each one;
    ``status`` is the HTTP status (None for a refused connection or unknown host)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def chat_completions_url(url: str) -> str:
    """The full chat-completions URL from a base (``http://h:p``, ``http://h:p/v1``) or the full URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/chat/completions"


def base_url(url: str) -> str:
    """``http://host:port`` from ``http://host:port``, ``.../v1`` or ``.../v1/chat/completions``."""
    url = url.strip().rstrip("/")
    for tail in ("/chat/completions", "/v1"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    return url


def parse_urls(value: Any, key: str) -> list[str]:
    """A list of ``http(s)://`` URLs from a list or a comma-separated string (one-line UserError naming ``key``)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [str(u).strip() for u in items if str(u).strip()]
    if not urls:
        raise UserError(f"{key}: give at least one URL (a list, or URLs separated by commas)")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise UserError(f"{key}: {u!r} is not a URL: write http://HOST:PORT (or .../v1)")
    if len(set(map(base_url, urls))) != len(urls):
        raise UserError(f"{key}: a URL is given twice ({', '.join(urls)})")
    return urls


def api_key_from_env() -> str | None:
    """``$MMPO_JUDGE_API_KEY`` if set, else ``$OPENAI_API_KEY``, else None (no Authorization header)."""
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


class JudgeClient:
    """Sends chat requests to one model behind an OpenAI-compatible endpoint and returns the answer text."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"judge URL must start with http:// or https://, got {url!r}")
        self.url = chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.sleep = sleep
        self.requests_sent = 0  # HTTP attempts, retries included
        self.retries = 0

    def backoff(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after:
            try:
                return min(self.backoff_max, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date instead of seconds: use our own schedule
        return min(self.backoff_max, self.backoff_base * 2**attempt)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
        self.requests_sent += 1
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def complete(self, messages: list[dict[str, str]], temperature: float = 0.0, max_tokens: int = 2048) -> str:
        """The assistant message content for ``messages``; raises :class:`JudgeRequestError` when the request
        fails for good and :class:`JudgeConfigError` when the endpoint rejects the key, model or URL."""
        data = self.request({"messages": messages, "temperature": temperature, "max_tokens": max_tokens})
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"response has no choices[0].message.content: {str(data)[:200]}") from None
        if not isinstance(content, str):
            raise JudgeRequestError("choices[0].message.content is not a string")
        return content

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The decoded JSON answer to ``payload`` (``model`` is added), with the retries described above."""
        payload = {"model": self.model, **payload}
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                data = self._post(payload)
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code in FATAL_STATUS:
                    raise JudgeConfigError(f"judge endpoint {self.url} answered HTTP {e.code}: {detail}", status=e.code) from None
                if e.code not in RETRY_STATUS and e.code < 500:
                    raise JudgeRequestError(f"HTTP {e.code}: {detail}", status=e.code) from None
                last_problem, retry_after = f"HTTP {e.code}: {detail}", e.headers.get("Retry-After")
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
                    what = "refused the connection" if isinstance(reason, ConnectionRefusedError) else "has a host name that does not resolve"
                    raise JudgeConfigError(f"judge endpoint {self.url} {what}: is the server running, and is the URL right?") from None
                last_problem = f"{type(e).__name__}: {reason}"
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                # A proxy or overloaded server can answer 200 with a truncated body: worth another try.
                last_problem = f"unreadable response ({e})"
            else:
                if not isinstance(data, dict):
                    raise JudgeRequestError(f"response is not a JSON object: {str(data)[:200]}")
                return data
            if attempt < self.max_retries:
                self.retries += 1
                self.sleep(self.backoff(attempt, retry_after))
        raise JudgeRequestError(f"gave up after {self.max_retries + 1} attempts; last: {last_problem}")


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI shape ``{"error": {"message"}}``) or the start of its body."""
    try:
        body = e.read().decode("utf-8", "replace")
    except Exception:  # the body is only for the message; never let it hide the status
        return e.reason if isinstance(e.reason, str) else ""
    try:
        return str(json.loads(body)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return body.strip()[:300] or str(e.reason)


class JudgeClientPool:
    """Requests spread round-robin over several endpoints serving the same model, each a :class:`JudgeClient`
    with its own retries. An endpoint that refuses every request (:class:`JudgeConfigError`: refused connection,
    bad key or model) is left out from then on; a request that fails for good on one endpoint is tried once on
    the next. With every endpoint left out, :class:`JudgeConfigError` names each and why."""

    def __init__(self, clients: list[JudgeClient]):
        if not clients:
            raise UserError("a judge needs at least one URL")
        self.clients = clients
        self.url = ",".join(c.url for c in clients)
        self.model = clients[0].model
        self.down: dict[str, str] = {}
        self._next = 0
        import threading

        self._lock = threading.Lock()

    def _pick(self, skip: JudgeClient | None = None) -> JudgeClient | None:
        with self._lock:
            live = [c for c in self.clients if c.url not in self.down and c is not skip]
            if not live:
                return None
            self._next += 1
            return live[self._next % len(live)]

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The decoded answer from the next live endpoint (see the class docstring)."""
        tried: JudgeClient | None = None
        while True:
            client = self._pick(skip=tried)
            if client is None:
                if tried is not None and tried.url not in self.down:
                    raise JudgeRequestError(f"{tried.url} failed and no other judge endpoint is left to try")
                raise JudgeConfigError("every judge endpoint failed: " + "; ".join(self.down.values()))
            try:
                return client.request(payload)
            except JudgeConfigError as e:
                with self._lock:
                    self.down[client.url] = str(e)
            except JudgeRequestError:
                if tried is not None:
                    raise
                tried = client
