"""The graded-tasks grader: scores a response to one of the checkable tasks of :mod:`mmpo.data.synthetic`.

Every task has one right answer a program can check (``17 + 25``, letters in a word, km to m, sorting five
numbers, writing a date as DD/MM/YYYY). :func:`grade` scores any text against it, the generator's composed
responses and free-form policy generations alike; ``mmpo label --checker graded-tasks`` and the online loop's
``checker:graded-tasks`` grader call it.

The grade, on a 0..10 scale, is ``round(10 * credit * format_factor, 1)``:

* ``credit`` (correctness) — 1 for the right answer; a near miss gets at most 0.5, falling linearly with
  the error: numbers ``0.5 * max(0, 1 - |x - y| / tol)`` with ``tol = max(2, 0.1 * |y|)`` (a relative
  error with a floor of 2 for small counts); sorted lists ``0.5 * (1 - inversions / max_inversions)`` when
  the numbers are right but out of order; strings ``0.5 * max(0, 1 - 2 * edit_distance / len(answer))``
  (case-sensitive). Anything else, or nothing found, is 0.
* ``format_factor`` — 1.0 when the response is just the answer (surrounding whitespace, quotes, ``**``
  and a final period allowed); otherwise ``max(0.6, 0.9 - 0.01 * extra_words)``, where ``extra_words``
  counts the words beside the answer: the requested format was missed (-10%) and every ten words of
  padding cost another point, down to a floor of 6 points for a right answer buried in text.

How the answer is found in free text: numbers — the first number after the last "answer is/answer:"
marker, else the last number in the text (conclusions come last); lists — the first comma/space-separated
run of numbers after such a marker, else the last run; strings — the best-matching token anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mmpo.errors import UserError

# task name -> answer type. The answer type picks the extractor and the partial-credit rule.
TASKS: dict[str, str] = {
    "add": "number",
    "subtract": "number",
    "multiply": "number",
    "count_letter": "number",
    "count_items": "number",
    "km_to_m": "number",
    "hours_to_minutes": "number",
    "kg_to_g": "number",
    "sort": "list",
    "upper_case": "text",
    "date_format": "text",
}

FULL_SCORE = 10.0
NEAR_MISS_CREDIT = 0.5  # a wrong answer never earns more than half of a right one
UNFORMATTED_FACTOR = 0.9  # the answer is right but the reply is not just the answer
PER_EXTRA_WORD = 0.01  # each word of padding beside the answer
FLOOR_FACTOR = 0.6  # a right answer anywhere in the text keeps at least 6 points, above any near miss (<= 5)


@dataclass(frozen=True)
class Task:
    """One checkable prompt: ``task`` (a key of :data:`TASKS`), the prompt text, and the canonical answer."""

    task: str
    prompt: str
    answer: str

    @property
    def answer_type(self) -> str:
        return TASKS[self.task]

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any], where: str = "task") -> "Task":
        """A task from a data row with ``task`` and ``answer`` (``prompt`` optional for grading)."""
        name = row.get("task")
        if name not in TASKS:
            raise UserError(f"{where}: unknown task {name!r}; expected one of {', '.join(TASKS)}")
        if row.get("answer") in (None, ""):
            raise UserError(f"{where}: task {name!r} has no answer")
        return cls(str(name), str(row.get("prompt", "")), str(row["answer"]))


# --- the checker ---------------------------------------------------------------------------------------

# A number not glued to a word or a decimal point on its left; "1,234" style grouping is one number.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
# Two or more numbers separated by commas, semicolons or spaces (", and" allowed): a list in the text.
_LIST_RUN = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:(?:\s*[,;]\s*|\s+)(?:and\s+)?-?\d+(?:\.\d+)?)+")
_ANSWER_MARKER = re.compile(r"answer(?:\s+is)?\s*[:=]?", re.IGNORECASE)
_TOKEN = re.compile(r"[^\s\"'`*()\[\]{},;!?<>]+")


@dataclass(frozen=True)
class Grade:
    """A graded response: ``score = round(10 * credit * format_factor, 1)``; ``extracted`` is what was read."""

    score: float
    credit: float
    format_factor: float
    extracted: str | None


def _strip_wrapping(text: str) -> str:
    """The response without surrounding whitespace, quotes, markdown emphasis and a final period."""
    s = text.strip()
    previous = None
    while s != previous:
        previous = s
        s = s.strip().strip("*`\"'").strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1]
    return s


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def _after_last_marker(text: str) -> str | None:
    markers = list(_ANSWER_MARKER.finditer(text))
    return text[markers[-1].end():] if markers else None


def _extract_number(text: str) -> float | None:
    tail = _after_last_marker(text)
    if tail is not None:
        found = _NUMBER.search(tail)
        if found:
            return _to_float(found.group())
    numbers = _NUMBER.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def _extract_list(text: str) -> list[float] | None:
    tail = _after_last_marker(text)
    run = None
    if tail is not None:
        run = _LIST_RUN.search(tail)
    if run is None:
        runs = list(_LIST_RUN.finditer(text))
        run = runs[-1] if runs else None
    if run is None:
        single = _PLAIN_NUMBER.findall(text)
        return [float(single[-1])] if single else None
    return [float(x) for x in _PLAIN_NUMBER.findall(run.group())]


def _format_factor(text: str, clean_pattern: Callable[[str], bool], answer_words: int) -> float:
    """1.0 for just the answer, else ``max(0.6, 0.9 - 0.01 * extra_words)``."""
    if clean_pattern(_strip_wrapping(text)):
        return 1.0
    extra = max(0, len(text.split()) - answer_words)
    return max(FLOOR_FACTOR, UNFORMATTED_FACTOR - PER_EXTRA_WORD * extra)


def _is_bare_list(s: str) -> bool:
    """Only numbers separated by commas and/or spaces, optionally in square brackets."""
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    parts = [x for x in re.split(r"[,\s]+", s.strip()) if x]
    return bool(parts) and all(_PLAIN_NUMBER.fullmatch(x) for x in parts)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _inversions(order: list[float]) -> int:
    return sum(1 for i in range(len(order)) for j in range(i + 1, len(order)) if order[i] > order[j])


def format_number(x: float) -> str:
    """``42.0`` -> ``"42"``, ``2.5`` -> ``"2.5"``: a number as an answer writes it."""
    return str(int(x)) if float(x).is_integer() else repr(x)


def grade_details(task: Task | Mapping[str, Any], response: str) -> Grade:
    """Grade ``response`` against ``task`` on 0..10; see the module docstring for the exact rules.

    ``task`` is a :class:`Task` or a mapping with ``task`` and ``answer`` (a row of the generated files).
    Works on any text, including free-form model generations; empty text scores 0.
    """
    if not isinstance(task, Task):
        task = Task.from_mapping(task)
    text = response or ""
    if not text.strip():
        return Grade(0.0, 0.0, 0.0, None)
    kind = task.answer_type
    if kind == "number":
        target = _to_float(task.answer)
        got = _extract_number(text)
        if got is None:
            return Grade(0.0, 0.0, 0.0, None)
        if got == target:
            credit = 1.0
        else:
            tol = max(2.0, 0.1 * abs(target))
            credit = NEAR_MISS_CREDIT * max(0.0, 1.0 - abs(got - target) / tol)
        clean = lambda s: bool(_NUMBER.fullmatch(s))  # noqa: E731 - a one-line predicate
        factor = _format_factor(text, clean, 1)
        extracted = format_number(got)
    elif kind == "list":
        target_list = [float(x) for x in _PLAIN_NUMBER.findall(task.answer)]
        got_list = _extract_list(text)
        if not got_list:
            return Grade(0.0, 0.0, 0.0, None)
        if got_list == target_list:
            credit = 1.0
        elif sorted(got_list) == sorted(target_list) and len(target_list) > 1:
            most = len(target_list) * (len(target_list) - 1) / 2
            credit = NEAR_MISS_CREDIT * (1.0 - _inversions(got_list) / most)
        else:
            credit = 0.0
        clean = _is_bare_list
        factor = _format_factor(text, clean, len(target_list))
        extracted = ", ".join(format_number(x) for x in got_list)
    else:
        tokens = [t.strip(".:") for t in _TOKEN.findall(text)]
        tokens = [t for t in tokens if t]
        if not tokens:
            return Grade(0.0, 0.0, 0.0, None)

        def token_credit(tok: str) -> float:
            if tok == task.answer:
                return 1.0
            d = edit_distance(tok, task.answer)
            return NEAR_MISS_CREDIT * max(0.0, 1.0 - 2.0 * d / len(task.answer))

        best = max(tokens, key=token_credit)
        credit = token_credit(best)
        answer = task.answer
        clean = lambda s: s == best and " " not in s  # noqa: E731
        factor = _format_factor(text, clean, len(answer.split()))
        extracted = best
    score = round(FULL_SCORE * credit * factor, 1) if credit > 0 else 0.0
    return Grade(score, round(credit, 4), round(factor, 2), extracted)


def grade(task: Task | Mapping[str, Any], response: str) -> float:
    """Score of ``response`` for ``task`` on 0..10 (10 = right answer, nothing else); see :func:`grade_details`."""
    return grade_details(task, response).score
