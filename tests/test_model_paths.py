"""Issue 14.7: a mistyped local model path fails at once with one line; a Hub id that cannot be fetched (the
Hub unreachable, or HF_HUB_OFFLINE set) fails at once with one line too, and a failed run leaves no output_dir."""

from __future__ import annotations

import pytest

from mmpo.errors import UserError
from mmpo.models import hub
from mmpo.models.embedded import looks_like_path, resolve_model_path


@pytest.fixture
def no_hub(monkeypatch):
    """The Hub unreachable; every lookup counted."""
    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_cached_snapshot", lambda repo_id, revision=None: None)
    hub.resolve_hub_model.cache_clear()
    yield calls
    hub.resolve_hub_model.cache_clear()


def test_names_that_look_like_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_path("runs/nosuch") and looks_like_path("./x") and looks_like_path("a/b/c")
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M") and not looks_like_path("gpt2")


def test_a_mistyped_run_directory_is_an_error_without_asking_the_hub(tmp_path, monkeypatch, no_hub, capsys):
    from mmpo.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 0.8}\n')
    code = main(["rm", "--model", "runs/nosuch", "--data", "pairs.jsonl", "--output_dir", "runs/out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["mmpo rm: error: model path does not exist: runs/nosuch"]
    assert no_hub == []  # not tried on the Hub
    assert not (tmp_path / "runs" / "out").exists()  # and no output_dir holding only config.yaml


def test_an_unreachable_hub_is_one_line_after_one_lookup(no_hub):
    with pytest.raises(UserError, match="Hugging Face Hub is unreachable") as err:
        resolve_model_path("some-org/some-model")
    assert "\n" not in str(err.value) and no_hub == ["some-org/some-model"]


def test_offline_mode_fails_at_once_for_an_uncached_model(monkeypatch, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        resolve_model_path("some-org/some-model")
    assert no_hub == []


def test_a_cached_hub_model_loads_from_the_cache_when_the_hub_is_unreachable(monkeypatch, no_hub, tmp_path):
    monkeypatch.setattr(hub, "_cached_snapshot", lambda repo_id, revision=None: str(tmp_path))
    assert resolve_model_path("some-org/cached-model") == str(tmp_path)


def _fake_hf_cache(root, repo_id: str, refs: dict[str, str]) -> dict[str, str]:
    """The Hugging Face cache layout for ``repo_id``: ``refs/<ref>`` holds a commit, ``snapshots/<commit>/`` its
    files. Returns each ref's snapshot directory."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshots = {}
    for ref, commit in refs.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text('{"model_type": "llama", "commit": "%s"}' % commit)
        snapshots[ref] = str(snapshot)
    return snapshots


@pytest.mark.parametrize("offline", [True, False])
def test_a_cached_hub_model_is_the_requested_revisions_snapshot(monkeypatch, tmp_path, offline):
    import huggingface_hub.constants

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    main_commit, v2_commit = "a" * 40, "b" * 40
    snapshots = _fake_hf_cache(tmp_path, "some-org/three-revisions", {"main": main_commit, "v2": v2_commit})
    hub.resolve_hub_model.cache_clear()
    try:
        assert resolve_model_path("some-org/three-revisions") == snapshots["main"]
        assert resolve_model_path("some-org/three-revisions", "v2") == snapshots["v2"]
        assert resolve_model_path("some-org/three-revisions", v2_commit) == snapshots["v2"]
        # a revision that is not cached is not served by another revision's snapshot
        with pytest.raises(UserError, match="'v3'"):
            resolve_model_path("some-org/three-revisions", "v3")
        # and a loader asked for v2 reads v2's files
        from conftest import build_byte_tokenizer

        from mmpo.models.loading import load_tokenizer

        for ref, length in (("main", 111), ("v2", 222)):
            tokenizer = build_byte_tokenizer()
            tokenizer.model_max_length = length
            tokenizer.save_pretrained(snapshots[ref])
        assert load_tokenizer("some-org/three-revisions", "v2").model_max_length == 222
        assert load_tokenizer("some-org/three-revisions").model_max_length == 111
    finally:
        hub.resolve_hub_model.cache_clear()
