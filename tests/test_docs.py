"""The documentation: the site builds strictly, the README's Python example runs, and neither tells history."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict_has_no_warnings(tmp_path):
    """Broken links, missing anchors and API references that do not resolve are warnings; --strict fails on them."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "mmpo_loss" in api and "pair_metrics" in api  # mkdocstrings rendered the docstrings


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_python_example_runs_and_its_gradient_is_sigmoid_h_minus_p():
    import torch

    blocks = _python_blocks((REPO / "README.md").read_text())
    assert blocks, "README.md has no ```python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    p, r_chosen, r_rejected = namespace["p"], namespace["r_chosen"], namespace["r_rejected"]
    h = (r_chosen - r_rejected).detach()
    assert torch.allclose(p, torch.sigmoid(0.5 * torch.tensor([7.0, 1.0, 0.0])))
    assert torch.allclose(r_chosen.grad, (torch.sigmoid(h) - p) / len(p), atol=1e-6)


@pytest.mark.integration
def test_readme_training_example_trains_the_embedded_model(tmp_path, monkeypatch):
    """README's second Python block: a two-step reward-model run from a recipe and in-memory rows."""
    blocks = _python_blocks((REPO / "README.md").read_text())
    assert "train_reward_model" in blocks[1]
    monkeypatch.chdir(tmp_path)  # the example's relative output_dir
    namespace: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    summary = namespace["summary"]
    assert summary.global_step == 2 and (Path(summary.output_dir) / "config.json").exists()


def test_quickstart_python_example_runs():
    blocks = _python_blocks((REPO / "docs" / "quickstart.md").read_text())
    assert blocks
    exec(compile(blocks[0], "quickstart.md", "exec"), {})  # noqa: S102


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 220


def test_user_facing_text_tells_no_history_and_holds_no_machine_path():
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "benchmarks").rglob("*.md"),
             *(REPO / "benchmarks").glob("*.py"), *(REPO / "src" / "mmpo").rglob("*.py"),
             *(REPO / "src" / "mmpo" / "recipes").rglob("*.yaml")]
    history = re.compile(r"earlier session|this session|previous session|in git at", re.I)
    for path in files:
        text = path.read_text()
        assert not history.search(text), f"{path.relative_to(REPO)} tells history: {history.search(text).group(0)}"
        assert not re.search(r"(?<![\w.$~])/(root|work|home)/", text), f"{path.relative_to(REPO)} holds a machine path"


def test_readme_links_point_at_files_that_exist():
    text = re.sub(r"<!--.*?-->", "", (REPO / "README.md").read_text(), flags=re.S)
    links = [target for target in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in target]
    assert links
    missing = [target for target in links if not (REPO / target).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
