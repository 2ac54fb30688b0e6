"""Preference sources on small rows written in each hub schema: sign conventions, caps, bins, ties, targets."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from mmpo.cli.main import main
from mmpo.data.report import DataReport
from mmpo.data.pairs import PairOptions
from mmpo.data.pipeline import load_pairs
from mmpo.data.selection import bin_quotas, margin_bin_of
from mmpo.data.sources import nemo_turns
from mmpo.errors import UserError


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def write_gz_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def contents(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages]


# --- UltraFeedback ---------------------------------------------------------------------------------------

def uf_row(i: int, chosen: str, rejected: str, score_chosen: float, score_rejected: float) -> dict:
    prompt = f"question {i}?"
    return {
        "prompt": prompt,
        "prompt_id": f"id{i}",
        "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}],
        "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}],
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}],
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
        "source": "test",
    }


def test_ultrafeedback_splits_off_the_prompt_turn_and_uses_the_score_difference(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "uf.jsonl", [uf_row(0, "good", "bad", 9.0, 6.5), uf_row(1, "ok", "meh", 4.0, 3.0)])
    pairs, report = load_pairs({"source": "ultrafeedback", "path": str(path)}, PairOptions(gamma=2.2))
    first = pairs[0]
    assert first.prompt == [{"role": "user", "content": "question 0?"}]
    assert first.chosen == [{"role": "assistant", "content": "good"}]
    assert first.rejected == [{"role": "assistant", "content": "bad"}]
    assert first.margin == pytest.approx(2.5)
    assert first.p == pytest.approx(sigmoid(2.2 * 2.5), rel=1e-6)
    assert first.meta["group"] == "id0"
    assert (report.read, report.kept) == (2, 2)


def test_ultrafeedback_hub_snapshot_directory_reads_only_the_requested_split(tmp_path):
    import pandas as pd
    data = tmp_path / "snapshot" / "data"
    data.mkdir(parents=True)
    pd.DataFrame([uf_row(i, f"c{i}", f"r{i}", 8, 2) for i in range(3)]).to_parquet(data / "train_prefs-00000-of-00001.parquet")
    pd.DataFrame([uf_row(i, f"c{i}", f"r{i}", 8, 2) for i in range(5)]).to_parquet(data / "test_prefs-00000-of-00001.parquet")
    pd.DataFrame([uf_row(i, f"c{i}", f"r{i}", 8, 2) for i in range(7)]).to_parquet(data / "train_sft-00000-of-00001.parquet")
    spec = {"source": "HuggingFaceH4/ultrafeedback_binarized", "path": str(tmp_path / "snapshot")}
    assert len(load_pairs(spec)[0]) == 3  # default split train_prefs
    assert len(load_pairs({**spec, "split": "test_prefs"})[0]) == 5
    assert len(load_pairs(spec, PairOptions(split="test_prefs"))[0]) == 5


def test_save_to_disk_copy_picks_the_split(tmp_path):
    import datasets
    saved = tmp_path / "uf_saved"
    datasets.DatasetDict(
        {
            "train_prefs": datasets.Dataset.from_list([uf_row(i, f"c{i}", f"r{i}", 7, 5) for i in range(4)]),
            "test_prefs": datasets.Dataset.from_list([uf_row(i, f"c{i}", f"r{i}", 7, 5) for i in range(2)]),
        }
    ).save_to_disk(str(saved))
    pairs, report = load_pairs({"source": "ultrafeedback", "path": str(saved), "split": "test_prefs"})
    assert len(pairs) == 2 and pairs[0].margin == 2.0
    assert "test_prefs" in report.source
    with pytest.raises(UserError, match="no split 'validation'"):
        load_pairs({"source": "ultrafeedback", "path": str(saved), "split": "validation"})


# --- SHP -------------------------------------------------------------------------------------------------

def shp_row(post: str, a: str, b: str, score_a: int, score_b: int, labels: int | None = None) -> dict:
    row = {
        "post_id": post, "domain": "askscience_train", "upvote_ratio": 0.99, "history": f"post {post}",
        "c_root_id_A": "ca", "c_root_id_B": "cb", "created_at_utc_A": 1, "created_at_utc_B": 2,
        "score_A": score_a, "score_B": score_b, "human_ref_A": a, "human_ref_B": b,
        "seconds_difference": 1.0, "score_ratio": score_a / score_b,
    }
    row["labels"] = int(score_a > score_b) if labels is None else labels
    return row


def test_shp_chosen_is_the_higher_score_and_labels_1_means_a(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "shp.jsonl", [shp_row("p1", "A wins", "B loses", 30, 10), shp_row("p2", "A loses", "B wins", 4, 20)])
    pairs, report = load_pairs({"source": "shp", "path": str(path)}, PairOptions(gamma=0.1))
    assert contents(pairs[0].chosen) == ["A wins"] and pairs[0].margin == 20
    assert contents(pairs[1].chosen) == ["B wins"] and pairs[1].margin == 16
    assert pairs[0].prompt == [{"role": "user", "content": "post p1"}]
    assert pairs[1].p == pytest.approx(sigmoid(0.1 * 16), rel=1e-6)
    assert not report.fixed


def test_shp_label_disagreeing_with_upvotes_is_an_order_conflict(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "shp.jsonl", [shp_row("p1", "A", "B", 5, 50, labels=1)])
    pairs, report = load_pairs({"source": "shp", "path": str(path)})
    assert contents(pairs[0].chosen) == ["B"] and pairs[0].margin == 45
    assert report.fixed["chosen rated below rejected: swapped"] == 1


def test_shp_log_score_ratio_margin(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "shp.jsonl", [shp_row("p1", "A", "B", 40, 10)])
    pairs, _ = load_pairs({"source": "shp", "path": str(path), "margin_from": "log_score_ratio"})
    assert pairs[0].margin == pytest.approx(math.log(4.0))


def test_shp_caps_five_pairs_per_post_deterministically(tmp_path, write_jsonl):
    rows = [shp_row("big", f"a{i}", f"b{i}", 10 + i, 2) for i in range(8)] + [shp_row("small", "x", "y", 9, 3)] * 2
    path = write_jsonl(tmp_path / "shp.jsonl", rows)
    spec = {"source": "shp", "path": str(path)}

    def chosen_by_seed(seed: int) -> list[str]:
        pairs, report = load_pairs(spec, PairOptions(seed=seed))
        assert sum(p.meta["group"] == "big" for p in pairs) == 5
        assert sum(p.meta["group"] == "small" for p in pairs) == 2
        assert report.dropped["over pairs_per_prompt=5"] == 3
        return [p.chosen[0]["content"] for p in pairs]

    assert chosen_by_seed(0) == chosen_by_seed(0)
    assert len({tuple(chosen_by_seed(s)) for s in range(6)}) > 1  # the seed picks which five
    uncapped, _ = load_pairs(spec, PairOptions(pairs_per_prompt=0))
    assert len(uncapped) == 10
    generic, _ = load_pairs(spec, PairOptions(pairs_per_prompt=2))
    assert len(generic) == 4


def test_margin_bins_sample_uniformly_across_quantile_bins(tmp_path, write_jsonl):
    # 27 distinct margins, 3 quantile bins of 9 (1-9, 10-18, 19-27), written in a shuffled order.
    margins = [(7 * i) % 27 + 1 for i in range(27)]
    rows = [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}", "margin": m} for i, m in enumerate(margins)]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    assert margin_bin_of(list(range(1, 28)), 3) == [0] * 9 + [1] * 9 + [2] * 9
    bins_of = lambda pairs: [sum(1 for p in pairs if (p.margin - 1) // 9 == b) for b in range(3)]

    pairs, report = load_pairs(str(path), PairOptions(margin_bins=3, seed=1))
    assert bins_of(pairs) == [9, 9, 9] and not report.dropped and not report.warnings

    budgeted, report = load_pairs(str(path), PairOptions(margin_bins=3, max_pairs=12, seed=1))
    assert bins_of(budgeted) == [4, 4, 4]
    assert report.dropped["margin-bin sampling (3 quantile bins)"] == 15
    again, _ = load_pairs(str(path), PairOptions(margin_bins=3, max_pairs=12, seed=1))
    assert [p.row for p in again] == [p.row for p in budgeted]


def test_margin_bins_keep_most_of_heavy_tailed_margins(tmp_path, write_jsonl):
    # Issue 14.9: SHP-like upvote differences (Pareto tail). Equal-width bins kept 6 of 50,000; quantile bins
    # are near-equal in size, so cutting each to the smallest keeps most pairs.
    import random

    rng = random.Random(0)
    margins = [int(rng.paretovariate(1.1)) + rng.random() for _ in range(5000)]
    rows = [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}", "margin": m} for i, m in enumerate(margins)]
    path = write_jsonl(tmp_path / "shp_like.jsonl", rows)
    pairs, report = load_pairs(str(path), PairOptions(margin_bins=10, seed=0))
    assert len(pairs) > 4500 and not report.warnings


def test_a_filter_that_drops_more_than_half_says_so(tmp_path, write_jsonl):
    margins = [1.0] * 90 + [float(m) for m in range(2, 12)]  # one value fills most bins' worth
    rows = [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}", "margin": m} for i, m in enumerate(margins)]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    pairs, report = load_pairs(str(path), PairOptions(margin_bins=10, seed=0))
    assert len(pairs) < 50
    assert report.warnings and "margin-bin sampling" in report.warnings[0] and f"kept {len(pairs)} of 100" in report.warnings[0]
    assert report.render().splitlines()[1].startswith("  WARNING: margin-bin sampling")


def test_bin_quotas_water_fill():
    assert bin_quotas([20, 5, 2], 12) == [5, 5, 2]
    assert bin_quotas([10, 0, 10], 7) == [3, 0, 4] or bin_quotas([10, 0, 10], 7) == [4, 0, 3]
    assert sum(bin_quotas([3, 3, 3], 100)) == 9


def test_max_pairs_is_a_seeded_sample(tmp_path, write_jsonl):
    rows = [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(30)]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    pairs, report = load_pairs(str(path), PairOptions(max_pairs=10, seed=3))
    assert len(pairs) == 10 and report.dropped["over max_pairs=10"] == 20
    assert [p.row for p in pairs] == sorted(p.row for p in pairs)
    assert [p.row for p in pairs] != list(range(1, 11))  # not simply the first ten lines


# --- HelpSteer2 / HelpSteer3 -----------------------------------------------------------------------------

def hs2_row(strength: int, split: str = "train", prompt: str = "Explain X.") -> dict:
    return {
        "split": split, "prompt": prompt, "response_1": "first", "response_2": "second",
        "preference_strength": strength, "preference_statement": "...", "preference_elaboration": "...",
    }


def test_helpsteer2_negative_strength_means_response_1_is_better(tmp_path):
    # Pins the sign from the nvidia/HelpSteer2 card: -3 "Response 1 is much better", 3 "Response 2 is much better".
    path = write_gz_jsonl(tmp_path / "preference.jsonl.gz", [hs2_row(-2), hs2_row(3), hs2_row(1, split="val")])
    pairs, report = load_pairs({"source": "helpsteer2", "path": str(path)}, PairOptions(gamma=0.5))
    assert report.read == 2  # the val row belongs to the other split
    assert (contents(pairs[0].chosen), pairs[0].margin) == (["first"], 2.0)
    assert (contents(pairs[1].chosen), pairs[1].margin) == (["second"], 3.0)
    assert pairs[1].p == pytest.approx(sigmoid(0.5 * 3), rel=1e-6)
    val, _ = load_pairs({"source": "helpsteer2", "path": str(path), "split": "val"})
    assert contents(val[0].chosen) == ["second"] and val[0].margin == 1.0


def test_helpsteer2_snapshot_reads_the_preference_file_and_ties(tmp_path, write_jsonl):
    root = tmp_path / "HelpSteer2"
    write_gz_jsonl(root / "preference" / "preference.jsonl.gz", [hs2_row(0), hs2_row(-1)])
    write_gz_jsonl(root / "train.jsonl.gz", [{"prompt": "p", "response": "r", "helpfulness": 3}])  # the ratings file
    kept, report = load_pairs({"source": "helpsteer2", "path": str(root)})
    assert [p.p for p in kept][0] == 0.5 and kept[0].margin == 0
    dropped, report = load_pairs({"source": "helpsteer2", "path": str(root)}, PairOptions(ties="drop"))
    assert len(dropped) == 1 and report.dropped["tie (no preference)"] == 1
    with pytest.raises(UserError, match="split 'validation'.*train"):
        load_pairs({"source": "helpsteer2", "path": str(root), "split": "validation"})


def test_helpsteer2_multi_turn_prompt_becomes_messages():
    turns = nemo_turns("Hi\n<extra_id_1>Assistant\nHello\n<extra_id_1>User\nAnd X?")
    assert turns == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And X?"},
    ]


def hs3_row(preference: int) -> dict:
    return {
        "domain": "general", "language": "english",
        "context": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Tell me X"}],
        "response1": "one", "response2": "two", "overall_preference": preference, "individual_preference": [],
    }


def test_helpsteer3_sign_context_and_splits(tmp_path):
    root = tmp_path / "HelpSteer3"
    write_gz_jsonl(root / "preference" / "train.jsonl.gz", [hs3_row(-3), hs3_row(2), hs3_row(0)])
    write_gz_jsonl(root / "preference" / "validation.jsonl.gz", [hs3_row(1)])
    write_gz_jsonl(root / "edit" / "train.jsonl.gz", [{"context": [], "original_response": "x"}])
    pairs, _ = load_pairs({"source": "helpsteer3", "path": str(root)}, PairOptions(gamma=1.0))
    assert [contents(p.chosen) for p in pairs] == [["one"], ["two"], ["one"]]
    assert [p.margin for p in pairs] == [3.0, 2.0, 0.0]
    assert pairs[2].p == 0.5
    assert len(pairs[0].prompt) == 3 and pairs[0].prompt[-1]["content"] == "Tell me X"
    val, _ = load_pairs({"source": "nvidia/HelpSteer3", "path": str(root), "split": "validation"})
    assert contents(val[0].chosen) == ["two"] and val[0].margin == 1.0


# --- the generic schema ----------------------------------------------------------------------------------

def test_strings_and_message_lists_give_the_same_pair(tmp_path, write_jsonl):
    as_strings = {"prompt": "Q?", "chosen": "yes", "rejected": "no", "score_chosen": 3, "score_rejected": 1}
    as_messages = {
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
        "score_chosen": 3, "score_rejected": 1,
    }
    whole_chats = {
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "no"}],
        "margin": 2,
    }
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "g.jsonl", [as_strings, as_messages, whole_chats])))
    assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in pairs[1:]] == [(pairs[0].prompt, pairs[0].chosen, pairs[0].rejected, 2.0)] * 2


def test_targets_p_chosen_passes_through_and_no_margin_is_a_hard_label(tmp_path, write_jsonl):
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y", "p_chosen": 0.73},
        {"prompt": "b", "chosen": "x", "rejected": "y", "p_chosen": 0.2},
        {"prompt": "c", "chosen": "x", "rejected": "y"},
        {"prompt": "d", "chosen": "x", "rejected": "y", "score_chosen": 6, "score_rejected": 5},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    pairs, report = load_pairs(str(path), PairOptions(gamma=3.0))
    assert [p.p for p in pairs[:3]] == pytest.approx([0.73, 0.8, 1.0])
    assert contents(pairs[1].chosen) == ["y"] and report.fixed["chosen rated below rejected: swapped"] == 1
    assert pairs[0].margin is None and pairs[2].margin is None
    assert pairs[3].p == pytest.approx(sigmoid(3.0), rel=1e-6)
    hard, _ = load_pairs(str(path), PairOptions(gamma=None))
    # Hard labels name the winner of every pair, a judged probability included (issue 14.11: one rule).
    assert [p.p for p in hard] == [1.0, 1.0, 1.0, 1.0] and contents(hard[1].chosen) == ["y"]


def test_column_remapping_from_config_and_spec(tmp_path, write_jsonl):
    row = {"question": "Q?", "good": "yes", "bad": "no", "s_good": 7, "s_bad": 4, "answer": "other"}
    path = write_jsonl(tmp_path / "r.jsonl", [row])
    config_columns = {"prompt": "question", "chosen": "good", "rejected": "bad", "score_chosen": "s_good", "score_rejected": "s_bad"}
    pairs, _ = load_pairs(str(path), PairOptions(columns=config_columns))
    assert (contents(pairs[0].prompt), contents(pairs[0].chosen), pairs[0].margin) == (["Q?"], ["yes"], 3.0)
    # A spec's own columns win over the config's data_columns.
    pairs, _ = load_pairs({"path": str(path), "columns": {"chosen": "answer"}}, PairOptions(columns=config_columns))
    assert contents(pairs[0].chosen) == ["other"]


def test_column_remapping_for_a_hub_schema(tmp_path, write_jsonl):
    row = shp_row("p1", "A", "B", 9, 3)
    row["post_text"] = row.pop("history")
    path = write_jsonl(tmp_path / "shp.jsonl", [row])
    pairs, _ = load_pairs({"source": "shp", "path": str(path), "columns": {"history": "post_text"}})
    assert contents(pairs[0].prompt) == ["post p1"]


def test_csv_parquet_and_json_lines_under_a_json_name(tmp_path):
    import pandas as pd
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 5.0, "score_rejected": 2.0}]
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    (tmp_path / "shp_train.json").write_text("\n".join(json.dumps(shp_row(f"p{i}", "a", "b", 5, 2)) for i in range(3)))
    assert load_pairs(str(tmp_path / "p.csv"))[0][0].margin == 3.0
    assert load_pairs(str(tmp_path / "p.parquet"))[0][0].margin == 3.0
    assert len(load_pairs({"source": "shp", "path": str(tmp_path / "shp_train.json")})[0]) == 3


# --- the Hub ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "spec, expected",
    [
        ("ultrafeedback", ("allenai/ultrafeedback_binarized_cleaned", None, None, "train_prefs")),
        ("HuggingFaceH4/ultrafeedback_binarized", ("HuggingFaceH4/ultrafeedback_binarized", None, None, "train_prefs")),
        ("shp", ("stanfordnlp/SHP", None, None, "train")),
        ("Ahjeong/SHP_filtered_for_MMPO", ("Ahjeong/SHP_filtered_for_MMPO", None, None, "train")),
        ("helpsteer2", ("nvidia/HelpSteer2", None, "preference/preference.jsonl.gz", "train")),
        ({"source": "helpsteer3", "split": "validation"}, ("nvidia/HelpSteer3", "preference", None, "validation")),
    ],
)
def test_hub_names_go_through_load_dataset(monkeypatch, spec, expected):
    import datasets
    calls = []
    rows = {
        "stanfordnlp/SHP": [shp_row("p", "a", "b", 5, 1)],
        "Ahjeong/SHP_filtered_for_MMPO": [shp_row("p", "a", "b", 5, 1)],
        "nvidia/HelpSteer2": [hs2_row(-1), hs2_row(2, split="val")],
        "nvidia/HelpSteer3": [hs3_row(-1)],
    }

    def fake_load_dataset(path, name=None, data_files=None, split=None, **kwargs):
        calls.append((path, name, data_files, split))
        return datasets.Dataset.from_list(rows.get(path, [uf_row(0, "c", "r", 5, 1)]))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs, report = load_pairs(spec)
    assert calls == [expected]
    assert len(pairs) == 1 and report.kept == 1  # HelpSteer2's val row is filtered by its split column


def test_unreachable_hub_is_one_line_pointing_at_a_local_copy(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nvidia/HelpSteer3' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as err:
        load_pairs("helpsteer3")
    message = str(err.value)
    assert "\n" not in message and "nvidia/HelpSteer3" in message and "path:" in message


# --- the report ------------------------------------------------------------------------------------------

def test_report_counts_render_and_json(tmp_path, write_jsonl, capsys):
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 8, "score_rejected": 6},
        {"prompt": "b", "chosen": "x", "rejected": "y", "score_chosen": 2, "score_rejected": 6},
        {"prompt": "c", "chosen": "same", "rejected": "same", "score_chosen": 5, "score_rejected": 1},
        {"prompt": "d", "chosen": "x", "rejected": "y", "score_chosen": 4, "score_rejected": 4},
    ]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    assert main(["data", str(path), "--json", "--gamma", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["read"], out["kept"]) == (4, 3)
    assert out["dropped"] == {"chosen identical to rejected": 1}
    assert out["fixed"] == {"chosen rated below rejected: swapped": 1}
    assert out["margin_counts"] == {"0.0": 1, "2.0": 1, "4.0": 1}
    assert sum(out["p_histogram"]["counts"]) == 3 and out["p"]["max"] == pytest.approx(sigmoid(2.0), rel=1e-6)
    assert main(["data", str(path), "--ties", "drop"]) == 0
    text = capsys.readouterr().out
    assert "read 4 rows -> 4 pairs, kept 2 pairs" in text and "dropped 1 pair: tie (no preference)" in text
    assert "fixed 1 pair: chosen rated below" in text


def test_report_render_lists_truncation_and_pairs_without_margin():
    report = DataReport(source="x", read=3, truncation={"pairs": 3, "prompt_truncated": 2, "response_truncated": 0})
    report.keep([1.0, 0.9, 0.6], [None, 2.0, 0.5])
    text = report.render()
    assert "prompt truncated: 2" in text and "response truncated" not in text
    assert "no margin (judged p or hard label): 1" in text and "kept 3 pairs" in text


def test_hub_data_set_with_hf_hub_offline_fails_at_once_in_one_line(monkeypatch):
    from mmpo.data.hub import read_hub

    def asked(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: the Hub must not be asked")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", asked)
    with pytest.raises(UserError) as e:
        list(read_hub("nosuch-org/nosuch-data", "train"))
    message = str(e.value)
    assert "\n" not in message and "nosuch-org/nosuch-data" in message
    assert "not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in message and "path: /path/to/copy" in message


def test_unreachable_hub_is_asked_once_then_only_the_cache_is_read(monkeypatch):
    import datasets

    from mmpo.data.hub import read_hub

    lookups, offline_during_load = [], []

    def unreachable(self, repo_id, **kwargs):
        lookups.append(kwargs.get("timeout"))
        raise ConnectionError("[Errno -2] Name or service not known")

    def load_dataset(*args, **kwargs):
        offline_during_load.append(datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("not cached")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(UserError, match=r"the Hub is unreachable \(\[Errno -2\] Name or service not known\) and the data set is not in the Hugging Face cache"):
        list(read_hub("org/data", "train"))
    assert len(lookups) == 1 and lookups[0] is not None  # one lookup, with a timeout
    assert offline_during_load == [True] and datasets.config.HF_HUB_OFFLINE is False  # cache only, then restored
