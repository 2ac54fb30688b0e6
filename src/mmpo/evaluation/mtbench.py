"""MT-bench: answer the 80 two-turn questions with a policy, then grade each turn with an LLM judge.

Data files (public source: the FastChat repository, https://github.com/lm-sys/FastChat,
``fastchat/llm_judge/data/``: ``mt_bench/question.jsonl``, ``mt_bench/reference_answer/gpt-4.jsonl`` and
``judge_prompts.jsonl``; Apache-2.0). A directory holding ``question.jsonl``, ``judge_prompts.jsonl`` and the
GPT-4 reference answers as ``reference_answer_gpt-4.jsonl`` (or in FastChat's layout) is found, in order,
from the command line, ``$MMPO_MT_BENCH_DIR``, the cache (``$MMPO_CACHE/data/mt_bench``), or
``../shared/data/mt_bench`` beside a source checkout; failing all of them the files are downloaded once from
FastChat into the cache (``$MMPO_MT_BENCH_URL`` overrides the base URL). mmpo carries no copy.

Facts kept from FastChat's protocol (the code is our own):

* Generation: turn 2 is asked with turn 1's question and the model's own turn-1 answer in the chat.
  Sampling temperature by category (:data:`CATEGORY_TEMPERATURE`); 0 means greedy decoding.
* Single-answer grading, one judgment per turn: turn 1 with ``single-v1``, turn 2 with
  ``single-v1-multi-turn`` (the whole conversation, graded on the second answer). Math, reasoning and
  coding use the reference-guided ``single-math-v1`` / ``single-math-v1-multi-turn`` with the GPT-4
  reference answers. The judge is asked at temperature 0 with up to 2048 new tokens.
* The score is the first ``[[rating]]`` (falling back to the first ``[rating]``), as FastChat reads it
  (:func:`parse_rating`); a turn without a rating in 1..10 is missing. The reported score of a set of turns is the mean over its rated turns.
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmpo.errors import DataError, UserError
from mmpo.io import JsonlAppender, read_jsonl
from mmpo.paths import cache_dir

FASTCHAT_SOURCE = "https://github.com/lm-sys/FastChat/tree/main/fastchat/llm_judge/data"
FASTCHAT_RAW_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data"
DIR_ENV = "MMPO_MT_BENCH_DIR"
URL_ENV = "MMPO_MT_BENCH_URL"  # another base URL for the download (a mirror, or a local server in tests)
# (path under FastChat's data directory, file name in our flat layout)
DOWNLOAD_FILES = (
    ("mt_bench/question.jsonl", "question.jsonl"),
    ("judge_prompts.jsonl", "judge_prompts.jsonl"),
    ("mt_bench/reference_answer/gpt-4.jsonl", "reference_answer_gpt-4.jsonl"),
)
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
# FastChat's per-category sampling temperatures; categories outside the table get 0.7.
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
OTHER_CATEGORY_TEMPERATURE = 0.7
NEED_REFERENCE = frozenset({"math", "reasoning", "coding"})
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048
DEFAULT_MAX_NEW_TOKENS = 1024
RATING_RANGE = (1.0, 10.0)


# --- files -----------------------------------------------------------------------------------------------


@dataclass
class Question:
    question_id: int
    category: str
    turns: list[str]
    reference: list[str] | None = None  # the question file's own reference, used if the GPT-4 file lacks one


@dataclass
class JudgePrompt:
    name: str
    system_prompt: str
    prompt_template: str


@dataclass
class MTBenchFiles:
    questions: Path
    judge_prompts: Path | None  # None only when not needed (answer generation)
    reference_answers: Path | None


def _repo_root() -> Path:
    # src/mmpo/evaluation/mtbench.py -> the repository (for an editable install).
    return Path(__file__).resolve().parents[3]


def mt_bench_cache_dir() -> Path:
    """Where downloaded MT-bench files live: ``$MMPO_CACHE/data/mt_bench``."""
    return cache_dir() / "data" / "mt_bench"


def _development_dir() -> Path | None:
    # ../shared/data/mt_bench beside a source checkout (never beside an installed wheel's site-packages).
    root = _repo_root()
    if not (root / "pyproject.toml").is_file():
        return None
    path = (root / ".." / "shared" / "data" / "mt_bench").resolve()
    return path if (path / "question.jsonl").is_file() else None


def download_mt_bench(target: str | os.PathLike | None = None, base_url: str | None = None, timeout: float = 30.0) -> Path:
    """Download FastChat's three MT-bench files into ``target`` (default: :func:`mt_bench_cache_dir`).

    ``base_url`` (default ``$MMPO_MT_BENCH_URL``, else :data:`FASTCHAT_RAW_URL`) is FastChat's
    ``fastchat/llm_judge/data`` directory. The directory appears complete or not at all (an atomic rename);
    the files are checked to parse before it does. Unreachable: one UserError line.
    """
    from mmpo.paths import atomic_directory, fetch_url

    base = (base_url or os.environ.get(URL_ENV) or FASTCHAT_RAW_URL).rstrip("/")
    target = Path(target) if target is not None else mt_bench_cache_dir()
    with atomic_directory(target) as tmp:
        for remote, local in DOWNLOAD_FILES:
            failure = ("MT-bench data not found locally and {url} is not reachable ({reason}); give the MT-bench "
                       "directory on the command line or put question.jsonl, judge_prompts.jsonl and "
                       f"reference_answer_gpt-4.jsonl in {target}")
            (tmp / local).write_bytes(fetch_url(f"{base}/{remote}", failure, timeout))
        load_questions(tmp / "question.jsonl")
        load_judge_prompts(tmp / "judge_prompts.jsonl")
        load_reference_answers(tmp / "reference_answer_gpt-4.jsonl")
        (tmp / "SOURCE.md").write_text(f"Downloaded by mmpo from {base} ({FASTCHAT_SOURCE}, Apache-2.0).\n")
    print(f"MT-bench: downloaded {len(DOWNLOAD_FILES)} files from {base} to {target}")
    return target


def find_mt_bench_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The MT-bench data directory, the first of: ``explicit``; ``$MMPO_MT_BENCH_DIR``; the cache
    (:func:`mt_bench_cache_dir`); ``../shared/data/mt_bench`` beside a source checkout; else a download from
    FastChat into the cache (:func:`download_mt_bench`)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise UserError(f"MT-bench data not found at {path}")
        return path
    if os.environ.get(DIR_ENV):
        path = Path(os.environ[DIR_ENV]).expanduser()
        if not path.is_dir():
            raise UserError(f"${DIR_ENV} points at {path}, which is not a directory")
        return path
    cached = mt_bench_cache_dir()
    if (cached / "question.jsonl").is_file():
        return cached
    return _development_dir() or download_mt_bench(cached)


def mt_bench_files(directory: str | os.PathLike | None = None, need_judge_prompts: bool = True) -> MTBenchFiles:
    """The three MT-bench files under ``directory`` (see :func:`find_mt_bench_dir`), in our flat layout or
    FastChat's (``mt_bench/question.jsonl``, ``mt_bench/reference_answer/gpt-4.jsonl``, ``judge_prompts.jsonl``).
    ``directory`` may also be a question file; the other files are then looked for beside it."""
    root = find_mt_bench_dir(directory)
    question_file = None
    if root.is_file():
        question_file, root = root, root.parent

    def first(*candidates: Path) -> Path | None:
        return next((c for c in candidates if c.exists()), None)

    questions = question_file or first(root / "question.jsonl", root / "mt_bench" / "question.jsonl")
    prompts = first(root / "judge_prompts.jsonl", root.parent / "judge_prompts.jsonl")
    references = first(
        root / "reference_answer_gpt-4.jsonl",
        root / "reference_answer" / "gpt-4.jsonl",
        root / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
    )
    if questions is None:
        raise UserError(f"no question.jsonl under {root} (get it from {FASTCHAT_SOURCE})")
    if prompts is None and need_judge_prompts:
        raise UserError(f"no judge_prompts.jsonl in {root} or its parent (get it from {FASTCHAT_SOURCE})")
    return MTBenchFiles(questions, prompts, references)


def _string_list(value: Any, source: str, row: int, field: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise DataError(source, row, field, "expected a non-empty list of strings")
    return value


def load_questions(path: str | os.PathLike) -> list[Question]:
    """The questions of a ``question.jsonl`` in file order."""
    out: list[Question] = []
    seen: set[int] = set()
    for lineno, rec in _numbered_records(path):
        qid = rec.get("question_id")
        if not isinstance(qid, int):
            raise DataError(str(path), lineno, "question_id", "expected an integer")
        if qid in seen:
            raise DataError(str(path), lineno, "question_id", f"duplicate question id {qid}")
        seen.add(qid)
        category = rec.get("category")
        if not isinstance(category, str):
            raise DataError(str(path), lineno, "category", "expected a string")
        turns = _string_list(rec.get("turns"), str(path), lineno, "turns")
        reference = rec.get("reference")
        reference = _string_list(reference, str(path), lineno, "reference") if reference is not None else None
        out.append(Question(qid, category, turns, reference))
    if not out:
        raise UserError(f"no questions in {path}")
    return out


def load_judge_prompts(path: str | os.PathLike) -> dict[str, JudgePrompt]:
    """Judge prompt templates by name (``single-v1``, ``single-math-v1-multi-turn``, ...)."""
    prompts: dict[str, JudgePrompt] = {}
    for lineno, rec in _numbered_records(path):
        for field in ("name", "system_prompt", "prompt_template"):
            if not isinstance(rec.get(field), str):
                raise DataError(str(path), lineno, field, "expected a string")
        prompts[rec["name"]] = JudgePrompt(rec["name"], rec["system_prompt"], rec["prompt_template"])
    return prompts


def load_reference_answers(path: str | os.PathLike | None) -> dict[int, list[str]]:
    """Reference answer turns by question id, from FastChat's answer format (``choices[0].turns``)."""
    if path is None:
        return {}
    refs: dict[int, list[str]] = {}
    for lineno, rec in _numbered_records(path):
        qid = rec.get("question_id")
        if not isinstance(qid, int):
            raise DataError(str(path), lineno, "question_id", "expected an integer")
        refs[qid] = _answer_turns(rec, str(path), lineno)
    return refs


