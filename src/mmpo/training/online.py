"""`mmpo online`: on-policy MMPO. Each round samples from the current policy, grades the samples, pairs them
with their grade margins and trains a few steps on those pairs; then the next round samples from the result.

One round, each phase written to ``output_dir/round-R/`` before the next starts, so a rerun of the same
command continues where a crash left off (finished phases are read back, unfinished ones redone):

1. ``samples.jsonl``  ``samples_per_prompt`` sampled answers to each of the round's prompts (one line each);
   generation batches are seeded on their own, so a redone batch gives the same answers.
2. ``graded.jsonl``   the same lines with every answer's grade (``null`` = the grader failed after retries:
   counted as missing, never replaced by a default).
3. ``pairs.jsonl``    pairs from :func:`graded_pairs` in the local-file schema (``prompt``, ``chosen``,
   ``rejected``, ``score_chosen``, ``score_rejected``): MMPO's target is ``sigmoid(gamma * grade margin)``.
4. ``policy/``        ``mmpo dpo`` on those pairs for ``steps_per_round`` steps, starting from the previous
   round's policy, against the initial model or the previous policy (``round_reference``); resumes from its
   own checkpoints. ``reference: adapter`` (the LoRA base with the adapter off) is the round's starting policy,
   so it goes with ``round_reference: previous`` only; ``auto`` uses it while the reference is the starting
   policy and precomputes the initial model's log-probs otherwise.
   A round without pairs trains nothing and writes no ``policy/``: the policy is carried over as it is (no
   copy), and the next round starts from the last round's that trained.
5. ``eval.jsonl``     greedy answers to the held-out prompts, graded; ``round.json`` closes the round.

``output_dir/log.jsonl`` has one line per finished round: the samples' mean grade, the share of candidate
pairs kept, the training metrics and the held-out mean grade (round 0 = the starting model, with the count of
held-out prompts that also occur in the training prompts: any is refused unless ``allow_eval_overlap``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpo.config import DPOConfig, check_ranges
from mmpo.data.records import Message, prompt_overlap
from mmpo.errors import UserError
from mmpo.graders import ScoreItem, grader_kind
from mmpo.host_memory import prepare_host
from mmpo.io import append_jsonl, atomic_write_text, read_jsonl, write_jsonl_atomic
from mmpo.training.files import RunFiles
from mmpo.training.run import TrainSummary
from mmpo.training.run_dir import read_metrics

PAIRINGS = ("all", "best_worst")
ROUND_REFERENCES = ("initial", "previous")


@dataclass
class OnlineConfig(DPOConfig):
    """`mmpo online`: the `mmpo dpo` keys (they shape each round's training) plus the round loop's keys."""

    rounds: int = field(default=3, metadata={"help": "number of sample -> grade -> train rounds"})
    prompts: Any = field(default=None, metadata={"help": "JSONL of training prompts: `prompt` (text or messages) plus any fields the grader reads"})
    eval_prompts: Any = field(default=None, metadata={"help": "JSONL of held-out prompts, answered greedily and graded after every round"})
    prompts_per_round: int | None = field(default=32, metadata={"help": "prompts sampled (seeded) from `prompts` each round; none = all"})
    max_eval_prompts: int | None = field(default=None, metadata={"help": "use only the first N held-out prompts; none = all"})
    samples_per_prompt: int = field(default=4, metadata={"help": "answers sampled per prompt per round (k)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the round's answers"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold of the round's answers"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest answer sampled or generated for evaluation"})
    generation_batch_size: int = field(default=8, metadata={"help": "prompts per generate call"})
    pairing: str = field(default="all", metadata={"help": "all: every two differently graded answers; best_worst: top vs bottom per prompt"})
    grader: Any = field(default="checker:graded-tasks", metadata={"help": "checker:graded-tasks, checker:module:function, reward_model:DIR or judge:MODEL@URL (see mmpo.graders)"})
    grader_retries: int = field(default=2, metadata={"help": "retries of a failed grading call before its answers count as missing"})
    grader_retry_wait: float = field(default=0.5, metadata={"help": "seconds before the first retry; doubled for each further one"})
    steps_per_round: int = field(default=16, metadata={"help": "training steps on each round's pairs"})
    sampler_urls: Any = field(default=None, metadata={"help": "OpenAI-compatible servers (vLLM, mmpo serve) that sample the rounds' answers: a list or URLs separated by commas; none = sample in this process"})
    sampler_model: str | None = field(default=None, metadata={"help": "the base model's name on the sampler_urls servers; none = the model their /v1/models lists"})
    adapter_dir: str | None = field(default=None, metadata={"help": "with sampler_urls: a folder the servers can read where each round's LoRA adapter is copied before they load it; none = the round's own policy/ folder"})
    sampler_concurrency: int = field(default=4, metadata={"help": "with sampler_urls: requests in flight per server"})
    sampler_retries: int = field(default=2, metadata={"help": "with sampler_urls: retries of a request that times out or gets a 5xx before its server counts as down"})
    sampler_timeout: float = field(default=300.0, metadata={"help": "with sampler_urls: seconds one request may take"})
    grader_concurrency: int = field(default=1, metadata={"help": "prompts graded at once (threads); above 1 the grader must be safe to call from several threads (checkers and judges are)"})
    round_reference: str = field(default="initial", metadata={"help": "reference policy of every round: initial (the starting model) or previous (the last round's policy)"})
    output_dir: str = field(default="runs/online", metadata={"help": "where rounds, checkpoints and log.jsonl go"})

    def validate(self) -> None:
        if self.prompts is None:
            raise UserError("no prompts: set `prompts` (a JSONL file with a `prompt` field) in the recipe or pass --prompts PATH")
        if self.data is None:
            self.data = "(each round's pairs)"  # filled in per round; DPOConfig's check wants a value
        super().validate()
        check_ranges(self, ONLINE_RANGES)
        if self.pairing not in PAIRINGS:
            raise UserError(f"pairing must be one of {', '.join(PAIRINGS)} (got {self.pairing!r})")
        if self.round_reference not in ROUND_REFERENCES:
            raise UserError(f"round_reference must be one of {', '.join(ROUND_REFERENCES)} (got {self.round_reference!r})")
        if self.ref_model is not None and self.round_reference == "previous":
            raise UserError("ref_model is the reference of round_reference: initial only; with round_reference: previous "
                            "each round's reference is the last round's policy: drop ref_model or use round_reference: initial")
        if self.sampler_urls is not None:
            from mmpo.evaluation.judge_client import parse_urls

            self.sampler_urls = parse_urls(self.sampler_urls, "sampler_urls")
            if self.lora_r <= 0:
                # vLLM loads LoRA adapters at run time but cannot swap a server's base weights.
                raise UserError("sampler_urls needs lora_r > 0: servers load each round's LoRA adapter at run time but "
                                "cannot swap full weights; for full fine-tuning drop sampler_urls (sample in this process)")
            from mmpo.models.loading import is_adapter_dir

            if is_adapter_dir(os.path.expanduser(str(self.model))):
                # The servers serve the base model; round 1 and round 0's evaluation would sample it, not the adapter.
                raise UserError(f"model {self.model} is a LoRA adapter: with sampler_urls the servers would sample "
                                "their base model, not it; give the adapter merged into its base (peft's merge_and_unload) instead")
            if self.reference == "adapter":
                raise UserError("reference: adapter with sampler_urls: each round trains the last round's adapter on, so "
                                "its base with the adapter off is the starting model only in round 1; use reference: "
                                "auto, precomputed or model")
        if self.grader_concurrency > 1 and grader_kind(self.grader) == "reward_model":
            # One reward model is shared by every grading thread, and its forward passes are not thread-safe.
            raise UserError("grader_concurrency > 1 with a reward_model grader: the one model would be called from "
                            "several threads at once; set grader_concurrency: 1 (checkers and judges may go above 1)")
        if self.reference == "adapter" and self.round_reference == "initial":
            # From round 2 on, the LoRA base with its adapter off is the last round's policy, not the initial model.
            raise UserError("reference: adapter with round_reference: initial: from round 2 on the adapter's base is the "
                            "previous round's policy; use round_reference: previous, or reference: auto, precomputed or model")


ONLINE_RANGES = {
    "rounds": (">= 1", {"low": 1}),
    "prompts_per_round": (">= 1 or none", {"low": 1, "optional": True}),
    "max_eval_prompts": (">= 1 or none", {"low": 1, "optional": True}),
    "samples_per_prompt": (">= 2", {"low": 2}),
    "temperature": (">= 0", {"low": 0}),
    "top_p": ("in (0, 1]", {"low": 0, "low_open": True, "high": 1}),
    "max_new_tokens": (">= 1", {"low": 1}),
    "generation_batch_size": (">= 1", {"low": 1}),
    "grader_retries": (">= 0", {"low": 0}),
    "grader_retry_wait": (">= 0", {"low": 0}),
    "steps_per_round": (">= 1", {"low": 1}),
    "sampler_concurrency": (">= 1", {"low": 1}),
    "sampler_retries": (">= 0", {"low": 0}),
    "sampler_timeout": ("> 0", {"low": 0, "low_open": True}),
    "grader_concurrency": (">= 1", {"low": 1}),
}


# --- pairs from graded samples (pure) --------------------------------------------------------------------


@dataclass
class PairCounts:
    """Candidate pairs of one prompt or round: ``kept`` + ``ties`` = ``candidates``; answers without a grade are ``missing``."""

    candidates: int = 0
    kept: int = 0
    ties: int = 0
    missing: int = 0

    def add(self, other: "PairCounts") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def graded_pairs(responses: Sequence[str], grades: Sequence[float | None], pairing: str = "all") -> tuple[list[tuple[int, int]], PairCounts]:
    """Pairs ``(chosen, rejected)`` of answer indices, the chosen one graded strictly higher.

    ``all``: every two graded answers (``n (n - 1) / 2`` candidates); ``best_worst``: one candidate, the first
    highest- against the first lowest-graded answer. Candidates with equal grades are ties: dropped and
    counted (they carry no preference); answers graded ``None`` are left out and counted as missing.
    The margin of pair ``(c, r)`` is ``grades[c] - grades[r] > 0``.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}")
    graded = [i for i, g in enumerate(grades) if g is not None]
    counts = PairCounts(missing=len(grades) - len(graded))
    if len(graded) < 2:
        return [], counts
    if pairing == "all":
        candidates = [(a, b) for n, a in enumerate(graded) for b in graded[n + 1:]]
    else:
        best = max(graded, key=lambda i: grades[i])
        worst = min(graded, key=lambda i: grades[i])
        candidates = [(best, worst)]
    pairs = []
    for a, b in candidates:
        counts.candidates += 1
        if grades[a] == grades[b]:
            counts.ties += 1
            continue
        pairs.append((a, b) if grades[a] > grades[b] else (b, a))
        counts.kept += 1
    return pairs, counts


