"""`mmpo label` never silently replaces a labelled file made from other data: a rerun resumes, else --overwrite."""

import json

from mmpo.cli.main import main


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"What is {i} + 1? Answer with just the number.", "chosen": str(i + 1), "rejected": str(i + 3),
             "task": "add", "answer": str(i + 1)} for i in range(start, start + n)]


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_refuses_to_replace_other_datas_labels_unless_overwrite(tmp_path, write_jsonl, capsys):
    big = write_jsonl(tmp_path / "big.jsonl", _rows(32))
    small = write_jsonl(tmp_path / "small.jsonl", _rows(6, start=100))
    out = tmp_path / "labeled.jsonl"
    assert main(["label", "--data", str(big), "--out", str(out), "--checker", "graded-tasks"]) == 0
    assert len(_lines(out)) == 32
    capsys.readouterr()

    assert main(["label", "--data", str(small), "--out", str(out), "--checker", "graded-tasks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "32 rows" in err[0]
    assert len(_lines(out)) == 32  # untouched

    assert main(["label", "--data", str(small), "--out", str(out), "--checker", "graded-tasks", "--overwrite"]) == 0
    assert "replacing" in capsys.readouterr().out
    assert len(_lines(out)) == 6


def test_rerunning_the_same_labelling_resumes(tmp_path, write_jsonl, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", _rows(5))
    out = tmp_path / "labeled.jsonl"
    assert main(["label", "--data", str(data), "--out", str(out), "--checker", "graded-tasks"]) == 0
    first = _lines(out)
    capsys.readouterr()
    assert main(["label", "--data", str(data), "--out", str(out), "--checker", "graded-tasks"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert _lines(out) == first


def test_an_out_file_without_a_summary_is_not_replaced(tmp_path, write_jsonl):
    data = write_jsonl(tmp_path / "pairs.jsonl", _rows(3))
    out = tmp_path / "mine.jsonl"
    out.write_text('{"keep": 1}\n')
    assert main(["label", "--data", str(data), "--out", str(out), "--checker", "graded-tasks"]) == 2
    assert out.read_text() == '{"keep": 1}\n'