def _answer_turns(rec: dict[str, Any], source: str, row: int) -> list[str]:
    try:
        turns = rec["choices"][0]["turns"]
    except (KeyError, IndexError, TypeError):
        raise DataError(source, row, "choices", "expected choices[0].turns (FastChat's answer format)") from None
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise DataError(source, row, "choices", "choices[0].turns must be a list of strings")
    return turns


@dataclass
class Answer:
    question_id: int
    model_id: str
    turns: list[str]
    source: str = ""  # file and line, for error messages
    line: int | None = None


def load_answers(path: str | os.PathLike) -> dict[int, Answer]:
    """One model's answers by question id (FastChat's format, as :func:`generate_answers` writes it)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"answer file not found: {path}")
    answers: dict[int, Answer] = {}
    models: set[str] = set()
    for lineno, rec in _numbered_records(path):
        qid = rec.get("question_id")
        if not isinstance(qid, int):
            raise DataError(str(path), lineno, "question_id", "expected an integer")
        model_id = str(rec.get("model_id") or path.stem)
        models.add(model_id)
        if len(models) > 1:
            raise DataError(str(path), lineno, "model_id", f"the file mixes models {', '.join(sorted(models))}; judge one model per file")
        answers[qid] = Answer(qid, model_id, _answer_turns(rec, str(path), lineno), str(path), lineno)
    return answers


def _numbered_records(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-empty line of a JSONL file; malformed lines are errors."""
    from mmpo.data.hub import json_lines

    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    return [(lineno, rec) for _, lineno, rec in json_lines(path)]


