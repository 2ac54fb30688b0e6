"""Samplers for `mmpo online`: where a round's answers come from.

A :class:`Sampler` answers batches of prompts with ``n`` samples each and hands every finished batch to a
callback (the round appends it to ``samples.jsonl`` at once, so a rerun continues). ``use(name, path)`` says
which policy answers next.

* :class:`InProcessSampler`: Hugging Face ``generate`` in the training process
  (:func:`mmpo.models.chat.generate_batch`), one seeded call per batch of ``generation_batch_size`` prompts.
* :class:`ServerSampler`: one or more OpenAI-compatible servers (vLLM, ``mmpo serve``). Every prompt is one
  ``POST /v1/chat/completions`` with ``model`` (the base model's served name or a LoRA adapter's), ``messages``,
  ``n``, ``temperature``, ``top_p``, ``max_tokens`` and a per-prompt ``seed``, so an answer does not depend on
  which server gave it (where the server honours ``seed``). Each server has ``concurrency`` requests in flight,
  taking prompts first-free from one queue. Requests go through :class:`mmpo.evaluation.judge_client.JudgeClient`
  and its retry policy (timeouts and 5xx retried with backoff; a refused connection fails at once). A server
  that still fails is marked down and its prompt goes back to the queue for the others; when every server is
  down the run stops with one line naming each URL and what failed, and what was finished stays on disk. A
  request refused for itself (HTTP 4xx other than 401, 403, 404, 408 and 429, e.g. 400 for a prompt plus
  ``max_tokens`` over the context) marks no server down: the run stops with one line naming the prompt, the URL
  and the server's message.

  A policy that is a LoRA adapter is loaded at run time (vLLM: ``--enable-lora`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``
  on every live server that does not list it in ``GET /v1/models``; the adapter used before is unloaded
  (``POST /v1/unload_lora_adapter`` ``{"lora_name"}``) once another takes its place.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mmpo.data.records import Message
from mmpo.errors import UserError
from mmpo.evaluation.judge_client import JudgeClient, JudgeConfigError, JudgeRequestError, api_key_from_env, base_url

# on_batch(index into ``batches``, answers[prompt][sample]) is called once per finished batch.
BatchDone = Callable[[int, list[list[str]]], None]


@dataclass(frozen=True)
class SamplingSettings:
    """What every answer of one ``sample`` call is drawn with."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int


class Sampler(Protocol):
    """Answers prompts with the policy named by the last :meth:`use`."""

    batch_size: int  # prompts per batch: the unit of work a rerun keeps or redoes

    def use(self, name: str, path: str | None) -> None:
        """Answer with the policy ``name`` from now on; ``path`` is its directory (None: the base model)."""

    def sample(self, batches: Sequence[Sequence[list[Message]]], seeds: Sequence[int], settings: SamplingSettings,
               on_batch: BatchDone, desc: str = "sample") -> None:
        """``settings.n`` answers to every prompt of each batch, ``seeds[b]`` seeding batch ``b``;
        ``on_batch(b, answers)`` as each batch finishes (in any order)."""


class InProcessSampler:
    """Hugging Face ``generate`` in this process; each batch is one :func:`generate_batch` call seeded with its seed."""

    def __init__(self, batch_size: int, autocast_dtype: Any = None):
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.path: str | None = None

    def use(self, name: str, path: str | None) -> None:
        self.path = path or name

    def sample(self, batches: Sequence[Sequence[list[Message]]], seeds: Sequence[int], settings: SamplingSettings,
               on_batch: BatchDone, desc: str = "sample") -> None:
        if not batches:
            return
        from tqdm.auto import tqdm

        from mmpo.models.chat import ChatModel, generate_batch

        assert self.path is not None, "use() names the policy before sample()"
        chat = ChatModel.load(self.path)
        for b in tqdm(range(len(batches)), desc=desc, unit="batch", disable=None):
            on_batch(b, generate_batch(chat, list(batches[b]), settings.n, max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, top_p=settings.top_p, seed=seeds[b],
                                       autocast_dtype=self.autocast_dtype))
        del chat


