"""`mmpo demo` wiring on a tiny model: both comparisons over two seeds, tables, plots, a resumable rerun."""

import json

import yaml

from mmpo.cli.main import main


def test_demo_runs_both_comparisons(tiny_model_dir, pair_file, tmp_path, capsys):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    common = {"model": str(tiny_model_dir), "data": str(pair_file(40)), "eval_split": 0.3, "max_length": 96,
              "per_device_train_batch_size": 4, "learning_rate": 1e-2, "max_steps": 2, "gamma": 1.0, "logging_steps": 1}
    (recipes / "rm.yaml").write_text(yaml.safe_dump(common))
    (recipes / "dpo.yaml").write_text(yaml.safe_dump({**common, "reference": "precomputed", "lora_r": 4, "lora_layers": 1}))
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--recipes", str(recipes), "--seeds", "0,1", "--eval_steps", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "### reward models: mmpo vs bt" in printed and "### policies: mmpo vs dpo" in printed
    assert "mmpo - bt [95% CI]" in printed and "mmpo - dpo [95% CI]" in printed
    summary = json.loads((out / "summary.json").read_text())
    for sub, losses in (("reward-models", ["mmpo", "bt"]), ("policies", ["mmpo", "dpo"])):
        c = summary["comparisons"][sub]
        assert c["losses"] == losses and c["seeds"] == [0, 1]
        assert (out / sub / "comparison.png").exists() and (out / sub / "curves.png").exists()
        for loss in losses:
            assert (out / sub / f"{loss}-seed1" / "eval_scores.jsonl").exists()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier") == 8
