"""A graded preference data set that mmpo makes itself: small checkable tasks, responses of known quality.

Every prompt is a task with one right answer that a program can check (``17 + 25``, letters in a word,
km to m, sorting five numbers, writing a date as DD/MM/YYYY). For each prompt the generator composes
several responses with controlled errors (exact, wrapped in a few words, buried in chatty working, a near
miss, a far miss, a refusal). It does **not** decide how good they are: the grader
(:func:`mmpo.graders.graded_tasks.grade`, where its rules are written) does, the same checker the demo uses on
free-form policy generations. Pairs of responses with different grades become
preference pairs with ``score_chosen``/``score_rejected``, so the margin is a measured quality gap.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mmpo.errors import UserError
from mmpo.graders.graded_tasks import FULL_SCORE, TASKS, Task, format_number, grade
from mmpo.io import atomic_write_text, write_jsonl_atomic

__all__ = [
    "RESPONSE_KINDS",
    "SyntheticConfig",
    "SyntheticData",
    "build",
    "write",
    "make_dataset",
    "default_dir",
    "margin_histogram",
    "summarize",
    "compose_response",
]

FORMAT_VERSION = 1

# Response kinds the generator composes, best intended first. Their grades come from `grade`.
RESPONSE_KINDS = ("exact", "short", "padded", "chatty", "near", "near_chatty", "far", "refusal")



# --- tasks ---------------------------------------------------------------------------------------------

# --- making tasks ---------------------------------------------------------------------------------------

WORDS = (
    "banana", "strawberry", "mississippi", "committee", "balloon", "bookkeeper", "coffee", "pepper",
    "letter", "success", "address", "parallel", "assessment", "engineer", "tomorrow", "butterfly",
    "grammar", "happiness", "necessary", "occurrence", "possession", "referee", "seventeen", "tennessee",
    "volleyball", "watermelon", "yellow", "giraffe", "hippopotamus", "cinnamon", "broccoli", "spaghetti",
    "programming", "accommodate", "abracadabra", "independence", "millennium", "embarrass", "raspberry",
    "blueberry", "cucumber", "elephant", "kangaroo", "chocolate", "umbrella", "dinosaur", "mountain",
    "adventure", "telephone", "computer", "keyboard", "calendar", "pineapple", "avocado", "lemonade",
    "notebook", "sunflower", "garden", "window", "bicycle", "library", "teacher", "pancake", "rainbow",
    "penguin", "octopus", "volcano", "harvest", "lantern", "compass", "marble", "puzzle", "rabbit",
)
ITEMS = (
    "apple", "pear", "fig", "plum", "grape", "lemon", "cherry", "mango", "kiwi", "peach", "dog", "cat",
    "horse", "goat", "sheep", "duck", "owl", "fox", "red", "blue", "green", "orange", "purple", "chair",
    "table", "lamp", "spoon", "fork", "cup", "plate", "pen", "book", "shoe", "hat", "coat", "sock",
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
JUST_NUMBER = "Answer with just the number."


def _task_add(rng: random.Random) -> Task:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    q = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} plus {b}."]).format(a=a, b=b)
    return Task("add", f"{q} {JUST_NUMBER}", str(a + b))


def _task_subtract(rng: random.Random) -> Task:
    a, b = rng.randint(20, 99), rng.randint(2, 19)
    q = rng.choice(["What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}."]).format(a=a, b=b)
    return Task("subtract", f"{q} {JUST_NUMBER}", str(a - b))


def _task_multiply(rng: random.Random) -> Task:
    a, b = rng.randint(2, 12), rng.randint(3, 19)
    q = rng.choice(["What is {a} x {b}?", "Multiply {a} by {b}.", "What is {a} times {b}?"]).format(a=a, b=b)
    return Task("multiply", f"{q} {JUST_NUMBER}", str(a * b))


def _task_count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    q = rng.choice([
        "How many times does the letter '{l}' appear in the word '{w}'?",
        "Count the letter '{l}' in '{w}'.",
    ]).format(l=letter, w=word)
    return Task("count_letter", f"{q} {JUST_NUMBER}", str(word.count(letter)))


def _task_count_items(rng: random.Random) -> Task:
    items = rng.sample(ITEMS, rng.randint(3, 9))
    q = rng.choice(["How many items are in this list: {x}?", "Count the items in the list: {x}."])
    return Task("count_items", f"{q.format(x=', '.join(items))} {JUST_NUMBER}", str(len(items)))


def _task_km(rng: random.Random) -> Task:
    km = rng.randint(1, 199) / 10
    return Task("km_to_m", f"How many metres are in {format_number(km)} km? {JUST_NUMBER}", str(round(km * 1000)))


def _task_hours(rng: random.Random) -> Task:
    hours = rng.randint(1, 48) / 4
    return Task("hours_to_minutes", f"How many minutes are in {format_number(hours)} hours? {JUST_NUMBER}",
                str(round(hours * 60)))


def _task_kg(rng: random.Random) -> Task:
    kg = rng.randint(1, 400) / 20
    return Task("kg_to_g", f"Convert {format_number(kg)} kg to grams. {JUST_NUMBER}", str(round(kg * 1000)))


def _task_sort(rng: random.Random) -> Task:
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    q = rng.choice(["Sort these numbers from smallest to largest: {x}.", "Put in ascending order: {x}."])
    prompt = f"{q.format(x=', '.join(map(str, numbers)))} Answer with just the numbers, separated by commas."
    return Task("sort", prompt, ", ".join(map(str, sorted(numbers))))


def _task_upper(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    q = rng.choice(["Write the word '{w}' in upper case.", "Reply with '{w}' in capital letters."]).format(w=word)
    return Task("upper_case", f"{q} Answer with just the word.", word.upper())


def _task_date(rng: random.Random) -> Task:
    year, month, day = rng.randint(1990, 2035), rng.randint(1, 12), rng.randint(1, 28)
    target = rng.choice(["DD/MM/YYYY", "MM/DD/YYYY"])
    answer = f"{day:02d}/{month:02d}/{year}" if target == "DD/MM/YYYY" else f"{month:02d}/{day:02d}/{year}"
    prompt = f"Write the date {year}-{month:02d}-{day:02d} in {target} format. Answer with just the date."
    return Task("date_format", prompt, answer)


TASK_MAKERS: dict[str, Callable[[random.Random], Task]] = {
    "add": _task_add,
    "subtract": _task_subtract,
    "multiply": _task_multiply,
    "count_letter": _task_count_letter,
    "count_items": _task_count_items,
    "km_to_m": _task_km,
    "hours_to_minutes": _task_hours,
    "kg_to_g": _task_kg,
    "sort": _task_sort,
    "upper_case": _task_upper,
    "date_format": _task_date,
}


# --- composing responses ---------------------------------------------------------------------------------

UNITS = {"km_to_m": "metres", "hours_to_minutes": "minutes", "kg_to_g": "grams", "count_items": "items"}

SHORT_TEMPLATES = ("The answer is {a}.", "Answer: {a}", "It's {a}.", "Sure! {a}", "{a}, of course.", "That gives {a}.")
PADDED_TEMPLATES = (
    "{a}. Let me know if you need anything else!",
    "The result is {a}, which I double-checked.",
    "{a} - I worked this out quickly, so it should be right.",
    "Good question. After a moment of thought: {a}",
    "Here you go, the answer you asked for is {a}.",
    "I believe it is {a}, if I read the question correctly.",
)
CHATTY_TEMPLATES = (
    "Let's work through this step by step. {work} Putting it all together, the answer is {a}.",
    "Great question! I'm happy to help with this. {work} So after checking carefully, the final answer is {a}.",
    "Sure, here is how to think about it. {work} Double-checking the result, I get {a}.",
    "Okay. {work} I hope this helps, and let me know if you have more questions! Answer: {a}",
)
REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I don't have personal opinions on this.",
    "Could you clarify what you mean? The question is not clear to me.",
    "Here's a fun fact instead: octopuses have three hearts.",
    "That depends on many factors, so there is no single answer.",
)
WORK = {
    "add": "We need to add the two numbers, first the tens and then the ones.",
    "subtract": "We take the second number away from the first one.",
    "multiply": "Multiplication is repeated addition, so we add the first number again and again.",
    "count_letter": "I will go through the word letter by letter and keep a running count.",
    "count_items": "I will count the entries separated by commas.",
    "km_to_m": "One kilometre is a thousand metres, so we multiply by a thousand.",
    "hours_to_minutes": "Each hour has sixty minutes, so we multiply by sixty.",
    "kg_to_g": "One kilogram is a thousand grams, so we multiply by a thousand.",
    "sort": "I compare the numbers and repeatedly move the smallest remaining one to the front.",
    "upper_case": "Upper case means every letter becomes a capital letter.",
    "date_format": "The date is given as year, month and day, so I rearrange the parts.",
}


def _near_number(task: Task, rng: random.Random) -> str:
    """A wrong number inside the partial-credit tolerance (off by one for small answers, ~1-4% for large)."""
    y = int(task.answer)
    tol = max(2.0, 0.1 * abs(y))
    step = 1 if abs(y) < 100 else max(1, round(abs(y) * rng.choice([0.01, 0.02, 0.04])))
    step = min(step, int(math.ceil(tol)) - 1) or 1
    x = y + rng.choice([-1, 1]) * step
    if x < 0 or x == y:
        x = y + step
    return str(x)


def _far_number(task: Task, rng: random.Random) -> str:
    """A typical blunder: the wrong operation, a wrong conversion factor, a miscount far off."""
    y = int(task.answer)
    nums = [int(n) for n in re.findall(r"\d+", task.prompt.split("?")[0])]
    if task.task in ("km_to_m", "kg_to_g", "hours_to_minutes"):
        value = float(re.findall(r"\d+(?:\.\d+)?", task.prompt)[0])
        factor = {"km_to_m": 1000, "kg_to_g": 1000, "hours_to_minutes": 60}[task.task]
        options = [value * factor / 10, value * factor * 10, value, value * 100]
    elif task.task in ("add", "subtract", "multiply") and len(nums) >= 2:
        a, b = nums[0], nums[1]
        options = [a * b, a + b, a - b, y + 10 * rng.randint(1, 5)]
    else:
        options = [y + rng.randint(3, 7), y * 2 + 3]
    tol = max(2.0, 0.1 * abs(y))
    options = [o for o in options if abs(o - y) > tol and o >= 0]
    x = rng.choice(options) if options else y + int(tol) + 5
    return format_number(float(x))


def _near_list(task: Task, rng: random.Random) -> str:
    """The sorted list with one adjacent pair swapped."""
    xs = task.answer.split(", ")
    i = rng.randrange(len(xs) - 1)
    xs[i], xs[i + 1] = xs[i + 1], xs[i]
    return ", ".join(xs)


def _far_list(task: Task, rng: random.Random) -> str:
    """Descending order, or a list with a number changed."""
    xs = task.answer.split(", ")
    if rng.random() < 0.5:
        return ", ".join(reversed(xs))
    xs[rng.randrange(len(xs))] = str(rng.randint(100, 999))
    return ", ".join(xs)


def _near_text(task: Task, rng: random.Random) -> str:
    """One character off (upper case), or the date with one slip (separator, or a day off by one)."""
    a = task.answer
    if task.task == "date_format":
        if rng.random() < 0.5:
            return a.replace("/", "-")
        parts = a.split("/")
        i = 0 if task.prompt.endswith("DD/MM/YYYY format. Answer with just the date.") else 1
        parts[i] = f"{int(parts[i]) % 28 + 1:02d}"
        return "/".join(parts)
    i = rng.randrange(len(a))
    return a[:i] + a[i + 1:] if rng.random() < 0.5 else a[:i] + a[i].lower() + a[i + 1:]


def _far_text(task: Task, rng: random.Random) -> str:
    """The word in the wrong case, or the date left as it was / written out."""
    if task.task == "date_format":
        iso = re.search(r"\d{4}-\d{2}-\d{2}", task.prompt).group()
        year, month, day = (int(x) for x in iso.split("-"))
        return rng.choice([iso, f"{day} {MONTHS[month - 1]} {year}"])
    word = task.answer.lower()
    return rng.choice([word, word.capitalize()])


NEAR = {"number": _near_number, "list": _near_list, "text": _near_text}
FAR = {"number": _far_number, "list": _far_list, "text": _far_text}


def _short(task: Task, answer: str, rng: random.Random) -> str:
    if task.task in UNITS and rng.random() < 0.4:
        return f"{answer} {UNITS[task.task]}"
    return rng.choice(SHORT_TEMPLATES).format(a=answer)


def _chatty(task: Task, answer: str, rng: random.Random) -> str:
    return rng.choice(CHATTY_TEMPLATES).format(work=WORK[task.task], a=answer)


def compose_response(task: Task, kind: str, rng: random.Random) -> str:
    """A response of ``kind`` (one of :data:`RESPONSE_KINDS`) for ``task``. Its grade is for :func:`grade`."""
    kind_type = task.answer_type
    if kind == "exact":
        return task.answer
    if kind == "short":
        return _short(task, task.answer, rng)
    if kind == "padded":
        return rng.choice(PADDED_TEMPLATES).format(a=task.answer)
    if kind == "chatty":
        return _chatty(task, task.answer, rng)
    if kind == "near":
        return NEAR[kind_type](task, rng)
    if kind == "near_chatty":
        return _chatty(task, NEAR[kind_type](task, rng), rng)
    if kind == "far":
        wrong = FAR[kind_type](task, rng)
        return wrong if rng.random() < 0.6 else _short(task, wrong, rng)
    if kind == "refusal":
        return rng.choice(REFUSALS)
    raise ValueError(f"unknown response kind {kind!r}")


# --- the data set ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the generated set; the same config always gives the same bytes.

    ``prompts`` distinct prompts, of which ``round(eval_fraction * prompts)`` are held out (disjoint by
    prompt); each prompt gets ``responses_per_prompt`` responses of different kinds and at most
    ``pairs_per_prompt`` pairs with different grades.
    """

    seed: int = 0
    prompts: int = 400
    eval_fraction: float = 0.15
    responses_per_prompt: int = 5
    pairs_per_prompt: int = 4
    tasks: tuple[str, ...] = tuple(TASKS)

    def validate(self) -> None:
        if self.prompts < 2:
            raise UserError(f"prompts must be at least 2 (got {self.prompts})")
        if not 0.0 < self.eval_fraction < 1.0:
            raise UserError(f"eval_fraction must lie strictly between 0 and 1 (got {self.eval_fraction})")
        if not 2 <= self.responses_per_prompt <= len(RESPONSE_KINDS):
            raise UserError(f"responses_per_prompt must lie in 2..{len(RESPONSE_KINDS)} (got {self.responses_per_prompt})")
        if self.pairs_per_prompt < 1:
            raise UserError(f"pairs_per_prompt must be at least 1 (got {self.pairs_per_prompt})")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise UserError(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")


@dataclass
class SyntheticData:
    """Rows ready to write: pairs and prompts for each split, and every graded response (for summaries)."""

    config: SyntheticConfig
    train_pairs: list[dict[str, Any]] = field(default_factory=list)
    eval_pairs: list[dict[str, Any]] = field(default_factory=list)
    train_prompts: list[dict[str, Any]] = field(default_factory=list)
    eval_prompts: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)


