"""An LLM judge over any OpenAI-compatible ``/v1/chat/completions`` endpoint as a grader.

``compare(prompt, a, b)``: the judge sees the conversation and two responses labelled A and B and answers with
one letter. It is asked twice, once with ``a`` as A and once with ``b`` as A, and the two answers are combined
to cancel position bias (``averaging``):

* ``"logit"`` (the default): ``P(a > b) = sigmoid((logit P_A(a, b) - logit P_A(b, a)) / 2)``, each ``P_A``
  clipped to ``[LOGIT_CLIP, 1 - LOGIT_CLIP]`` first;
* ``"probability"``: ``P(a > b) = (P_A(a, b) + 1 - P_A(b, a)) / 2``,

where ``P_A(x, y)`` is the judge's probability of "A" when x is shown as A. A judge whose position bias adds a
constant ``beta`` to the logit of "A" (``logit P_A(a, b) = t + beta``, ``logit P_A(b, a) = -t + beta``) gives
exactly ``sigmoid(t)`` under logit averaging, while probability averaging pulls it toward 0.5 by an amount that
grows with ``beta`` (``t = 1``, ``beta = 1``: 0.690 instead of 0.731). MMPO learns from how far a target lies
from 0.5, so logit averaging is the default. Both give 0.5 for a judge that always says "A". ``P_A`` comes from

* the verdict token's log-probabilities when the endpoint returns them (``logprobs`` / ``top_logprobs``):
  ``P_A = sum_{t ~ "A"} exp(lp_t) / (sum_{t ~ "A"} exp(lp_t) + sum_{t ~ "B"} exp(lp_t))`` over the top
  alternatives at the position where the verdict letter is generated (the "B" of "Response B", the "A" of
  "[[A]]"; tokens compared after stripping blanks and brackets); when that position offers neither letter,
  the verdict read from the text (1 or 0); else the order is missing; or
* repeated verdicts otherwise: ``samples`` requests at ``sample_temperature`` with seeds 0..samples-1, and
  ``P_A`` = the share of parseable verdicts that say A (at least half of them must parse).

``verdict_from="auto"`` asks for log-probabilities first and falls back to repeated verdicts for the rest of
the run when the endpoint returns none. A request that fails after the client's retries (backoff, see
:mod:`mmpo.evaluation.judge_client`), or an answer with no readable verdict, makes that order missing, and a
pair with a missing order is missing (``None``): never a default of 0.5. :attr:`JudgeGrader.stats` counts why.

``score(items)`` asks for a 1-10 rating written as ``[[rating]]`` (temperature 0) and reads it by MT-bench's
rule (:func:`mmpo.evaluation.mtbench.parse_rating`, FastChat's); unparseable or failed -> None.
"""

from __future__ import annotations

import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mmpo.data.records import Message
from mmpo.errors import UserError
from mmpo.evaluation.judge_client import JudgeClient, JudgeClientPool, JudgeRequestError, api_key_from_env, parse_urls
from mmpo.evaluation.mtbench import parse_rating
from mmpo.graders.base import Grader, PairItem, ScoreItem

TEMPLATE_VERSION = "pairwise-v1"
SYSTEM_PAIRWISE = (
    "You are an impartial judge. You compare two responses an AI assistant could give as its next turn in a "
    "conversation and decide which one is better: more helpful, correct, relevant and clear. Length is not a "
    "merit in itself. Reply with a single letter: A if Response A is better, B if Response B is better."
)
SYSTEM_RATING = (
    "You are an impartial judge. Rate the quality of the AI assistant's response to the conversation on a "
    "scale of 1 to 10 (helpfulness, correctness, relevance, clarity). Reply with the rating only, in the "
    "form [[rating]], for example [[7]]."
)
_VERDICT_START = re.compile(r"^[\s\W_]*(?:response\s+)?([AB])(?![A-Za-z])", re.IGNORECASE)
_VERDICT_BRACKETS = re.compile(r"\[\[\s*([AB])\s*\]\]")
_BLANK = " \t\n\r[]()*\"'`.:"
AVERAGING = ("logit", "probability")  # how the two orders are combined; the first is the default
LOGIT_CLIP = 1e-4  # P("A") is clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before logit averaging


def render_conversation(prompt: list[Message]) -> str:
    """The conversation as plain text, one ``Role: content`` block per message."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def pairwise_messages(prompt: list[Message], response_a: str, response_b: str) -> list[Message]:
    """The judge's chat for one order: the conversation, then Response A and Response B."""
    user = (
        f"[Conversation]\n{render_conversation(prompt)}\n\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}\n\n"
        "Which response is better? Reply with one letter: A or B."
    )
    return [{"role": "system", "content": SYSTEM_PAIRWISE}, {"role": "user", "content": user}]