class ServerDown(Exception):
    """A server failed for good; the message says how, ``status`` the HTTP status of its answer (None: none)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# 4xx answers that say something about the server (key, model name, load) rather than about the one request.
SERVER_STATUS = frozenset({401, 403, 404, 408, 429})


class PromptRejected(Exception):
    """A server refused one request for what it holds (HTTP 4xx outside :data:`SERVER_STATUS`, e.g. 400 for a
    prompt plus ``max_tokens`` over the context): every server would refuse it, so no server is marked down."""


class Server:
    """One OpenAI-compatible server: chat requests through a :class:`JudgeClient`, adapter calls beside them."""

    def __init__(self, url: str, retries: int, timeout: float, api_key: str | None = None):
        self.base = base_url(url)
        self.client = JudgeClient(self.base + "/v1", model="", api_key=api_key, max_retries=retries, timeout=timeout)
        self.timeout = timeout
        self.api_key = api_key
        self.down: str | None = None  # why it was marked down

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> tuple[int, str]:
        """``(status, body)`` of one plain request (vLLM answers adapter calls with text, not JSON)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            raise ServerDown(f"{self.base}: {getattr(e, 'reason', e)}") from None

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``'s ``data``."""
        status, body = self._call("GET", "/v1/models")
        if status != 200:
            raise ServerDown(f"{self.base}/v1/models answered HTTP {status}: {body[:200]}")
        try:
            return list(json.loads(body)["data"])
        except (ValueError, KeyError, TypeError):
            raise ServerDown(f"{self.base}/v1/models: not an OpenAI model list: {body[:200]}") from None

    def lists(self, name: str, path: str | None = None) -> bool:
        """True when the server lists ``name`` (and, with ``path``, its model card's ``root`` is ``path``)."""
        return any(m.get("id") == name and (path is None or m.get("root") == path) for m in self.models())

    def load_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter at ``path`` as ``name`` unless the server lists it already from ``path`` (listed
        from another path, it is unloaded and loaded again); a refusal that leaves it unlisted (no runtime LoRA,
        unreadable path) raises :class:`ServerDown` with the server's words."""
        if self.lists(name, path):
            return
        if self.lists(name):
            self.unload_adapter(name)  # a stale adapter under this name: serve the weights at ``path``
        status, body = self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        # "already loaded" (400) counts as loaded when the server lists it.
        if not self.lists(name, path):
            raise ServerDown(f"{self.base}/v1/load_lora_adapter {name} from {path}: HTTP {status}: {body.strip()[:200]} "
                             "(vLLM needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and the path must be "
                             "readable where the server runs)")

    def unload_adapter(self, name: str) -> None:
        """Unload ``name``; one that is not loaded is left as it is."""
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def complete(self, payload: dict[str, Any], n: int) -> list[str]:
        """The ``n`` answers' texts in choice order; :class:`ServerDown` when the server fails for good,
        :class:`PromptRejected` when it refuses this request (see :data:`SERVER_STATUS`)."""
        try:
            data = self.client.request(payload)
        except (JudgeConfigError, JudgeRequestError) as e:
            if e.status is not None and 400 <= e.status < 500 and e.status not in SERVER_STATUS:
                raise PromptRejected(f"{self.base} answered {e}") from None
            raise ServerDown(f"{self.base}: {e}", status=e.status) from None
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else 0
            raise ServerDown(f"{self.base}: answered {got} choices for n = {n}")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        try:
            texts = [c["message"]["content"] for c in choices]
        except (KeyError, TypeError):
            raise ServerDown(f"{self.base}: a choice has no message.content") from None
        return [t.strip() if isinstance(t, str) else "" for t in texts]