def _distinct_tasks(config: SyntheticConfig, rng: random.Random) -> list[Task]:
    """``config.prompts`` tasks with distinct prompt texts, task types in round robin."""
    seen: set[str] = set()
    tasks: list[Task] = []
    for i in range(config.prompts):
        name = config.tasks[i % len(config.tasks)]
        for _ in range(100):
            task = TASK_MAKERS[name](rng)
            if task.prompt not in seen:
                break
            name = rng.choice(config.tasks)  # this type may be exhausted; try another
        else:
            raise UserError(f"cannot make {config.prompts} distinct prompts from tasks {list(config.tasks)}; ask for fewer")
        seen.add(task.prompt)
        tasks.append(task)
    return tasks


def build(config: SyntheticConfig = SyntheticConfig()) -> SyntheticData:
    """Generate tasks, responses, grades and pairs, all from one ``random.Random(config.seed)`` stream.

    Pairs: for each prompt, every two responses with different grades, shuffled, the first
    ``pairs_per_prompt`` kept; ``chosen`` is the higher-graded one. Equal grades make no pair.
    """
    config.validate()
    rng = random.Random(f"mmpo-graded-tasks-v{FORMAT_VERSION}:{config.seed}")
    tasks = _distinct_tasks(config, rng)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    n_eval = min(len(tasks) - 1, max(1, round(config.eval_fraction * len(tasks))))
    eval_ids = set(order[:n_eval])
    data = SyntheticData(config)
    for i, task in enumerate(tasks):
        prompt_id = f"p{i:05d}"
        split = "eval" if i in eval_ids else "train"
        meta = {"prompt_id": prompt_id, "task": task.task, "answer": task.answer}
        (data.eval_prompts if split == "eval" else data.train_prompts).append({"prompt": task.prompt, **meta})
        kinds = rng.sample(RESPONSE_KINDS, config.responses_per_prompt)
        graded = []
        for kind in kinds:
            text = compose_response(task, kind, rng)
            score = grade(task, text)
            graded.append((kind, text, score))
            data.responses.append({"prompt_id": prompt_id, "split": split, "task": task.task, "kind": kind,
                                   "response": text, "score": score})
        candidates = [(a, b) for ai, a in enumerate(graded) for b in graded[ai + 1:] if a[2] != b[2] and a[1] != b[1]]
        rng.shuffle(candidates)
        for a, b in candidates[: config.pairs_per_prompt]:
            hi, lo = (a, b) if a[2] > b[2] else (b, a)
            row = {
                "prompt": task.prompt,
                "chosen": hi[1],
                "rejected": lo[1],
                "score_chosen": hi[2],
                "score_rejected": lo[2],
                **meta,
                "kind_chosen": hi[0],
                "kind_rejected": lo[0],
            }
            (data.eval_pairs if split == "eval" else data.train_pairs).append(row)
    return data


