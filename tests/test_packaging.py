"""The installable package: recipes by name, MT-bench found or downloaded, and a wheel that works on its own."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.errors import UserError
from mmpo.evaluation.mtbench import DOWNLOAD_FILES, find_mt_bench_dir, load_questions, mt_bench_files

REPO = Path(__file__).resolve().parents[1]


# --- recipes --------------------------------------------------------------------------------------------


def test_packaged_recipe_by_name_equals_the_file():
    by_name = load_config(RMConfig, "embedded/rm")
    by_path = load_config(RMConfig, REPO / "src" / "mmpo" / "recipes" / "embedded" / "rm.yaml")
    assert by_name == by_path
    assert load_config(DPOConfig, "embedded/dpo.yaml", {"max_steps": 3}).max_steps == 3


def test_unknown_recipe_name_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'embedded/rm'"):
        load_config(RMConfig, "embeded/rm")


def test_a_file_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    (tmp_path / "embedded").mkdir()
    (tmp_path / "embedded" / "rm.yaml").write_text("data: mine.jsonl\nlearning_rate: 3.0e-4\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(RMConfig, "embedded/rm.yaml").learning_rate == pytest.approx(3e-4)


# --- MT-bench: local server standing in for FastChat ------------------------------------------------------


def _fastchat_tree(root: Path, n_questions: int = 2) -> Path:
    """FastChat's llm_judge/data layout with a few made-up rows (no real MT-bench text)."""
    (root / "mt_bench" / "reference_answer").mkdir(parents=True)
    with open(root / "mt_bench" / "question.jsonl", "w") as f:
        for i in range(n_questions):
            f.write(json.dumps({"question_id": 81 + i, "category": "math", "turns": [f"q{i} turn 1", f"q{i} turn 2"]}) + "\n")
    (root / "judge_prompts.jsonl").write_text(
        json.dumps({"name": "single-v1", "system_prompt": "judge", "prompt_template": "{question} {answer}"}) + "\n"
    )
    (root / "mt_bench" / "reference_answer" / "gpt-4.jsonl").write_text(
        json.dumps({"question_id": 81, "choices": [{"index": 0, "turns": ["a", "b"]}]}) + "\n"
    )
    return root


