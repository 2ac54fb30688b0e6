"""The public API: mmpo.label and mmpo.fit_gamma."""

import json
import math
import random

import mmpo


def length_grade(meta, response):
    """A checker for the test: longer responses grade higher."""
    return float(len(response))


def test_label_adds_checker_scores_and_keeps_the_old_margin(tmp_path, write_jsonl):
    rows = [{"prompt": "q1", "chosen": "long answer", "rejected": "short", "margin": 3},
            {"prompt": "q2", "chosen": "a", "rejected": "abc"},
            {"prompt": "q3", "chosen": "x"}]  # no rejected: not labelled
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "labelled.jsonl"
    summary = mmpo.label(str(data), str(out), f"checker:{__name__}:length_grade", progress=False)
    assert (summary["rows"], summary["labeled"], summary["unlabeled"]) == (3, 2, 1)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["score_chosen"], r["score_rejected"]) for r in got] == [(11.0, 5.0), (1.0, 3.0)]
    assert got[0]["original_margin"] == 3 and "margin" not in got[0]
    assert json.loads((tmp_path / "labelled.label.json").read_text())["labeled"] == 2
    assert "label_error" in json.loads((tmp_path / "labelled.unlabeled.jsonl").read_text().splitlines()[0])


def test_fit_gamma_recovers_the_gamma_that_made_the_outcomes(tmp_path, write_jsonl):
    rng = random.Random(0)
    rows = []
    for i in range(2000):
        m = rng.uniform(-3, 3)
        rows.append({"prompt": f"q{i}", "chosen": "a", "rejected": "b", "margin": m,
                     "label": int(rng.random() < 1 / (1 + math.exp(-2.0 * m)))})
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = mmpo.fit_gamma(str(data), out=str(tmp_path / "fit.json"))
    assert result["profile_low"] < 2.0 < result["profile_high"]
    assert (result["margin"], result["outcome"], result["n"]) == ("margin", "label", 2000)
    assert json.loads((tmp_path / "fit.json").read_text())["gamma"] == result["gamma"]
    assert (tmp_path / "fit.png").exists()