class ServerSampler:
    """Prompts spread over OpenAI-compatible servers (see the module docstring); ``model`` is the base model's
    served name (None: the first model each server lists that is no adapter)."""

    batch_size = 1

    def __init__(self, urls: Sequence[str], model: str | None = None, concurrency: int = 4, retries: int = 2,
                 timeout: float = 300.0, api_key: str | None = None, adapter_prefix: str | None = None):
        self.servers = [Server(u, retries, timeout, api_key or api_key_from_env()) for u in urls]
        # Adapters named with this prefix belong to this run: use() unloads those it does not answer with.
        self.adapter_prefix = adapter_prefix
        self.concurrency = concurrency
        self.base_model = model
        self.model: str | None = None  # the served name requests use
        self.adapters: dict[str, str] = {}  # adapter name -> path, of adapters this sampler loaded

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.down is None]

    def _all_down(self) -> UserError:
        why = "; ".join(f"{s.down}" for s in self.servers)
        return UserError(f"every sampling server failed ({why}); finished prompts are kept: rerun the same command "
                         "once a server answers (sampler_urls may name other servers)")

    def _each_live(self, action: Callable[[Server], None]) -> None:
        for s in self.live():
            try:
                action(s)
            except ServerDown as e:
                s.down = str(e)
        if not self.live():
            raise self._all_down()

    def _base_name(self) -> str:
        if self.base_model is None:
            names: set[str] = set()

            def read(s: Server) -> None:
                bases = [m.get("id") for m in s.models() if not m.get("parent")]
                if not bases:
                    raise ServerDown(f"{s.base}/v1/models lists no base model")
                names.add(str(bases[0]))

            self._each_live(read)
            if len(names) > 1:
                raise UserError(f"sampler_urls serve different models ({', '.join(sorted(names))}): set sampler_model")
            self.base_model = names.pop()
        return self.base_model

    def use(self, name: str, path: str | None) -> None:
        """Answer with the base model (``path`` None) or the LoRA adapter at ``path`` loaded as ``name`` on every
        live server; the adapter used before, and any other adapter a server lists whose name starts with
        ``adapter_prefix``, is unloaded."""
        previous = self.model
        if path is None:
            self.model = self._base_name()
        else:
            self._each_live(lambda s: s.load_adapter(name, path))
            self.adapters[name] = path
            self.model = name
        stale = {previous} if previous is not None and previous != self.model and previous in self.adapters else set()
        for s in self.live():
            try:
                others = set(stale)
                if self.adapter_prefix:
                    # A run's own adapters left from before a rerun (this process never loaded them) go too.
                    others |= {str(m.get("id")) for m in s.models()
                               if m.get("parent") and str(m.get("id")).startswith(self.adapter_prefix)}
                others.discard(self.model)
                for old in others:
                    s.unload_adapter(old)
            except ServerDown:
                pass  # a server that cannot be reached holds nothing to unload
        for old in stale:
            del self.adapters[old]

    def _reload(self, server: Server) -> bool:
        """Load the current adapter again on ``server`` (it restarted and lost it); True when it worked."""
        if self.model not in self.adapters:
            return False
        try:
            server.load_adapter(self.model, self.adapters[self.model])
        except ServerDown:
            return False
        return True

    def sample(self, batches: Sequence[Sequence[list[Message]]], seeds: Sequence[int], settings: SamplingSettings,
               on_batch: BatchDone, desc: str = "sample") -> None:
        """Every batch's prompts answered (one request per prompt), first-free over the live servers."""
        if not batches:
            return
        from tqdm.auto import tqdm

        assert self.model is not None, "use() names the policy before sample()"
        work: queue.Queue[int] = queue.Queue()
        for b in range(len(batches)):
            work.put(b)
        state = {"left": len(batches)}
        lock = threading.Lock()
        failed: list[BaseException] = []
        bar = tqdm(total=len(batches), desc=desc, unit="prompt", disable=None)

        def answer(server: Server, b: int) -> list[list[str]]:
            out = []
            for j, messages in enumerate(batches[b]):
                payload = {"model": self.model, "messages": list(messages), "n": settings.n,
                           "temperature": settings.temperature, "top_p": settings.top_p,
                           "max_tokens": settings.max_new_tokens, "seed": (seeds[b] + j) % 2**31}
                try:
                    try:
                        out.append(server.complete(payload, settings.n))
                    except ServerDown as e:
                        # A server that restarted has lost the adapter (404 for its name): load it again, try once more.
                        if e.status == 404 and self._reload(server):
                            out.append(server.complete(payload, settings.n))
                        else:
                            raise
                except PromptRejected as e:
                    words = " ".join(str(messages[-1].get("content", "")).split()[:8]) if messages else ""
                    raise UserError(f"{desc}: the prompt {words!r}... was refused: {e}; "
                                    "every server would refuse it: shorten or remove it, or lower max_new_tokens "
                                    "(prompts answered so far are kept)") from None
            return out

        def worker(server: Server) -> None:
            while True:
                with lock:
                    if failed or not state["left"] or server.down is not None:
                        return
                try:
                    b = work.get(timeout=0.05)
                except queue.Empty:
                    continue
                try:
                    texts = answer(server, b)
                except ServerDown as e:
                    with lock:
                        server.down = str(e)
                    work.put(b)  # the others take it
                    return
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
                    with lock:
                        failed.append(e)
                    return
                try:
                    with lock:
                        on_batch(b, texts)
                        state["left"] -= 1
                    bar.update(1)
                except BaseException as e:  # noqa: BLE001
                    with lock:
                        failed.append(e)
                    return

        threads = [threading.Thread(target=worker, args=(s,), daemon=True)
                   for s in self.live() for _ in range(max(1, self.concurrency))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bar.close()
        if failed:
            raise failed[0]
        if state["left"]:
            raise self._all_down()