def margin_histogram(pairs: list[Mapping[str, Any]], edges: tuple[float, ...] = (0, 1, 2, 3, 4, 6, 8, 10)) -> dict[str, int]:
    """Pair counts by margin ``score_chosen - score_rejected`` in bins ``(lo, hi]``."""
    counts: dict[str, int] = {f"({lo:g}, {hi:g}]": 0 for lo, hi in zip(edges, edges[1:])}
    for row in pairs:
        m = round(row["score_chosen"] - row["score_rejected"], 1)
        for lo, hi in zip(edges, edges[1:]):
            if lo < m <= hi:
                counts[f"({lo:g}, {hi:g}]"] += 1
                break
    return counts


def summarize(data: SyntheticData) -> dict[str, Any]:
    """Counts, margin histograms and the score of each response kind (as graded), for printing and docs."""
    all_pairs = data.train_pairs + data.eval_pairs
    by_kind: dict[str, list[float]] = {k: [] for k in RESPONSE_KINDS}
    for r in data.responses:
        by_kind[r["kind"]].append(r["score"])
    kinds = {}
    for k, scores in by_kind.items():
        if scores:
            kinds[k] = {
                "n": len(scores),
                "mean": round(sum(scores) / len(scores), 2),
                "min": min(scores),
                "max": max(scores),
                "share_full": round(sum(s == FULL_SCORE for s in scores) / len(scores), 3),
                "share_zero": round(sum(s == 0 for s in scores) / len(scores), 3),
            }
    margins = sorted({round(p["score_chosen"] - p["score_rejected"], 1) for p in all_pairs})
    return {
        "format_version": FORMAT_VERSION,
        "config": {**asdict(data.config), "tasks": list(data.config.tasks)},
        "prompts": {"train": len(data.train_prompts), "eval": len(data.eval_prompts)},
        "pairs": {"train": len(data.train_pairs), "eval": len(data.eval_pairs)},
        "tasks": dict(sorted(Counter(p["task"] for p in data.train_prompts + data.eval_prompts).items())),
        "distinct_margins": len(margins),
        "margin_histogram": {"train": margin_histogram(data.train_pairs), "eval": margin_histogram(data.eval_pairs)},
        "response_scores": kinds,
    }