def round_training_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A round's training numbers from its ``metrics.jsonl``: ``train_loss``, Trainer's mean loss over every step of
    the run (its end-of-training line), and ``train_accuracy``, the mean over the logged steps: each logging line
    holds the mean since the previous one, so it is weighted by the steps it covers,
    ``sum_i acc_i * (step_i - step_{i-1}) / step_last``. ``last_step``: the last logged training step."""
    logs = [x for x in records if "loss" in x and "step" in x]
    final = [x for x in records if "train_loss" in x]
    out: dict[str, Any] = {"train_loss": final[-1]["train_loss"] if final else None, "train_accuracy": None}
    weighted, previous = 0.0, 0
    for x in logs:
        if x.get("train_accuracy") is not None and x["step"] > previous:
            weighted += x["train_accuracy"] * (x["step"] - previous)
            previous = x["step"]
    if previous:
        out["train_accuracy"] = weighted / previous
        out["last_step"] = previous
    return out


# --- graders ---------------------------------------------------------------------------------------------


# A grader here is any ``score(items) -> list[float | None]`` over :class:`mmpo.graders.ScoreItem`: the
# ``score`` method of a :class:`mmpo.graders.Grader` (checker, reward model or judge), or a plain function.
GradeFn = Callable[[Sequence[ScoreItem]], list[float | None]]


def load_grader(spec: Any) -> GradeFn:
    """A callable, or a :func:`mmpo.graders.load_grader` spec (``checker:graded-tasks``, ``checker:module:function``,
    ``reward_model:DIR``, ``judge:MODEL@URL``, or a mapping) turned into its ``score`` method."""
    if callable(spec):
        return spec
    from mmpo.graders import load_grader as build

    return build(spec, progress=False).score


def grade_with_retries(grader: GradeFn, requests: Sequence[ScoreItem], retries: int, wait_s: float = 0.5) -> tuple[list[float | None], int]:
    """Grades of ``requests``, calling ``grader`` again (after ``wait_s * 2**attempt``) when it raises or
    returns a non-finite grade. Returns ``(grades, failed_calls)``; what still fails is ``None`` (missing)."""
    grades: list[float | None] = [None] * len(requests)
    todo = list(range(len(requests)))
    failed_calls = 0
    for attempt in range(retries + 1):
        if not todo:
            break
        if attempt:
            time.sleep(wait_s * 2 ** (attempt - 1))
        try:
            got = grader([requests[i] for i in todo])
            if len(got) != len(todo):
                raise RuntimeError(f"grader returned {len(got)} grades for {len(todo)} answers")
        except Exception as e:  # noqa: BLE001 - any grader failure is retried, then counted as missing
            failed_calls += 1
            print(f"grader failed ({type(e).__name__}: {str(e)[:120]}); attempt {attempt + 1} of {retries + 1}", flush=True)
            continue
        still = []
        for i, g in zip(todo, got):
            if g is not None and math.isfinite(float(g)):
                grades[i] = float(g)
            else:
                still.append(i)
        todo = still
    return grades, failed_calls


# --- files ---------------------------------------------------------------------------------------------


GRADED_TASKS = {"graded-tasks": "prompts_train.jsonl", "graded-tasks-eval": "prompts_eval.jsonl"}


def prompt_file(spec: Any) -> Path:
    """The file a ``prompts`` / ``eval_prompts`` value names. ``graded-tasks`` / ``graded-tasks-eval`` name the
    training / held-out prompts of the graded-tasks set (seed 0; written to the cache on first use, as
    ``mmpo make-data`` does)."""
    if spec in GRADED_TASKS:
        from mmpo.data.synthetic import SyntheticConfig, make_dataset

        data_dir, _ = make_dataset(SyntheticConfig(seed=0), reuse=True)
        spec = data_dir / GRADED_TASKS[spec]
    return Path(os.path.expandvars(os.path.expanduser(str(spec))))


def load_prompt_rows(spec: Any, what: str) -> list[dict[str, Any]]:
    """Prompt rows from a JSONL file (see :func:`prompt_file`): ``prompt`` as text or a message list, other fields
    kept for the grader."""
    path = prompt_file(spec)
    if not path.is_file():
        hint = " (run `mmpo make-data` for the graded-tasks prompts)" if "graded-tasks" in str(path) else ""
        raise UserError(f"{what} file not found: {path}{hint}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: row {n}: not valid JSON ({e.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            row["messages"] = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
            row["messages"] = prompt
        else:
            raise UserError(f"{path}: row {n}: field 'prompt' must be a non-empty string or a list of messages")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no prompts")
    return rows


def check_eval_prompts(config: OnlineConfig, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> int:
    """How many distinct held-out prompts also occur among the training prompts. The same file for both is
    refused, and so is any overlap unless ``allow_eval_overlap``: the held-out grade would score trained prompts."""
    if config.eval_prompts is not None and prompt_file(config.prompts).resolve() == prompt_file(config.eval_prompts).resolve():
        raise UserError(f"eval_prompts names the training prompts ({prompt_file(config.prompts)}): give held-out prompts "
                        "in another file")
    shared, distinct = prompt_overlap([r["messages"] for r in train_rows], [r["messages"] for r in eval_rows])
    if shared and not config.allow_eval_overlap:
        raise UserError(f"{shared} of {distinct} held-out prompts in eval_prompts also occur in prompts: the held-out grade "
                        "would score trained prompts; remove them, or set allow_eval_overlap: true to accept them")
    if eval_rows:
        print(f"held-out prompts: {distinct}, of which {shared} also in the training prompts", flush=True)
    return shared


def _seed(*parts: Any) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


# --- the loop ------------------------------------------------------------------------------------------


@dataclass
class OnlineRun:
    config: OnlineConfig
    grader: GradeFn
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    out: Path
    started: float = field(default_factory=time.time)
    sampler: Any = None  # a mmpo.training.sampling.Sampler; None = made from the config on first use

    def round_dir(self, r: int) -> Path:
        return self.out / f"round-{r}"

    def get_sampler(self) -> Any:
        if self.sampler is None:
            from mmpo.training.sampling import ServerSampler

            self.sampler = make_sampler(self.config)
            if isinstance(self.sampler, ServerSampler):
                self.sampler.adapter_prefix = self.adapter_prefix()
        return self.sampler

    def adapter_prefix(self) -> str:
        """``<output_dir name>-<hash of its path>-``: every adapter name of this run starts with it (the hash keeps
        runs that share servers apart)."""
        run = hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:6]
        return f"{self.out.name}-{run}-"

    def adapter_name(self, policy: str) -> str:
        """The name a round's policy is served under: :meth:`adapter_prefix` + ``<fingerprint of its weights>-round-R``
        (:func:`adapter_fingerprint`), so different weights never share a name, also across runs in the same
        output_dir."""
        return f"{self.adapter_prefix()}{adapter_fingerprint(policy)}-{Path(policy).parent.name}"

    def served_policy(self, policy: str) -> tuple[str, str | None]:
        """``(name, path)`` a sampler answers with for ``policy`` (a :meth:`policy_of` value): the starting model
        as itself (path None); with ``sampler_urls`` a round's adapter under :meth:`adapter_name`, copied to
        ``adapter_dir`` first when that is set (into a folder of that name, once; the copy appears whole or not at
        all, and one another process made first is kept)."""
        if policy == self.config.model:
            return policy, None
        if self.config.sampler_urls is None:
            return policy, policy
        name = self.adapter_name(policy)
        path = Path(policy).resolve()
        if self.config.adapter_dir is not None:
            target = Path(os.path.expanduser(str(self.config.adapter_dir))).resolve() / name
            if not target.is_dir():
                import shutil
                import tempfile

                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
                for f in path.iterdir():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
                try:
                    os.replace(tmp, target)
                except OSError:
                    # Another process copied the same adapter meanwhile (its name carries the weights' fingerprint).
                    shutil.rmtree(tmp, ignore_errors=True)
                    if not target.is_dir() or adapter_fingerprint(str(target)) != adapter_fingerprint(str(path)):
                        raise
            path = target
        return name, str(path)

    def use_policy(self, policy: str) -> None:
        """Point the sampler at ``policy``; with servers, record in the round's ``adapter.json`` that it is loaded."""
        name, path = self.served_policy(policy)
        sampler = self.get_sampler()
        sampler.use(name, path)
        if path is not None and self.config.sampler_urls is not None:
            state = {"name": name, "path": path, "loaded_on": [s.base for s in sampler.live()]}
            atomic_write_text(Path(policy).parent / "adapter.json", json.dumps(state, indent=2))

    def policy_of(self, r: int) -> str:
        """The policy after round ``r`` (round 0 = the starting model): the last round's up to ``r`` that trained
        (its ``policy/`` finished), since a round without pairs carries the policy over without a copy."""
        for k in range(r, 0, -1):
            policy = self.round_dir(k) / "policy"
            if RunFiles(policy).results.exists():
                return str(policy)
        return self.config.model

    # ---- phases ----
    def round_prompts(self, r: int) -> list[dict[str, Any]]:
        rows = self.train_rows
        k = self.config.prompts_per_round
        if k is None or k >= len(rows):
            return list(rows)
        picked = sorted(random.Random(_seed(self.config.seed, "prompts", r)).sample(range(len(rows)), k))
        return [rows[i] for i in picked]

    def generate(self, model: str, rows: list[dict[str, Any]], path: Path, num: int, temperature: float, desc: str, seed_key: str) -> list[dict[str, Any]]:
        """Answers for ``rows`` from the sampler, in its batches (``generation_batch_size`` prompts in process, one
        per request with servers), appended to ``path`` batch by batch as they finish; batches already in the
        file are kept, so a rerun continues. Each batch has its own seed, so a redone batch gives the same answers."""
        from mmpo.training.sampling import SamplingSettings

        cfg = self.config
        sampler = self.get_sampler()
        bs = max(1, sampler.batch_size)
        n_batches = math.ceil(len(rows) / bs)
        have = read_jsonl(path)
        done_batches = {b for b in {x["batch"] for x in have} if sum(x["batch"] == b for x in have) == len(rows[b * bs:(b + 1) * bs])}
        kept = [x for x in have if x["batch"] in done_batches]
        if len(kept) != len(have):
            write_jsonl_atomic(path, kept)  # drop a batch cut short by a crash; it is redone below
        todo = [b for b in range(n_batches) if b not in done_batches]
        if todo:
            self.use_policy(model)

            def record(k: int, texts: list[list[str]]) -> None:
                b = todo[k]
                batch = rows[b * bs:(b + 1) * bs]
                append_jsonl(path, [{"batch": b, "i": b * bs + j, "prompt": x["prompt"], "meta": _meta(x), "answers": t}
                                    for j, (x, t) in enumerate(zip(batch, texts))])

            sampler.sample([[x["messages"] for x in rows[b * bs:(b + 1) * bs]] for b in todo],
                           [_seed(cfg.seed, seed_key, b) for b in todo],
                           SamplingSettings(num, temperature, cfg.top_p, cfg.max_new_tokens), record, desc=desc)
        return sorted(read_jsonl(path), key=lambda x: x["i"])

    def grade(self, samples: list[dict[str, Any]], path: Path, desc: str) -> tuple[list[dict[str, Any]], int]:
        """Every answer's grade, one line per prompt appended to ``path`` as it finishes (``grader_concurrency``
        prompts at once); graded prompts are kept on rerun."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        done = {x["i"]: x for x in read_jsonl(path)}
        todo = [s for s in samples if s["i"] not in done]
        lock = threading.Lock()

        def grade_one(s: dict[str, Any]) -> int:
            requests = [ScoreItem(_messages(s["prompt"]), a, s["meta"]) for a in s["answers"]]
            grades, failed = grade_with_retries(self.grader, requests, self.config.grader_retries, self.config.grader_retry_wait)
            rec = {**s, "grades": grades}
            with lock:
                append_jsonl(path, [rec])
                done[s["i"]] = rec
            return failed

        bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=None if todo else True)
        failed_calls = 0
        workers = min(self.config.grader_concurrency, max(1, len(todo)))
        if workers == 1:
            for s in todo:
                failed_calls += grade_one(s)
                bar.update(1)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for failed in pool.map(grade_one, todo):
                    failed_calls += failed
                    bar.update(1)
        bar.close()
        return [done[s["i"]] for s in samples], failed_calls

    def evaluate(self, r: int, path: Path) -> dict[str, float]:
        cfg = self.config
        answers = self.generate(self.policy_of(r), self.eval_rows, path.with_name(path.stem + "-answers.jsonl"), 1, 0.0,
                                f"round {r}/{cfg.rounds} evaluate", "eval")
        graded, _ = self.grade(answers, path, f"round {r}/{cfg.rounds} grade held-out")
        grades = [g["grades"][0] for g in graded]
        ok = [g for g in grades if g is not None]
        return {
            "eval_mean_grade": sum(ok) / len(ok) if ok else math.nan,
            "eval_full_marks": sum(g >= 10.0 for g in ok) / len(ok) if ok else math.nan,
            "eval_missing": len(grades) - len(ok),
            "eval_n": len(grades),
        }

    def train(self, r: int, pairs_file: Path) -> dict[str, Any]:
        from mmpo.training.dpo import train_policy

        cfg = self.config
        names = {f.name for f in dataclasses.fields(DPOConfig)}
        values = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
        start = self.policy_of(r - 1)
        # The reference is the initial model (or the recipe's ref_model) or this round's starting policy;
        # ref_model None means "the starting model itself". `reference: auto` resolves per round: the LoRA base
        # (adapter) while the reference is the starting model, precomputed log-probs of the other model otherwise.
        ref = (cfg.ref_model or cfg.model) if cfg.round_reference == "initial" else start
        if cfg.sampler_urls is not None:
            # Servers load the round's policy as a LoRA adapter: keep it one (trained on from the last round's).
            values["merge_lora"] = False
        values.update(
            model=start,
            ref_model=None if ref == start else ref,
            data=str(pairs_file),
            eval_data=None,
            eval_split=0.0,
            max_steps=cfg.steps_per_round,
            output_dir=str(self.round_dir(r) / "policy"),
            seed=cfg.seed + r,
        )
        results = RunFiles(self.round_dir(r) / "policy").results
        summary = train_policy(DPOConfig(**values)) if not results.exists() else None
        stats = round_training_stats(read_metrics(self.round_dir(r) / "policy"))
        last_step = stats.pop("last_step", None)
        trained = summary is not None and not summary.reused
        return {**stats, "train_steps": summary.global_step if trained else last_step,
                "reference": summary.details.get("reference") if trained else None}

    def run_round(self, r: int) -> dict[str, Any]:
        cfg = self.config
        rd = self.round_dir(r)
        rd.mkdir(parents=True, exist_ok=True)
        done = rd / "round.json"
        if done.exists():
            return json.loads(done.read_text())
        self._say(r, "sample")
        rows = self.round_prompts(r)
        samples = self.generate(self.policy_of(r - 1), rows, rd / "samples.jsonl", cfg.samples_per_prompt, cfg.temperature,
                                f"round {r}/{cfg.rounds} sample", f"sample-{r}")
        self._say(r, "grade")
        graded, failed_calls = self.grade(samples, rd / "graded.jsonl", f"round {r}/{cfg.rounds} grade")
        counts = PairCounts()
        pairs = []
        all_grades = []
        for g in graded:
            idx, c = graded_pairs(g["answers"], g["grades"], cfg.pairing)
            counts.add(c)
            all_grades += [x for x in g["grades"] if x is not None]
            for a, b in idx:
                pairs.append({"prompt": g["prompt"], "chosen": g["answers"][a], "rejected": g["answers"][b],
                              "score_chosen": g["grades"][a], "score_rejected": g["grades"][b], "round": r, "i": g["i"]})
        write_jsonl_atomic(rd / "pairs.jsonl", pairs)
        record: dict[str, Any] = {
            "round": r,
            "samples_mean_grade": sum(all_grades) / len(all_grades) if all_grades else math.nan,
            "samples": sum(len(g["answers"]) for g in graded),
            "samples_missing": counts.missing,
            "grader_failed_calls": failed_calls,
            "pairs_candidates": counts.candidates,
            "pairs_kept": counts.kept,
            "pairs_ties": counts.ties,
            "share_kept": counts.kept / counts.candidates if counts.candidates else 0.0,
        }
        if pairs:
            self._say(r, f"train ({len(pairs)} pairs, {cfg.steps_per_round} steps, loss {cfg.loss})")
            record.update(self.train(r, rd / "pairs.jsonl"))
            if cfg.sampler_urls is not None:
                # Load the new adapter on the servers now (and unload the last one): the servers hold the latest policy.
                self.use_policy(self.policy_of(r))
        else:
            # Nothing to learn from: the policy is carried over unchanged (said, and recorded).
            print(f"round {r}: no pairs with different grades; the policy is carried over ({self.policy_of(r - 1)})",
                  flush=True)
        self._say(r, "evaluate")
        record.update(self.evaluate(r, rd / "eval.jsonl"))
        atomic_write_text(done, json.dumps(record, indent=2))
        return record

    def _say(self, r: int, phase: str) -> None:
        elapsed = time.time() - self.started
        print(f"== round {r}/{self.config.rounds}: {phase}  (elapsed {elapsed / 60:.1f} min)", flush=True)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_fingerprint(adapter_dir: str) -> str:
    """The first 10 hex digits of the sha256 of the adapter's weights file (``adapter_model.safetensors``, else
    ``adapter_model.bin``); UserError when ``adapter_dir`` holds neither."""
    for name in ADAPTER_WEIGHTS:
        weights = Path(adapter_dir) / name
        if weights.is_file():
            digest = hashlib.sha256()
            with weights.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()[:10]
    raise UserError(f"{adapter_dir}: no {' or '.join(ADAPTER_WEIGHTS)}: not a LoRA adapter the servers can load")


def make_sampler(config: OnlineConfig) -> Any:
    """The config's sampler: :class:`~mmpo.training.sampling.ServerSampler` over ``sampler_urls``, else
    :class:`~mmpo.training.sampling.InProcessSampler` in the precision training runs in (bf16: auto)."""
    from mmpo.training.sampling import InProcessSampler, ServerSampler

    if config.sampler_urls is not None:
        return ServerSampler(config.sampler_urls, model=config.sampler_model, concurrency=config.sampler_concurrency,
                             retries=config.sampler_retries, timeout=config.sampler_timeout)
    import torch

    from mmpo.training.args import use_bf16

    return InProcessSampler(config.generation_batch_size, torch.bfloat16 if use_bf16(config.bf16) else None)


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("prompt", "messages")}


def _messages(prompt: Any) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


# Keys an online run may change and still continue in its directory: more rounds extend it; the servers and how
# hard they and the grader are driven do not change what is sampled (switching to or from servers does).
EXTENDABLE_KEYS = frozenset({"rounds", "sampler_urls", "sampler_concurrency", "sampler_retries", "sampler_timeout",
                             "grader_concurrency"})


def refuse_other_settings(config: OnlineConfig, out: Path) -> None:
    """An ``output_dir`` whose ``config.yaml`` holds other settings (beyond bookkeeping keys and ``rounds``) is
    refused in one line: its rounds were made by another recipe and would be silently reused."""
    import yaml

    from mmpo.training.run_dir import config_as_saved, settings_differences

    saved_path = RunFiles(out).config
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    if (saved.get("sampler_urls") is None) != (config.sampler_urls is None):
        was = "servers (sampler_urls)" if saved.get("sampler_urls") is not None else "this process"
        raise UserError(f"{out} holds an online run sampled in {was}: keep sampling that way, or choose another output_dir")
    current = {k: v for k, v in config_as_saved(config).items() if k not in EXTENDABLE_KEYS}
    diffs = settings_differences(saved, current, config_as_saved(OnlineConfig()))
    if diffs:
        raise UserError(f"{out} holds an online run with other settings ({'; '.join(diffs)}): choose another output_dir "
                        "or delete it")


def train_online(config: OnlineConfig, grader: GradeFn | None = None) -> TrainSummary:
    """Run ``config.rounds`` rounds (resuming finished work in ``output_dir``).

    Returns a :class:`~mmpo.training.run.TrainSummary`: ``details["rounds"]`` holds ``log.jsonl``'s records
    (round 0 is the starting model's held-out evaluation), ``metrics`` the last round's held-out ``mean_grade``
    and ``full_marks``, ``global_step`` the training steps of every round together. ``grader`` overrides
    ``config.grader`` (for the API).
    """
    config.validate()
    prepare_host(config)
    train_rows = load_prompt_rows(config.prompts, "prompts")
    eval_rows = load_prompt_rows(config.eval_prompts, "eval_prompts") if config.eval_prompts is not None else []
    if config.max_eval_prompts is not None:
        eval_rows = eval_rows[: config.max_eval_prompts]
    overlap = check_eval_prompts(config, train_rows, eval_rows)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = OnlineRun(config, grader or load_grader(config.grader), train_rows, eval_rows, out)
    from mmpo.config import save_config

    refuse_other_settings(config, out)
    save_config(config, RunFiles(out).config)
    records = []
    base = out / "round-0" / "round.json"
    if base.exists():
        records.append(json.loads(base.read_text()))
    else:
        (out / "round-0").mkdir(exist_ok=True)
        run._say(0, "evaluate the starting model")
        rec = {"round": 0, "eval_prompts_in_training": overlap,
               **(run.evaluate(0, out / "round-0" / "eval.jsonl") if eval_rows else {})}
        atomic_write_text(base, json.dumps(rec, indent=2))
        records.append(rec)
    for r in range(1, config.rounds + 1):
        t0 = time.time()
        records.append(run.run_round(r))
        per_round = time.time() - t0
        left = config.rounds - r
        if left:
            print(f"round {r} took {per_round / 60:.1f} min; about {left * per_round / 60:.0f} min left", flush=True)
        write_jsonl_atomic(RunFiles(out).online_log, records)
    write_jsonl_atomic(RunFiles(out).online_log, records)
    print(render_log(records))
    last = records[-1]
    metrics = {key: last[f"eval_{key}"] for key in ("mean_grade", "full_marks") if last.get(f"eval_{key}") is not None}
    return TrainSummary(output_dir=str(out), kind="online", global_step=sum(r.get("train_steps") or 0 for r in records),
                        metrics=metrics, details={"rounds": records})


def render_log(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the rounds."""
    def f(x: Any, spec: str = ".2f") -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    lines = ["| round | samples: mean grade | pairs kept | share kept | train loss | held-out mean grade | held-out full marks |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['round']} | {f(r.get('samples_mean_grade'))} | {r.get('pairs_kept', '')} | {f(r.get('share_kept'), '.0%')} | "
                     f"{f(r.get('train_loss'), '.4f')} | {f(r.get('eval_mean_grade'))} | {f(r.get('eval_full_marks'), '.0%')} |")
    return "\n".join(lines)
