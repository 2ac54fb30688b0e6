"""`mmpo demo`: the main job on the embedded model, end to end on a CPU.

1. Make the graded-tasks data set (``mmpo make-data``, seed 0): checkable tasks, responses graded 0..10.
2. Train two reward models with the same recipe (``recipes/embedded/rm.yaml``): MMPO (soft targets) and BT.
3. Train two LoRA policies with the same recipe (``recipes/embedded/dpo.yaml``): MMPO and DPO.
4. Score all four on the held-out pairs (accuracy, ECE, NLL) and let the base model and both policies answer
   held-out prompts, graded by the same checker that graded the data.
5. Print one comparison table and write ``mmpo report`` plots for the reward models and for the policies.

Every step is resumable: rerunning the command reuses finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpo.errors import UserError
from mmpo.paths import cache_dir
from mmpo.recipes import RECIPES_DIR

REPO_RECIPES = RECIPES_DIR / "embedded"  # packaged: works from an installed wheel too


@dataclass
class DemoSettings:
    out: Path
    recipes: Path = REPO_RECIPES
    seed: int = 0
    prompts: int = 400
    generate_prompts: int = 44  # held-out prompts answered by each policy (4 per task type)
    max_new_tokens: int = 24
    rm_overrides: dict[str, Any] | None = None
    dpo_overrides: dict[str, Any] | None = None


def _finished(run_dir: Path) -> dict[str, Any] | None:
    results = run_dir / "eval_results.json"
    if results.exists() and (run_dir / "eval_scores.jsonl").exists():
        return json.loads(results.read_text())
    return None


def _train(kind: str, recipe: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from mmpo.config import DPOConfig, RMConfig, load_config

    out = Path(overrides["output_dir"])
    done = _finished(out)
    if done is not None:
        print(f"== {out.name}: finished earlier, reusing {out}", flush=True)
        return done
    print(f"== {out.name}: training ({recipe.name}, loss {overrides.get('loss')})", flush=True)
    if kind == "rm":
        from mmpo.training.rm import train_reward_model

        train_reward_model(load_config(RMConfig, recipe, overrides))
    else:
        from mmpo.training.dpo import train_policy

        train_policy(load_config(DPOConfig, recipe, overrides))
    return json.loads((out / "eval_results.json").read_text())


def generate_and_grade(model_dir: str, prompts: list[dict[str, Any]], max_new_tokens: int, out_file: Path) -> dict[str, float]:
    """Greedy answers to held-out task prompts, each graded by the data set's checker (0..10).

    Answers are written to ``out_file`` one per line as they are produced; a rerun reuses the file.
    """
    from tqdm.auto import tqdm

    from mmpo.data.synthetic import grade
    from mmpo.serving.chat_model import ChatModel

    done: dict[str, dict[str, Any]] = {}
    if out_file.exists():
        for line in out_file.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["prompt"]] = rec
    todo = [p for p in prompts if p["prompt"] not in done]
    if todo:
        chat = ChatModel.load(model_dir)
        with open(out_file, "a") as f:
            for p in tqdm(todo, desc=f"generate {Path(model_dir).name}", unit="prompt"):
                text = chat.generate([{"role": "user", "content": p["prompt"]}], max_new_tokens=max_new_tokens).text
                rec = {"prompt": p["prompt"], "task": p["task"], "answer": p["answer"], "response": text, "score": grade(p, text)}
                done[p["prompt"]] = rec
                f.write(json.dumps(rec) + "\n")
                f.flush()
    scores = [done[p["prompt"]]["score"] for p in prompts]
    return {"mean_score": sum(scores) / len(scores), "full_marks": sum(s >= 10.0 for s in scores) / len(scores), "n": len(scores)}


def _pick_prompts(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` held-out prompts taking task types in turn, so every task type is represented."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    picked: list[dict[str, Any]] = []
    while len(picked) < min(n, len(rows)):
        for task in sorted(by_task):
            if by_task[task] and len(picked) < n:
                picked.append(by_task[task].pop(0))
    return picked


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the whole demo; returns the table rows and writes ``summary.json`` and ``report/`` under ``out``."""
    from mmpo.data.synthetic import SyntheticConfig, make_dataset
    from mmpo.reports.compare import write_report

    start = time.time()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("rm.yaml", "dpo.yaml"):
        if not (settings.recipes / name).exists():
            raise UserError(f"recipe not found: {settings.recipes / name} (pass --recipes DIR)")

    data_dir, summary = make_dataset(SyntheticConfig(seed=settings.seed, prompts=settings.prompts), reuse=True)
    pairs = summary.get("pairs", {})
    print(f"== data: {data_dir} ({pairs.get('train', '?')} train pairs, {pairs.get('eval', '?')} held-out pairs; "
          "the recipes sample from them)", flush=True)
    data = {"data": str(data_dir / "train.jsonl"), "eval_data": str(data_dir / "eval.jsonl")}

    rows: dict[str, dict[str, Any]] = {}
    rm_runs = {}
    for loss in ("mmpo", "bt"):
        run_dir = out / f"rm-{loss}"
        rows[f"reward model, {loss.upper()}"] = _train("rm", settings.recipes / "rm.yaml",
                                                        {**data, **(settings.rm_overrides or {}), "loss": loss, "output_dir": str(run_dir)})
        rm_runs[loss] = run_dir
    policy_runs = {}
    for loss in ("mmpo", "dpo"):
        run_dir = out / f"policy-{loss}"
        rows[f"policy, {loss.upper()}"] = _train("dpo", settings.recipes / "dpo.yaml",
                                                  {**data, **(settings.dpo_overrides or {}), "loss": loss, "output_dir": str(run_dir)})
        policy_runs[loss] = run_dir

    prompts = _pick_prompts(data_dir / "prompts_eval.jsonl", settings.generate_prompts)
    generations = {"base model": generate_and_grade("embedded", prompts, settings.max_new_tokens, out / "generations-base.jsonl")}
    for loss, run_dir in policy_runs.items():
        generations[f"policy, {loss.upper()}"] = generate_and_grade(str(run_dir), prompts, settings.max_new_tokens, out / f"generations-{loss}.jsonl")

    write_report([rm_runs["mmpo"], rm_runs["bt"]], out / "report" / "reward-models")
    write_report([policy_runs["mmpo"], policy_runs["dpo"]], out / "report" / "policies")
    table = render_table(rows, generations)
    elapsed = time.time() - start
    result = {"rows": rows, "generations": generations, "elapsed_s": elapsed, "data_dir": str(data_dir)}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nreports: {out / 'report'}   (wall time {elapsed / 60:.1f} min)")
    return result


def _metric(row: dict[str, Any], key: str) -> float:
    return row.get(f"eval_{key}", row.get(key, float("nan")))


def render_table(rows: dict[str, dict[str, Any]], generations: dict[str, dict[str, float]]) -> str:
    """Markdown table: held-out pair metrics for the four models, checker scores for the generations."""
    lines = ["| model | held-out accuracy | ECE | NLL | answers: mean grade (0-10) | answers: full marks |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        gen = generations.get(name)
        cells = [f"{_metric(row, 'accuracy'):.3f}", f"{_metric(row, 'ece'):.3f}", f"{_metric(row, 'nll'):.3f}"]
        cells += [f"{gen['mean_score']:.2f}", f"{gen['full_marks']:.0%}"] if gen else ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = generations.get("base model")
    if base:
        lines.append(f"| base model (no training) | | | | {base['mean_score']:.2f} | {base['full_marks']:.0%} |")
    return "\n".join(lines)


def default_out() -> Path:
    return cache_dir() / "demo"