# --- generation ------------------------------------------------------------------------------------------

# (messages, temperature, max_new_tokens, seed) -> answer text
GenerateFn = Callable[[list[dict[str, str]], float, int, int], str]


def category_temperature(category: str) -> float:
    """FastChat's sampling temperature for a question category (0.0 = greedy)."""
    return CATEGORY_TEMPERATURE.get(category, OTHER_CATEGORY_TEMPERATURE)


def generate_answers(
    generate: GenerateFn,
    questions: list[Question],
    out_path: str | os.PathLike,
    model_id: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Answer every turn of the first ``limit`` questions, appending one FastChat-format line per question
    to ``out_path`` as soon as it is done. Questions already in ``out_path`` are skipped.

    Turn ``k`` is asked with the chat so far: ``[user q1, assistant a1, ..., user qk]``. Turn ``k`` (from 0)
    samples with seed ``seed + 10 * question_id + k``, so a rerun of a question draws the same way.
    With ``progress``, says the budget first (questions, turns, up to ``max_new_tokens`` new tokens a turn) and
    then counts turns, naming the question and turn being answered.
    Returns ``{"answered": new answers, "skipped": already done}``.
    """
    import sys

    from tqdm.auto import tqdm

    selected = questions[:limit] if limit is not None else questions
    done = {rec.get("question_id") for rec in read_jsonl(out_path)}
    todo = [q for q in selected if q.question_id not in done]
    n_turns = sum(len(q.turns) for q in todo)
    if progress and todo:
        print(f"MT-bench: {len(todo)} questions to answer ({n_turns} turns), up to {max_new_tokens} new tokens a turn: "
              f"up to {n_turns * max_new_tokens} tokens in all (--max-new-tokens sets the budget)", file=sys.stderr, flush=True)
    # A turn can take minutes on a CPU: redraw on every turn, not on a timer.
    bar = tqdm(total=n_turns, desc="MT-bench answers", unit="turn", disable=None if progress else True, mininterval=0, miniters=1)
    with bar, JsonlAppender(out_path) as log:
        for number, q in enumerate(todo, start=1):
            temperature = category_temperature(q.category)
            messages: list[dict[str, str]] = []
            turns: list[str] = []
            for turn, text in enumerate(q.turns):
                where = f"answer {number}/{len(todo)} (question {q.question_id}), turn {turn + 1}/{len(q.turns)}"
                if bar.disable and progress:  # not a terminal: one plain line a turn instead of a redrawn bar
                    print(f"MT-bench: {where}", file=sys.stderr, flush=True)
                else:
                    bar.set_postfix_str(where)
                messages.append({"role": "user", "content": text})
                answer = generate(list(messages), temperature, max_new_tokens, seed + 10 * q.question_id + turn)
                turns.append(answer)
                messages.append({"role": "assistant", "content": answer})
                bar.update(1)
            log.write(
                {
                    "question_id": q.question_id,
                    "answer_id": uuid.uuid4().hex,
                    "model_id": model_id,
                    "category": q.category,
                    "choices": [{"index": 0, "turns": turns}],
                    "temperature": temperature,
                    "max_new_tokens": max_new_tokens,
                    "tstamp": time.time(),
                }
            )
    return {"answered": len(todo), "skipped": len(selected) - len(todo)}


# --- judge prompts and ratings ---------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill_template(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` in one pass (so braces inside an
    answer are never read as placeholders). A placeholder without a value is an error."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(m.group(1))
        return values[m.group(1)]

    return _PLACEHOLDER.sub(sub, template)


def judge_prompt_name(category: str, turn: int) -> str:
    """FastChat's single-answer prompt for a category and turn (1 or 2)."""
    base = "single-math-v1" if category in NEED_REFERENCE else "single-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def build_judge_messages(
    question: Question,
    answer_turns: list[str],
    turn: int,
    prompts: dict[str, JudgePrompt],
    references: dict[int, list[str]],
) -> tuple[str, list[dict[str, str]]]:
    """``(prompt name, [system, user] messages)`` asking the judge to grade ``turn`` (1 or 2) of an answer.

    Turn 1 shows the first question and answer; turn 2 shows both turns and asks about the second. Math,
    reasoning and coding questions also show the reference answer(s): the GPT-4 reference file's, else the
    question file's own ``reference``.
    """
    if turn not in (1, 2) or turn > len(question.turns):
        raise ValueError(f"question {question.question_id} has no turn {turn}")
    name = judge_prompt_name(question.category, turn)
    if name not in prompts:
        raise UserError(f"judge prompt {name!r} is missing from judge_prompts.jsonl")
    values = {
        "question": question.turns[0],
        "answer": answer_turns[0],
        "question_1": question.turns[0],
        "answer_1": answer_turns[0],
    }
    if turn == 2:
        values.update(question_2=question.turns[1], answer_2=answer_turns[1])
    if question.category in NEED_REFERENCE:
        reference = references.get(question.question_id) or question.reference
        if not reference or len(reference) < turn:
            raise UserError(
                f"{question.category} question {question.question_id} needs a reference answer for turn {turn}: "
                "none in the GPT-4 reference answers file or the question's own `reference`"
            )
        values["ref_answer_1"] = reference[0]
        if turn == 2:
            values["ref_answer_2"] = reference[1]
    prompt = prompts[name]
    try:
        user = fill_template(prompt.prompt_template, values)
    except KeyError as e:
        raise UserError(f"judge prompt {name!r} uses {{{e.args[0]}}}, which turn {turn} does not provide") from None
    return name, [{"role": "system", "content": prompt.system_prompt}, {"role": "user", "content": user}]


