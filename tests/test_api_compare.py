"""`mmpo.compare`: the Python face of `mmpo compare` (kind from the recipe, baseline last)."""

import pytest

import mmpo
from mmpo.errors import UserError


def test_compare_moves_the_baseline_last_and_takes_the_recipes_kind(monkeypatch, tmp_path):
    import mmpo.experiments.compare as experiments

    seen = {}

    def run_compare(kind, recipe, losses, seeds, overrides, out, title=""):
        seen.update(kind=kind, recipe=recipe, losses=losses, seeds=seeds, overrides=overrides, out=out)
        return {"losses": losses}

    monkeypatch.setattr(experiments, "run_compare", run_compare)
    result = mmpo.compare("embedded/dpo", ["dpo", "mmpo", "odpo"], seeds=[0, 1], out=str(tmp_path), baseline="dpo",
                          max_steps=2)
    assert seen == {"kind": "dpo", "recipe": "embedded/dpo", "losses": ["mmpo", "odpo", "dpo"], "seeds": [0, 1],
                    "overrides": {"max_steps": 2}, "out": str(tmp_path)}
    assert result == {"losses": ["mmpo", "odpo", "dpo"]}


def test_compare_refuses_a_loss_the_recipe_does_not_train(tmp_path):
    with pytest.raises(UserError, match="loss dpo is not one of its losses"):
        mmpo.compare("embedded/rm", ["mmpo", "dpo"], out=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