def rating_messages(prompt: list[Message], response: str) -> list[Message]:
    """The judge's chat for rating one response."""
    user = f"[Conversation]\n{render_conversation(prompt)}\n\n[Response]\n{response}\n\nRate the response: [[1]] to [[10]]."
    return [{"role": "system", "content": SYSTEM_RATING}, {"role": "user", "content": user}]


def _locate_verdict(text: str) -> tuple[str, int] | None:
    """The verdict letter of ``text`` and the character offset where it is written (rules: :func:`parse_verdict`)."""
    bracketed = list(_VERDICT_BRACKETS.finditer(text))
    if bracketed:
        letters = {m.group(1) for m in bracketed}
        return (bracketed[0].group(1), bracketed[0].start(1)) if len(letters) == 1 else None
    m = _VERDICT_START.match(text)
    if not m:
        return None
    letter = m.group(1)
    # A lower-case "a" opening a sentence is an article, not a verdict.
    if letter.islower() and text.strip(_BLANK) not in ("a", "b"):
        return None
    return letter.upper(), m.start(1)


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"`` or None from a judge's answer: ``[[A]]`` anywhere (one kind only), or an answer that
    starts with the letter (``A``, ``"B."``, ``Response A``, ``**B** is better``)."""
    found = _locate_verdict(text)
    return None if found is None else found[0]


def verdict_probability_from_logprobs(content: list[dict[str, Any]]) -> float | None:
    """P("A") among the A/B alternatives at the position where the verdict letter is generated, from OpenAI's
    ``choices[0].logprobs.content``.

    The answer is the generated tokens joined; its verdict letter is found as :func:`parse_verdict` finds it,
    and the position is the token that writes that letter. ``P_A = m_A / (m_A + m_B)`` where ``m_X`` sums
    ``exp(logprob)`` over the position's ``top_logprobs`` that read X after stripping blanks and brackets
    (the generated token alone when there are none). None when the answer has no verdict or the position
    offers neither letter."""
    tokens = [str(position.get("token", "")) for position in content]
    found = _locate_verdict("".join(tokens))
    if found is None:
        return None
    offset, end = found[1], 0
    for position, token in zip(content, tokens):
        end += len(token)
        if end > offset:
            break
    alternatives = position.get("top_logprobs") or [{"token": token, "logprob": position.get("logprob")}]
    mass = {"A": 0.0, "B": 0.0}
    for alt in alternatives:
        letter = str(alt.get("token", "")).strip(_BLANK).upper()
        lp = alt.get("logprob")
        if letter in mass and isinstance(lp, (int, float)) and math.isfinite(lp):
            mass[letter] += math.exp(lp)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None


def _logit(p: float) -> float:
    p = min(max(p, LOGIT_CLIP), 1.0 - LOGIT_CLIP)
    return math.log(p / (1.0 - p))


def average_orders(p_first: float, p_second: float, averaging: str = "logit") -> float:
    """P(a > b) from the judge's P("A") with a shown as A (``p_first``) and with b shown as A (``p_second``).

    ``logit``: ``sigmoid((logit p_first - logit p_second) / 2)``, each clipped to
    ``[LOGIT_CLIP, 1 - LOGIT_CLIP]`` (a sampled share of 0 or 1 has no finite logit);
    ``probability``: ``(p_first + 1 - p_second) / 2``. See the module docstring for why logit is the default."""
    if averaging == "probability":
        return (p_first + 1.0 - p_second) / 2.0
    if averaging == "logit":
        return 1.0 / (1.0 + math.exp(-(_logit(p_first) - _logit(p_second)) / 2.0))
    raise UserError(f"judge averaging must be one of {', '.join(AVERAGING)} (got {averaging!r})")


class JudgeGrader(Grader):
    """An LLM judge behind ``url`` (``http://host:port/v1`` or the full chat-completions URL) serving ``model``;
    several URLs (a list, or separated by commas) serving the same model share the requests
    (:class:`~mmpo.evaluation.judge_client.JudgeClientPool`)."""

    kind = "judge"
    compare_from_scores = False

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        verdict_from: str = "auto",
        averaging: str = AVERAGING[0],
        samples: int = 5,
        sample_temperature: float = 1.0,
        top_logprobs: int = 20,
        concurrency: int = 4,
        client: JudgeClient | None = None,
        max_retries: int = 4,
        timeout: float = 120.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if verdict_from not in ("auto", "logprobs", "samples"):
            raise UserError(f"verdict_from must be auto, logprobs or samples (got {verdict_from!r})")
        if averaging not in AVERAGING:
            raise UserError(f"judge averaging must be one of {', '.join(AVERAGING)} (got {averaging!r})")
        if samples < 1:
            raise UserError(f"judge samples must be >= 1 (got {samples})")
        if client is None:
            urls = parse_urls(url, "judge URL")
            clients = [JudgeClient(u, model, api_key=api_key or api_key_from_env(), max_retries=max_retries, timeout=timeout) for u in urls]
            client = clients[0] if len(clients) == 1 else JudgeClientPool(clients)
        self.client = client
        self.model = model
        self.verdict_from = verdict_from
        self.averaging = averaging
        self.samples = samples
        self.sample_temperature = sample_temperature
        self.top_logprobs = top_logprobs
        self.concurrency = max(1, concurrency)
        self.stats = {"requests_failed": 0, "unparseable": 0, "pairs_missing": 0, "logprobs_orders": 0, "sampled_orders": 0}
        self.problems: list[str] = []  # the first few reasons a value went missing, for the report
        self._lock = threading.Lock()
        self._use_logprobs = verdict_from in ("auto", "logprobs")

    @property
    def fingerprint(self) -> str:
        return f"judge:{self.client.url}:{self.model}:{TEMPLATE_VERSION}:{self.verdict_from}:{self.samples}:{self.sample_temperature}:{self.averaging}"

    def _missing(self, what: str, reason: str) -> None:
        with self._lock:
            self.stats[what] += 1
            if len(self.problems) < 20:
                self.problems.append(reason)

    # --- one order --------------------------------------------------------------------------------------

    def _p_first(self, messages: list[Message]) -> float | None:
        """P(the judge says A) for one ordering, or None (counted in ``stats``)."""
        if self._use_logprobs:
            try:
                data = self.client.request(
                    {"messages": messages, "temperature": 0.0, "max_tokens": 4, "logprobs": True, "top_logprobs": self.top_logprobs}
                )
            except JudgeRequestError as e:
                self._missing("requests_failed", str(e))
                return None
            choice = (data.get("choices") or [{}])[0]
            content = (choice.get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
            if content:
                p = verdict_probability_from_logprobs(content)
                if p is None:
                    # Neither letter among the alternatives: fall back to the text before calling it missing.
                    verdict = parse_verdict(str((choice.get("message") or {}).get("content") or ""))
                    p = None if verdict is None else float(verdict == "A")
                if p is None:
                    self._missing("unparseable", f"no A/B verdict: {str((choice.get('message') or {}).get('content'))[:80]!r}")
                    return None
                with self._lock:
                    self.stats["logprobs_orders"] += 1
                return p
            if self.verdict_from == "logprobs":
                raise UserError(f"judge endpoint {self.client.url} returned no logprobs; use verdict_from samples (or auto)")
            self._use_logprobs = False  # this endpoint gives no log-probabilities: sample from now on
        votes: list[str] = []
        for seed in range(self.samples):
            try:
                text = self._sample(messages, seed)
            except JudgeRequestError as e:
                self._missing("requests_failed", str(e))
                return None
            verdict = parse_verdict(text)
            if verdict is None:
                with self._lock:
                    if len(self.problems) < 20:
                        self.problems.append(f"no A/B verdict: {text[:80]!r}")
            else:
                votes.append(verdict)
        if 2 * len(votes) < self.samples:
            self._missing("unparseable", f"only {len(votes)} of {self.samples} verdicts readable")
            return None
        with self._lock:
            self.stats["sampled_orders"] += 1
        return votes.count("A") / len(votes)

    def _sample(self, messages: list[Message], seed: int) -> str:
        return self._text({"messages": messages, "temperature": self.sample_temperature, "max_tokens": 16, "seed": seed})

    def _text(self, payload: dict[str, Any]) -> str:
        """The answer's text for ``payload`` (raises :class:`JudgeRequestError` when the request fails for good)."""
        data = self.client.request(payload)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"response has no choices[0].message.content: {str(data)[:200]}") from None
        return content if isinstance(content, str) else ""

    # --- the grader methods -----------------------------------------------------------------------------

    def _compare_one(self, pair: PairItem) -> float | None:
        forward = self._p_first(pairwise_messages(pair.prompt, pair.response_a, pair.response_b))
        backward = self._p_first(pairwise_messages(pair.prompt, pair.response_b, pair.response_a)) if forward is not None else None
        if forward is None or backward is None:
            with self._lock:
                self.stats["pairs_missing"] += 1
            return None
        return average_orders(forward, backward, self.averaging)

    def _compare_uncached(self, pairs: list[PairItem]) -> list[float | None]:
        if self.concurrency == 1 or len(pairs) == 1:
            return [self._compare_one(p) for p in pairs]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._compare_one, pairs))

    def _rate_one(self, item: ScoreItem) -> float | None:
        try:
            data = self._text({"messages": rating_messages(item.prompt, item.response), "temperature": 0.0, "max_tokens": 16})
        except JudgeRequestError as e:
            self._missing("requests_failed", str(e))
            return None
        value = parse_rating(data)
        if value is None:
            self._missing("unparseable", f"no [[rating]]: {data[:80]!r}")
        return value

    def _score_uncached(self, items: list[ScoreItem]) -> list[float | None]:
        if self.concurrency == 1 or len(items) == 1:
            return [self._rate_one(it) for it in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._rate_one, items))