FILES = ("train.jsonl", "eval.jsonl", "prompts_train.jsonl", "prompts_eval.jsonl", "responses.jsonl", "summary.json")


def write(data: SyntheticData, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the set to ``out_dir`` (created if needed); only the files in :data:`FILES` are touched."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path is a file, not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    write_jsonl_atomic(paths["train.jsonl"], data.train_pairs)
    write_jsonl_atomic(paths["eval.jsonl"], data.eval_pairs)
    write_jsonl_atomic(paths["prompts_train.jsonl"], data.train_prompts)
    write_jsonl_atomic(paths["prompts_eval.jsonl"], data.eval_prompts)
    write_jsonl_atomic(paths["responses.jsonl"], data.responses)
    atomic_write_text(paths["summary.json"], json.dumps(summarize(data), indent=2) + "\n")
    return paths


def default_dir(seed: int) -> Path:
    """``<cache>/data/graded-tasks-<seed>``."""
    from mmpo.paths import cache_dir

    return cache_dir() / "data" / f"graded-tasks-{seed}"


def generate_if_default_and_missing(spec: Any) -> Path | None:
    """Make the graded-tasks set on first use: when ``spec`` (a data path, or a mapping with ``path``) names a
    file of :data:`FILES` under ``<cache>/data/graded-tasks-<seed>/`` that does not exist yet, write the set as
    ``mmpo make-data --seed <seed>`` does (default sizes) and return its directory; otherwise do nothing.

    Under several processes each may write it: the bytes are the same and every file is renamed into place.
    """
    text = spec.get("path") if isinstance(spec, dict) else spec
    if not isinstance(text, (str, os.PathLike)):
        return None
    path = Path(text).expanduser()
    m = re.fullmatch(r"graded-tasks-(\d+)", path.parent.name)
    if path.exists() or m is None or path.name not in FILES:
        return None
    if path.parent.resolve() != default_dir(int(m.group(1))).resolve():
        return None
    make_dataset(SyntheticConfig(seed=int(m.group(1))), path.parent, reuse=True)  # prints where it wrote
    return path.parent


def make_dataset(config: SyntheticConfig = SyntheticConfig(), out_dir: str | os.PathLike | None = None,
                 reuse: bool = False) -> tuple[Path, dict[str, Any]]:
    """Build and write the set; returns ``(directory, summary)``.

    With ``reuse=True`` an existing directory whose ``summary.json`` records the same config is returned as
    it is (generation is deterministic, so rebuilding would write the same bytes); when it has to be made, a line
    says where (a run that names the set makes it on first use, and the user should see where it went).
    """
    out = Path(out_dir) if out_dir is not None else default_dir(config.seed)
    if reuse and (out / "summary.json").exists() and all((out / n).exists() for n in FILES):
        try:
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            summary = {}
        if summary.get("config") == {**asdict(config), "tasks": list(config.tasks)} and summary.get("format_version") == FORMAT_VERSION:
            return out, summary
    data = build(config)
    write(data, out)
    if reuse:
        print(f"made the graded-tasks data set (seed {config.seed}) at {out}, as `mmpo make-data --seed {config.seed}` does")
    return out, summarize(data)
