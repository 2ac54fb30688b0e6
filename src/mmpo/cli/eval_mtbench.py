"""`mmpo eval mtbench generate ...` and `mmpo eval mtbench judge ...`.

generate: answer MT-bench's two-turn questions with a saved policy (resumable JSONL, FastChat's format).
judge:    grade each answered turn with an LLM judge behind any OpenAI-compatible endpoint (for example
          `mmpo serve`, vLLM, or the OpenAI API) and report mean ratings per category plus a radar plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmpo.io import atomic_write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="mtbench_command", metavar="STEP", required=True)

    g = sub.add_parser("generate", help="answer the MT-bench questions with a model")
    g.add_argument("--model", required=True, help="saved causal LM directory, a hub id, or `embedded`")
    g.add_argument("--out", required=True, help="answers JSONL (appended as it goes; a rerun skips done questions)")
    g.add_argument(
        "--questions", default=None,
        help="question.jsonl or the MT-bench directory (default: $MMPO_MT_BENCH_DIR, else $MMPO_CACHE/data/mt_bench, "
        "else ../shared/data/mt_bench beside a source checkout, else downloaded there from FastChat's llm_judge data)",
    )
    g.add_argument("--max-new-tokens", type=int, default=1024, help="per turn (FastChat: 1024)")
    g.add_argument("--limit", type=int, default=None, help="only the first N questions")
    g.add_argument("--model-id", default=None, help="name recorded with the answers (default: the model folder name)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed base (turn k of question q uses seed + 10q + k)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weight dtype (auto: bfloat16 on a CUDA device that has it, else float32)")

    j = sub.add_parser("judge", help="grade answers with an LLM judge over HTTP")
    j.add_argument("--answers", required=True, help="answers JSONL from `mmpo eval mtbench generate`")
    j.add_argument(
        "--judge-url", required=True,
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (API key: $MMPO_JUDGE_API_KEY, else $OPENAI_API_KEY)",
    )
    j.add_argument("--judge-model", required=True, help="model name sent to the endpoint (e.g. gpt-4)")
    j.add_argument("--out", required=True, help="scores JSON; judgments go to OUT_STEM.judgments.jsonl, the plot to OUT_STEM.radar.png")
    j.add_argument(
        "--questions-dir", default=None,
        help="MT-bench directory with question.jsonl, judge_prompts.jsonl and reference_answer_gpt-4.jsonl "
        "(default: as for generate)",
    )
    j.add_argument("--limit", type=int, default=None, help="only the first N answered questions")
    j.add_argument("--parallel", type=int, default=1, help="judge requests in flight at once")
    j.add_argument("--max-retries", type=int, default=6, help="retries per request on network / 429 / 5xx errors")
    j.add_argument("--judge-max-tokens", type=int, default=2048, help="new tokens per judgment (FastChat: 2048)")
    j.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")
    j.add_argument("--retry-unparseable", action="store_true", help="on a rerun, ask again for turns whose judgment had no rating")


def run(args: argparse.Namespace) -> int:
    if args.mtbench_command == "generate":
        return _generate(args)
    return _judge(args)


def _generate(args: argparse.Namespace) -> int:
    from mmpo.errors import UserError
    from mmpo.evaluation.mtbench import generate_answers, load_questions, mt_bench_files
    from mmpo.models.chat import ChatModel, default_model_name

    if args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--max-new-tokens and --limit must be positive")
    questions = load_questions(mt_bench_files(args.questions, need_judge_prompts=False).questions)
    chat = ChatModel.load(args.model, device=args.device, dtype=args.dtype)

    def generate(messages, temperature, max_new_tokens, seed):
        # FastChat samples with the model's generation config plus the category temperature.
        return chat.generate(messages, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, model_defaults=True).text

    model_id = args.model_id or default_model_name(args.model)
    result = generate_answers(generate, questions, args.out, model_id, args.max_new_tokens, args.limit, args.seed)
    print(f"MT-bench answers: {result['answered']} new, {result['skipped']} already done -> {args.out}")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from mmpo.errors import UserError
    from mmpo.evaluation.judge_client import JudgeClient, api_key_from_env
    from mmpo.evaluation.mtbench import (
        judge_answers,
        load_answers,
        load_judge_prompts,
        load_questions,
        load_reference_answers,
        mt_bench_files,
        radar_plot,
    )

    if (args.limit is not None and args.limit < 1) or args.parallel < 1 or args.judge_max_tokens < 1:
        raise UserError("--limit, --parallel and --judge-max-tokens must be positive")
    files = mt_bench_files(args.questions_dir)
    questions = load_questions(files.questions)
    prompts = load_judge_prompts(files.judge_prompts)  # type: ignore[arg-type]  # required by mt_bench_files
    references = load_reference_answers(files.reference_answers)
    answers = load_answers(args.answers)
    if not answers:
        raise UserError(f"no answers in {args.answers}")
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    judgments_path = Path(f"{stem}.judgments.jsonl")
    plot_path = Path(f"{stem}.radar.png")

    client = JudgeClient(args.judge_url, args.judge_model, api_key=api_key_from_env(), max_retries=args.max_retries, timeout=args.timeout)
    summary = judge_answers(
        client, questions, answers, prompts, references, judgments_path,
        limit=args.limit, parallel=args.parallel, retry_unparseable=args.retry_unparseable, max_tokens=args.judge_max_tokens,
    )
    if any(c["score"] is not None for c in summary["per_category"].values()):
        title = f"MT-bench: {summary['model_id']}, overall {summary['overall']:.2f} (judge {args.judge_model})"
        radar_plot(summary["per_category"], plot_path, title)
        summary["plot"] = str(plot_path)
    else:
        summary["plot"] = None
    summary.update(
        judge_url=client.url,
        judgments_file=str(judgments_path),
        http_requests=client.requests_sent,
        http_retries=client.retries,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    print(f"scores -> {out}; judgments -> {judgments_path}" + (f"; plot -> {plot_path}" if summary["plot"] else ""))
    return 0


def format_table(summary: dict) -> str:
    """The per-category table printed after judging."""

    def fmt(x):
        return "   -" if x is None else f"{x:5.2f}"

    lines = [f"MT-bench  model {summary['model_id']}  judge {summary['judge_model']}", f"{'category':<12} {'score':>6} {'rated':>6} {'missing':>8}"]
    for name, c in summary["per_category"].items():
        lines.append(f"{name:<12} {fmt(c['score']):>6} {c['n']:>6} {c['missing']:>8}")
    for turn, score in summary["per_turn"].items():
        lines.append(f"{'turn ' + turn:<12} {fmt(score):>6}")
    lines.append(f"{'overall':<12} {fmt(summary['overall']):>6} {summary['parsed']:>6} {summary['missing']:>8}")
    lines.append(
        f"turns {summary['turns_total']}: rated {summary['parsed']}, missing {summary['missing']} "
        f"(unparseable {summary['missing_unparseable']}, failed {summary['missing_failed']})"
    )
    return "\n".join(lines)