class _Server:
    """A static file server on 127.0.0.1 that counts requests."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fastchat_server(tmp_path):
    server = _Server(_fastchat_tree(tmp_path / "fastchat_data"))
    yield server
    server.close()


@pytest.fixture
def no_local_mt_bench(tmp_path, monkeypatch):
    """An empty cache and no development copy, so the lookup has to download."""
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MMPO_MT_BENCH_DIR", raising=False)
    monkeypatch.setattr("mmpo.evaluation.mtbench._development_dir", lambda: None)
    return tmp_path / "cache" / "data" / "mt_bench"


def test_mt_bench_downloads_once_into_the_cache(fastchat_server, no_local_mt_bench, monkeypatch, capsys):
    monkeypatch.setenv("MMPO_MT_BENCH_URL", fastchat_server.url + "/")
    files = mt_bench_files()
    assert files.questions == no_local_mt_bench / "question.jsonl"
    assert [q.question_id for q in load_questions(files.questions)] == [81, 82]
    assert files.judge_prompts is not None and files.reference_answers is not None
    assert sorted(fastchat_server.requests) == sorted(f"/{remote}" for remote, _ in DOWNLOAD_FILES)
    assert "downloaded 3 files" in capsys.readouterr().out
    # Second lookup: the cache answers, the server is not asked again.
    assert find_mt_bench_dir() == no_local_mt_bench
    assert len(fastchat_server.requests) == 3


def test_mt_bench_unreachable_is_one_line_and_leaves_no_partial_cache(tmp_path, no_local_mt_bench, monkeypatch):
    root = _fastchat_tree(tmp_path / "partial")
    (root / "judge_prompts.jsonl").unlink()  # the second file 404s
    server = _Server(root)
    try:
        monkeypatch.setenv("MMPO_MT_BENCH_URL", server.url)
        with pytest.raises(UserError) as err:
            find_mt_bench_dir()
    finally:
        server.close()
    message = str(err.value)
    assert "\n" not in message and "judge_prompts.jsonl is not reachable" in message and str(no_local_mt_bench) in message
    assert not no_local_mt_bench.exists()
    assert [p.name for p in no_local_mt_bench.parent.iterdir()] == []  # no temporary directory left either


def test_mt_bench_cache_comes_before_the_development_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MMPO_MT_BENCH_DIR", raising=False)
    cached = tmp_path / "cache" / "data" / "mt_bench"
    cached.mkdir(parents=True)
    (cached / "question.jsonl").write_text("")
    monkeypatch.setattr("mmpo.evaluation.mtbench._development_dir", lambda: tmp_path / "elsewhere")
    assert find_mt_bench_dir() == cached


# --- the wheel, installed outside the repository ---------------------------------------------------------


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """Build the wheel (no build isolation, with the environment's setuptools from requirements.lock: nothing is
    downloaded) and install it with --no-deps into a fresh virtual environment that sees the current
    interpreter's packages through a .pth file; returns (python, mmpo script, work directory)."""
    import shutil

    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"), str(source)],
        check=True, capture_output=True, text=True, cwd=work,
    )
    wheels = list((work / "dist").glob("mmpo-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "mmpo/recipes/embedded/rm.yaml" in names and "mmpo/recipes/paper/dpo-gemma-7b-shp.yaml" in names
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    # The shared packages (torch, transformers, ...) through a .pth file; mmpo itself only from the wheel.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    import sysconfig

    (Path(site) / "shared_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip itself comes through the .pth too; it installs into the new environment (its sys.prefix).
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
                   check=True, capture_output=True, text=True, env=_clean_env(work))
    return python, env_dir / "bin" / "mmpo", work


def _clean_env(work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MMPO_MT_BENCH_DIR", "MMPO_MT_BENCH_URL")}
    env.update(MMPO_CACHE=str(work / "cache"), **extra)
    return env


@pytest.mark.slow
def test_wheel_runs_outside_the_repository(installed_wheel, fastchat_server):
    python, mmpo, work = installed_wheel
    env = _clean_env(work, MMPO_MT_BENCH_URL=fastchat_server.url)
    where = subprocess.run([str(python), "-c", "import mmpo; print(mmpo.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert str(REPO) not in where and str(work / "venv") in where  # the installed copy, not src/

    help_text = subprocess.run([str(mmpo), "demo", "--help"], cwd=work, env=env, check=True, capture_output=True, text=True).stdout
    assert "--seeds" in help_text

    script = (
        "from mmpo.config import RMConfig, load_config\n"
        "from mmpo.evaluation.mtbench import mt_bench_files, load_questions\n"
        "import mmpo.experiments.demo\n"
        "c = load_config(RMConfig, 'embedded/rm')\n"
        "print('recipe', c.loss, c.max_steps, (mmpo.experiments.demo.REPO_RECIPES / 'dpo.yaml').is_file())\n"
        "f = mt_bench_files()\n"
        "print('questions', len(load_questions(f.questions)), f.questions)\n"
    )
    out = subprocess.run([str(python), "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("recipe mmpo ") and lines[0].endswith(" True")
    assert lines[1].startswith("MT-bench: downloaded 3 files from http://127.0.0.1")
    assert lines[2] == f"questions 2 {work / 'cache' / 'data' / 'mt_bench' / 'question.jsonl'}"

    unknown = subprocess.run([str(mmpo), "rm", "embedded/rn"], cwd=work, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "mmpo rm: error: config file not found: embedded/rn (neither a file nor a packaged recipe; did you mean 'embedded/rm'?)"
    ]
