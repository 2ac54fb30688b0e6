"""Issue 14, data semantics: empty files, mixed strengths, a directory's split, exact histogram edges (5); SHP
ids and the SHP recipe (9); eval_data's default split (10); ties under hard labels (11); IPO's summed or
averaged log-probs (12); over-length pairs (13). Each test failed on the code before the fix."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
import yaml

from mmpo.cli.main import main
from mmpo.config import DPOConfig, RMConfig, load_config
from mmpo.data import sources
from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import DataPlan, load_pairs, prepare_data, tokenize_pairs
from mmpo.data.records import PreferencePair
from mmpo.data.report import DataReport
from mmpo.errors import DataError, UserError
from mmpo.losses import ipo_loss
from mmpo.training.dpo import policy_loss, policy_rewards

RECIPES = Path(__file__).resolve().parents[1] / "src" / "mmpo" / "recipes"
GOOD = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "score_chosen": 9, "score_rejected": 2}


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    return lines[0]


# --- 5: empty files, mixed strengths, a directory's split, histogram edges ---------------------------------

@pytest.mark.parametrize("name", ["empty.csv", "empty.json", "empty.jsonl", "empty.parquet"])
def test_an_empty_file_is_one_line(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(b"")
    line = one_line_error(capsys, ["data", str(path)])
    assert str(path) in line and "empty" in line


def test_an_empty_gzipped_file_and_a_header_only_csv_are_one_line(tmp_path, capsys):
    gz = tmp_path / "empty.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("")
    assert "no rows" in one_line_error(capsys, ["data", str(gz)])
    header = tmp_path / "header.csv"
    header.write_text("prompt,chosen,rejected\n")
    assert "no rows" in one_line_error(capsys, ["data", str(header)])


def test_margin_and_p_chosen_together_is_an_error_naming_the_row(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "both.jsonl", [GOOD, {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2, "p_chosen": 0.9}])
    with pytest.raises(DataError, match=r"row 2, field 'p_chosen': the row gives both margin and p_chosen"):
        load_pairs(str(path))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{**GOOD, "margin": 3}])
    with pytest.raises(DataError, match="both margin and score_chosen/score_rejected"):
        load_pairs(str(mixed))


def test_mmpo_data_on_a_directory_reads_the_split(tmp_path, write_jsonl, capsys):
    write_jsonl(tmp_path / "d" / "train.jsonl", [GOOD] * 3)
    write_jsonl(tmp_path / "d" / "test.jsonl", [GOOD] * 2)
    assert main(["data", str(tmp_path / "d"), "--json"]) == 0
    assert '"read": 3' in capsys.readouterr().out
    assert main(["data", str(tmp_path / "d"), "--split", "test", "--json"]) == 0
    assert '"read": 2' in capsys.readouterr().out
    line = one_line_error(capsys, ["data", str(tmp_path / "d"), "--split", "validation"])
    assert "no files for split 'validation'" in line and "test, train" in line


def test_histogram_edges_are_exact_for_decimal_values():
    report = DataReport(source="x")
    report.keep([0.6, 0.7, 0.3, 0.5, 1.0, 0.59999], [None] * 6)
    counts = report.to_dict()["p_histogram"]["counts"]
    assert counts == [0, 0, 0, 1, 0, 2, 1, 1, 0, 1]
    assert report.to_dict()["p_histogram"]["edges"][6] == 0.6


# --- 9: SHP ids, quantile bins in the recipe -------------------------------------------------------------

def fake_hub(monkeypatch, rows: list[dict]) -> list[tuple]:
    calls: list[tuple] = []

    def read_hub(hub_id, split, config_name=None, files=None):
        calls.append((hub_id, split))
        return iter((f"{hub_id}[{split}]", i, row) for i, row in enumerate(rows))

    monkeypatch.setattr(sources, "read_hub", read_hub)
    return calls


SHP_ROW = {"post_id": "p1", "history": "post", "human_ref_A": "a", "human_ref_B": "b", "score_A": 9, "score_B": 3, "labels": 1}


def test_both_filtered_shp_ids_with_their_split_names(monkeypatch):
    calls = fake_hub(monkeypatch, [SHP_ROW])
    for hub_id in ("Ahjeong/SHP_filtered_MMPO", "Ahjeong/SHP_filtered_for_MMPO"):
        pairs, _ = load_pairs(hub_id)
        assert pairs[0].margin == 6.0
        load_pairs({"source": hub_id, "split": "test"})
    assert calls == [("Ahjeong/SHP_filtered_MMPO", "train_prefs"), ("Ahjeong/SHP_filtered_MMPO", "test_prefs"),
                     ("Ahjeong/SHP_filtered_for_MMPO", "train"), ("Ahjeong/SHP_filtered_for_MMPO", "test")]


def test_a_local_snapshot_named_train_prefs_is_read_for_split_train(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "shp" / "data" / "train_prefs-00000-of-00001.jsonl", [SHP_ROW] * 3)
    write_jsonl(tmp_path / "shp" / "data" / "test_prefs-00000-of-00001.jsonl", [SHP_ROW])
    _, train = load_pairs({"source": "Ahjeong/SHP_filtered_MMPO", "path": str(tmp_path / "shp"), "split": "train"})
    _, test = load_pairs({"source": "Ahjeong/SHP_filtered_MMPO", "path": str(tmp_path / "shp"), "split": "test"})
    assert (train.read, test.read) == (3, 1)


def test_the_shp_recipe_keeps_most_pairs():
    recipe = yaml.safe_load((RECIPES / "paper" / "dpo-gemma-7b-shp.yaml").read_text())
    config = load_config(DPOConfig, RECIPES / "paper" / "dpo-gemma-7b-shp.yaml")
    assert config.data["source"] in sources.HUB_IDS and sources.HUB_IDS[config.data["source"]] == "shp"
    # the official code only caps 5 pairs per post: no margin-bin cut without a budget
    assert not recipe.get("margin_bins") or recipe.get("max_pairs")


# --- 10: eval_data of a hub source without a split is its test split ------------------------------------------

def test_eval_data_defaults_to_the_sources_test_split(monkeypatch, tmp_path, tiny_tokenizer):
    uf = {"prompt_id": "i", "prompt": "q", "score_chosen": 8.0, "score_rejected": 3.0,
          "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
          "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}
    calls = fake_hub(monkeypatch, [uf])
    # The fake hub serves the same row for both splits: its prompt is on both sides.
    config = load_config(RMConfig, overrides={"data": "ultrafeedback", "eval_data": "ultrafeedback", "output_dir": str(tmp_path),
                                              "allow_eval_overlap": True})
    prepare_data(config, tiny_tokenizer)
    assert calls == [("allenai/ultrafeedback_binarized_cleaned", "train_prefs"), ("allenai/ultrafeedback_binarized_cleaned", "test_prefs")]
    named = load_config(RMConfig, overrides={"data": "x.jsonl", "eval_data": {"source": "shp", "split": "validation"}})
    assert DataPlan.from_config(named).eval_options.split == "validation"


def test_eval_data_directory_reads_its_test_files(tmp_path, write_jsonl, tiny_tokenizer):
    write_jsonl(tmp_path / "d" / "train.jsonl", [GOOD] * 3)
    write_jsonl(tmp_path / "d" / "test.jsonl", [{**GOOD, "prompt": "What is 3 + 3?"}] * 2)
    config = load_config(RMConfig, overrides={"data": str(tmp_path / "d"), "eval_data": str(tmp_path / "d"), "output_dir": str(tmp_path)})
    data = prepare_data(config, tiny_tokenizer)
    assert (data.reports["train"].read, data.reports["eval"].read) == (3, 2)


# --- 11: ties under hard labels -----------------------------------------------------------------------------

def test_a_tie_under_hard_labels_is_dropped_not_kept_at_one_half(tmp_path, write_jsonl):
    rows = [GOOD, {**GOOD, "score_chosen": 5, "score_rejected": 5}, {"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.5}]
    path = write_jsonl(tmp_path / "ties.jsonl", rows)
    hard, report = load_pairs(str(path), PairOptions(gamma=None))
    assert [p.p for p in hard] == [1.0] and report.dropped["tie under hard labels (gamma none)"] == 2
    soft, _ = load_pairs(str(path), PairOptions(gamma=1.0))
    assert [p.p for p in soft][1:] == [0.5, 0.5]


# --- 12: IPO on summed or per-token averaged log-probs --------------------------------------------------------

def test_ipo_averaged_log_probs():
    pw, pl, rw, rl = torch.tensor([-12.0]), torch.tensor([-30.0]), torch.tensor([-10.0]), torch.tensor([-33.0])
    lw, ll, beta = torch.tensor([4]), torch.tensor([10]), 0.5
    summed = policy_rewards("ipo", pw, pl, lw, ll, rw, rl, beta)
    averaged = policy_rewards("ipo", pw, pl, lw, ll, rw, rl, beta, average_logps=True)
    assert (summed[0] - summed[1]).item() == pytest.approx(beta * ((-12 + 10) - (-30 + 33)))
    h_avg = beta * ((-12 + 10) / 4 - (-30 + 33) / 10)
    assert (averaged[0] - averaged[1]).item() == pytest.approx(h_avg)
    loss = policy_loss("ipo", *averaged, torch.tensor([1.0]), beta)
    assert loss.item() == pytest.approx((h_avg / beta - 1 / (2 * beta)) ** 2)
    assert loss.item() == pytest.approx(ipo_loss(*averaged, beta).item())
    assert load_config(DPOConfig, overrides={"data": "x.jsonl", "loss": "ipo", "ipo_logps": "averaged"}).ipo_logps == "averaged"
    with pytest.raises(UserError, match="ipo_logps"):
        load_config(DPOConfig, overrides={"data": "x.jsonl", "ipo_logps": "mean"})


# --- 13: over-length pairs: truncate or drop ---------------------------------------------------------------------

def test_over_length_drop_counts_and_truncate_cuts(tiny_tokenizer):
    prompt = [{"role": "user", "content": "2 + 2?"}]
    pairs = [
        PreferencePair(prompt, [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}], row=1),
        PreferencePair(prompt, [{"role": "assistant", "content": "four " * 40}], [{"role": "assistant", "content": "5"}], row=2),
    ]
    report = DataReport(source="x", read=2)
    kept = tokenize_pairs(pairs, tiny_tokenizer, max_length=64, max_prompt_length=32, report=report, over_length="drop")
    assert [k["row"] for k in kept] == [1]
    assert report.dropped["longer than max_length=64 (over_length: drop)"] == 1
    report = DataReport(source="x", read=2)
    cut = tokenize_pairs(pairs, tiny_tokenizer, max_length=64, max_prompt_length=32, report=report, over_length="truncate")
    assert len(cut) == 2 and len(cut[1]["prompt_ids"]) + len(cut[1]["chosen_ids"]) == 64
    assert report.truncation["response_truncated"] == 1 and not report.dropped


def test_over_length_defaults_reward_models_drop_policies_truncate():
    assert load_config(RMConfig, overrides={"data": "x.jsonl"}).over_length == "drop"
    assert load_config(DPOConfig, overrides={"data": "x.jsonl"}).over_length == "truncate"
    with pytest.raises(UserError, match="over_length"):
        load_config(RMConfig, overrides={"data": "x.jsonl", "over_length": "cut"})


def test_eval_pairs_scores_a_named_data_sets_test_split(monkeypatch, tmp_path, capsys):
    calls = fake_hub(monkeypatch, [SHP_ROW])
    import mmpo.evaluation.scoring as scoring

    def stop(*a, **k):
        raise UserError("stop after loading the data")

    monkeypatch.setattr(scoring, "load_scoring_model", stop)
    monkeypatch.setattr(scoring, "training_config", lambda model_dir: {})
    monkeypatch.setattr(scoring, "model_kind", lambda model_dir: "reward")
    assert main(["eval", "pairs", "--model", str(tmp_path), "--data", "shp", "--out", str(tmp_path / "m.json")]) == 2
    assert calls == [("stanfordnlp/SHP", "test")]


# --- ties follow the loss; the held-out split does not depend on the loss or gamma -----------------------------

def tied_rows(n: int = 40) -> list[dict]:
    """``n`` prompts, one pair each; every third pair a tie (equal scores)."""
    return [
        {"prompt": f"question {i}", "chosen": f"answer {i}", "rejected": f"other {i}",
         "score_chosen": 5 if i % 3 == 0 else 8, "score_rejected": 5 if i % 3 == 0 else 2 + i % 4}
        for i in range(n)
    ]


@pytest.mark.parametrize("cls, loss, keeps_ties", [
    (DPOConfig, "mmpo", True), (DPOConfig, "simpo_mmpo", True), (DPOConfig, "dpo", False), (DPOConfig, "ipo", False),
    (DPOConfig, "simpo", False), (DPOConfig, "cdpo", False), (RMConfig, "mmpo", True), (RMConfig, "bt", False),
    (RMConfig, "margin", False), (RMConfig, "label_smoothing", False),
])
def test_a_loss_that_ignores_p_trains_without_ties(tmp_path, write_jsonl, tiny_tokenizer, cls, loss, keeps_ties):
    """With a numeric gamma and ``ties: keep``, only a loss that reads p trains on ties (at p = 0.5); the
    others drop them, and the data report says how many and why."""
    from mmpo.losses import uses_soft_targets

    path = write_jsonl(tmp_path / "ties.jsonl", tied_rows(12))
    config = load_config(cls, overrides={"data": str(path), "eval_split": 0.0, "gamma": 1.0, "ties": "keep", "loss": loss,
                                         "output_dir": str(tmp_path / "out")})
    data = prepare_data(config, tiny_tokenizer)
    ps = [row["p"] for row in data.train]
    assert uses_soft_targets(loss) is keeps_ties
    if keeps_ties:
        assert len(ps) == 12 and ps.count(0.5) == 4
        assert not any("tie" in reason for reason in data.reports["train"].dropped)
    else:
        assert len(ps) == 8 and 0.5 not in ps
        ties = {reason: n for reason, n in data.reports["train"].dropped.items() if "tie" in reason}
        assert ties == {f"tie: loss {loss} ignores p, a tie would teach it the written order": 4}
        assert f"dropped 4 pairs: tie: loss {loss}" in data.render()


@pytest.mark.parametrize("loss, gamma", [("mmpo", None), ("dpo", 1.0), ("mmpo", 0.3)])
def test_the_held_out_pairs_do_not_depend_on_the_training_loss_or_gamma(tmp_path, write_jsonl, tiny_tokenizer, loss, gamma):
    """Split first, then set targets: with a fixed eval_gamma every run holds out the same rows with the same
    truth (ties at p = 0.5 included), whatever its training loss and gamma."""
    path = write_jsonl(tmp_path / "ties.jsonl", tied_rows(40))

    def held_out(loss: str, gamma: float | None) -> list[tuple[int, float]]:
        config = load_config(DPOConfig, overrides={"data": str(path), "eval_split": 0.5, "gamma": gamma, "eval_gamma": 1.0,
                                                   "loss": loss, "output_dir": str(tmp_path / "out")})
        return [(row["row"], row["p"]) for row in prepare_data(config, tiny_tokenizer).eval]

    reference = held_out("mmpo", 1.0)
    assert any(p == 0.5 for _, p in reference) and len(reference) > 5
    assert held_out(loss, gamma) == reference
