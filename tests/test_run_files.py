"""What runs leave on disk: files as the user's umask says, no optimizer state once a run is finished."""

import os
import stat
from pathlib import Path

import pytest

from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.io import atomic_write_text
from mmpo.paths import apply_umask


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and directory under ``root`` (not root itself), by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if not p.is_symlink()}


def test_atomic_write_text_follows_the_umask(tmp_path, umask_027):
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o640


def test_apply_umask_opens_mkstemp_and_mkdtemp_modes(tmp_path, umask_027):
    import tempfile

    d = Path(tempfile.mkdtemp(dir=tmp_path))
    fd, f = tempfile.mkstemp(dir=d)
    os.close(fd)
    apply_umask(d)
    assert (stat.S_IMODE(d.stat().st_mode), stat.S_IMODE(Path(f).stat().st_mode)) == (0o750, 0o640)


@pytest.mark.parametrize("kind", ["rm", "dpo"])
def test_finished_run_follows_the_umask_and_keeps_no_optimizer_state(tmp_path, tiny_model_dir, pair_file, umask_027, capsys, kind):
    out = tmp_path / kind
    common = dict(model=str(tiny_model_dir), data=str(pair_file(24)), output_dir=str(out), max_length=96,
                  per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=3, save_steps=2,
                  save_total_limit=None, logging_steps=1, eval_split=0.25, bf16=False)
    if kind == "rm":
        from mmpo.training.rm import train_reward_model

        train_reward_model(load_config(RMConfig, None, common))
    else:
        from mmpo.training.dpo import train_policy

        train_policy(load_config(DPOConfig, None, {**common, "max_prompt_length": 64}))
    found = modes(out)
    wrong = {k: oct(v) for k, v in found.items() if v != (0o750 if (out / k).is_dir() else 0o640)}
    assert not wrong
    assert {"config.yaml", "eval_results.json", "model.safetensors", "checkpoint-3/model.safetensors"} <= set(found)
    for checkpoint in ("checkpoint-2", "checkpoint-3"):
        names = {p.name for p in (out / checkpoint).iterdir()}
        assert "trainer_state.json" in names and "model.safetensors" in names
        assert not any(n.startswith("optimizer") for n in names)
    assert "dropped the checkpoints' optimizer state" in capsys.readouterr().out


def test_an_unfinished_run_keeps_its_optimizer_state(tmp_path, tiny_model_dir, pair_file, monkeypatch):
    from mmpo.training.rm import RewardTrainer, train_reward_model

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RewardTrainer, "save_eval_scores", killed)
    out = tmp_path / "run"
    config = load_config(RMConfig, None, dict(model=str(tiny_model_dir), data=str(pair_file(24)), output_dir=str(out),
                                              max_length=96, per_device_train_batch_size=4, max_steps=2, save_steps=2,
                                              logging_steps=1, eval_split=0.25, bf16=False))
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(config)
    assert (out / "checkpoint-2" / "optimizer.pt").is_file() and not (out / "eval_results.json").exists()


def test_compare_keeps_lora_adapters_not_merged_copies(tiny_model_dir, pair_file, tmp_path):
    import json

    from mmpo.cli.main import main
    from mmpo.experiments.compare import compare_saving

    out = tmp_path / "cmp"
    argv = ["compare", "--losses", "mmpo,dpo", "--seeds", "0,1", "--out", str(out), "--model", str(tiny_model_dir),
            "--data", str(pair_file(24)), "--eval_split", "0.3", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_length", "96", "--max_prompt_length", "64", "--lora_r", "4", "--bf16", "false", "--logging_steps", "1"]
    assert main(argv) == 0
    for run in ("mmpo-seed0", "dpo-seed1"):
        names = {p.name for p in (out / run).iterdir()}
        assert "adapter_config.json" in names and "model.safetensors" not in names
    assert set(json.loads((out / "comparison.json").read_text())["metrics"]) >= {"nll", "accuracy"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("merge_lora: true\n")
    assert compare_saving("dpo", recipe) == {} and compare_saving("rm", recipe) == {}


def test_compare_keeps_reward_model_adapters_too():
    from mmpo.config import RMConfig, load_config
    from mmpo.experiments.compare import compare_saving

    # Reward-model runs of a comparison are saved as adapters, like policies; an online run keeps its own saving.
    assert compare_saving("rm", None) == {"merge_lora": False} == compare_saving("rm", "embedded/rm")
    assert compare_saving("online", None) == {}
    assert load_config(RMConfig, "embedded/rm", compare_saving("rm", "embedded/rm")).merge_lora is False