# FastChat's llm_judge rule (``one_score_pattern``, then ``one_score_pattern_backup`` in common.py).
_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """A judge's 1-10 rating by FastChat's rule: the number in the first ``[[x]]`` of ``text``, else in the
    first ``[x]``, where x is written plainly (``7``, ``8.5``; not ``[[ 7 ]]`` nor ``[[7/10]]``); None when
    there is none (FastChat's -1) or when it lies outside 1..10, the scale the judge was asked for.

    The one rating rule of mmpo: MT-bench and the judge grader (:mod:`mmpo.graders.judge`) both use it."""
    match = _ONE_SCORE.search(text) or _ONE_SCORE_BACKUP.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    lo, hi = RATING_RANGE
    return value if lo <= value <= hi else None


# --- judging ---------------------------------------------------------------------------------------------

STATUS_OK, STATUS_UNPARSEABLE, STATUS_FAILED = "ok", "unparseable", "failed"


def _key(rec: dict[str, Any]) -> tuple[str, str, int, int]:
    return (str(rec["model_id"]), str(rec["judge_model"]), int(rec["question_id"]), int(rec["turn"]))


def judge_answers(
    client: Any,
    questions: list[Question],
    answers: dict[int, Answer],
    prompts: dict[str, JudgePrompt],
    references: dict[int, list[str]],
    judgments_path: str | os.PathLike,
    limit: int | None = None,
    parallel: int = 1,
    retry_unparseable: bool = False,
    max_consecutive_failures: int = 10,
    max_tokens: int = JUDGE_MAX_TOKENS,
    progress: bool = True,
) -> dict[str, Any]:
    """Grade each turn of the answered questions (the first ``limit`` of them) with ``client.complete``,
    appending one judgment per turn to ``judgments_path`` as it arrives.

    A judgment is ``ok`` (rating parsed), ``unparseable`` (the judge answered without a rating in 1..10) or
    ``failed`` (the request failed after retries). Unparseable and failed turns are missing from the scores
    and counted. ``max_tokens`` caps each judgment (FastChat: 2048). A rerun re-requests only failed turns
    (and unparseable ones if ``retry_unparseable``).
    After ``max_consecutive_failures`` failed requests in a row the run stops with a UserError: the endpoint
    is down, and failing every remaining turn would only have to be redone.

    Returns :func:`summarize_judgments` of the selected turns.
    """
    from tqdm.auto import tqdm

    from mmpo.evaluation.judge_client import JudgeRequestError

    answered = [q for q in questions if q.question_id in answers]
    selected = answered[:limit] if limit is not None else answered
    for q in selected:
        a = answers[q.question_id]
        if len(a.turns) < len(q.turns):
            raise DataError(a.source, a.line, "choices", f"question {q.question_id} has {len(q.turns)} turns but the answer has {len(a.turns)}")
    judge_model = client.model
    latest = {_key(r): r for r in read_jsonl(judgments_path) if {"model_id", "judge_model", "question_id", "turn"} <= r.keys()}
    redo = {STATUS_FAILED} | ({STATUS_UNPARSEABLE} if retry_unparseable else set())

    tasks = []
    for q in selected:
        answer = answers[q.question_id]
        for turn in range(1, min(len(q.turns), 2) + 1):
            prev = latest.get((answer.model_id, judge_model, q.question_id, turn))
            if prev is not None and prev.get("status") not in redo:
                continue
            name, messages = build_judge_messages(q, answer.turns, turn, prompts, references)
            tasks.append((q, answer, turn, name, messages))

    def judge_one(task: tuple) -> dict[str, Any]:
        q, answer, turn, name, messages = task
        record = {
            "question_id": q.question_id,
            "turn": turn,
            "category": q.category,
            "model_id": answer.model_id,
            "judge_model": judge_model,
            "prompt_name": name,
        }
        try:
            text = client.complete(messages, temperature=JUDGE_TEMPERATURE, max_tokens=max_tokens)
        except JudgeRequestError as e:
            return {**record, "score": None, "status": STATUS_FAILED, "error": str(e), "judgment": None, "tstamp": time.time()}
        score = parse_rating(text)
        status = STATUS_OK if score is not None else STATUS_UNPARSEABLE
        error = None if score is not None else "no [[rating]] in 1..10 in the judgment"
        return {**record, "score": score, "status": status, "error": error, "judgment": text, "tstamp": time.time()}

    consecutive_failures = 0
    bar = tqdm(total=len(tasks), desc="MT-bench judgments", unit="turn", disable=None if progress else True)
    with JsonlAppender(judgments_path) as log, ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        pending: set[Future] = set()
        queue = iter(tasks)

        def refill() -> None:
            while len(pending) < max(1, parallel):
                task = next(queue, None)
                if task is None:
                    return
                pending.add(pool.submit(judge_one, task))

        refill()
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    pending.discard(future)
                    record = future.result()  # JudgeConfigError propagates: every request would fail
                    log.write(record)
                    latest[_key(record)] = record
                    bar.update(1)
                    consecutive_failures = consecutive_failures + 1 if record["status"] == STATUS_FAILED else 0
                    if consecutive_failures >= max_consecutive_failures:
                        raise UserError(
                            f"the judge failed {consecutive_failures} requests in a row (last: {record['error']}); "
                            f"judgments so far are in {judgments_path}: rerun the same command to resume"
                        )
                refill()
        finally:
            # Queued requests are dropped; the few in flight finish (their answers are not recorded).
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()

    chosen = [
        latest[(answers[q.question_id].model_id, judge_model, q.question_id, t)]
        for q in selected
        for t in range(1, min(len(q.turns), 2) + 1)
    ]
    summary = summarize_judgments(chosen)
    summary["unanswered_questions"] = [q.question_id for q in questions if q.question_id not in answers]
    summary["requested_now"] = len(tasks)
    return summary


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_judgments(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores and counts over one judgment per turn.

    ``overall`` is the mean rating over every rated turn; ``per_turn`` and ``per_category`` the same within
    each turn / category (both turns of a category pooled, as MT-bench's category plot does).
    ``turns_total = parsed + missing`` and ``missing = missing_unparseable + missing_failed``.
    """
    def is_rated(r: dict[str, Any]) -> bool:
        return r.get("status") == STATUS_OK and isinstance(r.get("score"), (int, float))

    rated = [r for r in records if is_rated(r)]
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_category: dict[str, list[float]] = defaultdict(list)
    missing_by_category: dict[str, int] = defaultdict(int)
    for r in records:
        if is_rated(r):
            by_turn[int(r["turn"])].append(float(r["score"]))
            by_category[r["category"]].append(float(r["score"]))
        else:
            missing_by_category[r["category"]] += 1
    categories = [c for c in CATEGORIES if c in by_category or c in missing_by_category]
    categories += sorted((set(by_category) | set(missing_by_category)) - set(CATEGORIES))
    return {
        "model_id": records[0]["model_id"] if records else None,
        "judge_model": records[0]["judge_model"] if records else None,
        "n_questions": len({r["question_id"] for r in records}),
        "turns_total": len(records),
        "parsed": len(rated),
        "missing": len(records) - len(rated),
        "missing_unparseable": sum(r.get("status") == STATUS_UNPARSEABLE for r in records),
        "missing_failed": sum(r.get("status") == STATUS_FAILED for r in records),
        "overall": _mean([float(r["score"]) for r in rated]),
        "per_turn": {str(t): _mean(v) for t, v in sorted(by_turn.items())},
        "per_category": {
            c: {"score": _mean(by_category.get(c, [])), "n": len(by_category.get(c, [])), "missing": missing_by_category.get(c, 0)}
            for c in categories
        },
    }


def radar_plot(per_category: dict[str, dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """A radar (spider) chart of the mean rating per category on a 0-10 scale, saved as PNG.
    Categories without a rated turn are drawn at 0 and labelled ``(none)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_category)
    if not names:
        raise UserError("no categories to plot")
    values = [per_category[c]["score"] if per_category[c]["score"] is not None else 0.0 for c in names]
    labels = [f"{c}\n{v:.2f}" if per_category[c]["score"] is not None else f"{c}\n(none)" for c, v in zip(names, values)]
    angles = [2 * math.pi * i / len(names) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(7.5, 7), subplot_kw={"projection": "polar"})
    ax.plot(angles + angles[:1], values + values[:1], color="tab:blue", linewidth=2)
    ax.fill(angles + angles[:1], values + values[:1], color="tab:blue", alpha=0.25)
    ax.set_theta_offset(math.pi / 2)  # first category at the top, going clockwise
    ax.set_theta_direction(-1)
    ax.set_xticks(angles)
    ax.set_xticklabels(labels, fontsize=10)
    ax.tick_params(axis="x", pad=14)  # keep the labels off the outer ring
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.set_yticklabels(["2", "4", "6", "8", "10"], fontsize=8, color="grey")
    ax.set_title(title, pad=24, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
