"""MT-bench: question/answer files, generation protocol, judge prompts, rating parsing, the HTTP judge client's
retries, judging with missing judgments counted, resume, the radar plot and the CLI.

The judge here is a local stdlib HTTP server on 127.0.0.1 whose answers the test controls: it reads the
graded answer out of the judge prompt and answers according to a marker in it."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmpo.errors import DataError, UserError
from mmpo.evaluation.judge_client import JudgeClient, JudgeConfigError, JudgeRequestError, chat_completions_url
from mmpo.evaluation.mtbench import (
    CATEGORY_TEMPERATURE,
    Question,
    build_judge_messages,
    fill_template,
    generate_answers,
    judge_answers,
    load_answers,
    load_judge_prompts,
    load_questions,
    load_reference_answers,
    parse_rating,
    radar_plot,
    summarize_judgments,
)


@pytest.fixture(scope="module")
def bench(mt_bench):
    """The real MT-bench files from the shared data directory (read in place, never copied)."""
    files = mt_bench
    return {
        "files": files,
        "questions": load_questions(files.questions),
        "prompts": load_judge_prompts(files.judge_prompts),
        "references": load_reference_answers(files.reference_answers),
    }


def _q(bench, qid: int) -> Question:
    return next(q for q in bench["questions"] if q.question_id == qid)


# --- files ------------------------------------------------------------------------------------------------


def test_real_files_load(bench):
    questions = bench["questions"]
    assert len(questions) == 80 and all(len(q.turns) == 2 for q in questions)
    assert {q.category for q in questions} == set(CATEGORY_TEMPERATURE)
    assert {"single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"} <= set(bench["prompts"])
    # Every reference-guided question has a two-turn reference.
    for q in questions:
        if q.category in ("math", "reasoning", "coding"):
            assert len(bench["references"].get(q.question_id) or q.reference or []) >= 2, q.question_id


def test_bad_question_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["a", "b"]}) + "\n"
                    + json.dumps({"question_id": 2, "category": "writing", "turns": "not a list"}) + "\n")
    with pytest.raises(DataError) as e:
        load_questions(path)
    assert e.value.row == 2 and e.value.field == "turns" and str(path) in str(e.value)


def test_answers_mixing_models_are_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"question_id": i, "model_id": m, "choices": [{"index": 0, "turns": ["x", "y"]}]} for i, m in ((1, "a"), (2, "b"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="mixes models"):
        load_answers(path)


# --- generation -------------------------------------------------------------------------------------------


def test_generate_protocol_temperatures_and_resume(tmp_path):
    questions = [
        Question(1, "writing", ["w1", "w2"]),
        Question(2, "math", ["m1", "m2"]),
        Question(3, "stem", ["s1", "s2"]),
        Question(4, "humanities", ["h1", "h2"]),
    ]
    calls = []

    def fake_generate(messages, temperature, max_new_tokens, seed):
        calls.append((messages, temperature, max_new_tokens, seed))
        return f"answer to {messages[-1]['content']}"

    out = tmp_path / "answers.jsonl"
    result = generate_answers(fake_generate, questions, out, "m", max_new_tokens=33, limit=3, progress=False)
    assert result == {"answered": 3, "skipped": 0}
    # Turn 2 carries turn 1's question and the model's own turn-1 answer.
    assert calls[1][0] == [
        {"role": "user", "content": "w1"},
        {"role": "assistant", "content": "answer to w1"},
        {"role": "user", "content": "w2"},
    ]
    assert [c[1] for c in calls] == [0.7, 0.7, 0.0, 0.0, 0.1, 0.1]  # writing, math (greedy), stem
    assert {c[2] for c in calls} == {33}
    assert [c[3] for c in calls] == [10, 11, 20, 21, 30, 31]  # a seed of its own per question and turn
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in lines] == [1, 2, 3]
    assert lines[1]["choices"][0]["turns"] == ["answer to m1", "answer to m2"] and lines[1]["model_id"] == "m"

    calls.clear()
    result = generate_answers(fake_generate, questions, out, "m", limit=None, progress=False)
    assert result == {"answered": 1, "skipped": 3}
    assert [c[0][-1]["content"] for c in calls] == ["h1", "h2"]  # only the new question
    assert load_answers(out)[4].turns == ["answer to h1", "answer to h2"]


def test_generate_says_the_budget_and_shows_each_answer_and_turn(tmp_path, capsys):
    questions = [Question(7, "writing", ["w1", "w2"]), Question(9, "math", ["m1", "m2"])]
    generate_answers(lambda m, t, n, s: "ok", questions, tmp_path / "a.jsonl", "m", max_new_tokens=50, progress=True)
    err = capsys.readouterr().err
    assert "2 questions to answer (4 turns), up to 50 new tokens a turn: up to 200 tokens in all" in err
    for where in ("answer 1/2 (question 7), turn 1/2", "answer 1/2 (question 7), turn 2/2",
                  "answer 2/2 (question 9), turn 1/2", "answer 2/2 (question 9), turn 2/2"):
        assert where in err


def test_generate_resumes_after_a_line_cut_short(tmp_path):
    out = tmp_path / "answers.jsonl"
    done = {"question_id": 1, "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"]}]}
    out.write_text(json.dumps(done) + "\n" + '{"question_id": 2, "model_id": "m", "choi')  # killed mid-write
    questions = [Question(1, "writing", ["w1", "w2"]), Question(2, "writing", ["x1", "x2"])]
    result = generate_answers(lambda m, t, n, s: "ok", questions, out, "m", progress=False)
    assert result == {"answered": 1, "skipped": 1}
    assert sorted(load_answers(out)) == [1, 2]


# --- judge prompts and ratings ----------------------------------------------------------------------------


def test_general_prompts_single_and_multi_turn(bench):
    q = _q(bench, 81)  # writing
    name, messages = build_judge_messages(q, ["FIRST ANSWER", "SECOND ANSWER"], 1, bench["prompts"], bench["references"])
    assert name == "single-v1"
    assert messages[0] == {"role": "system", "content": bench["prompts"]["single-v1"].system_prompt}
    user = messages[1]["content"]
    assert q.turns[0] in user and "FIRST ANSWER" in user
    assert "SECOND ANSWER" not in user and "Reference" not in user

    name, messages = build_judge_messages(q, ["FIRST ANSWER", "SECOND ANSWER"], 2, bench["prompts"], bench["references"])
    assert name == "single-v1-multi-turn"
    user = messages[1]["content"]
    # The whole conversation, in order, with the second answer last.
    order = [user.index(q.turns[0]), user.index("FIRST ANSWER"), user.index(q.turns[1]), user.index("SECOND ANSWER")]
    assert order == sorted(order)
    assert "{" + "answer_2}" not in user


@pytest.mark.parametrize("qid, category", [(111, "math"), (101, "reasoning"), (121, "coding")])
def test_reference_guided_prompts(bench, qid, category):
    q = _q(bench, qid)
    assert q.category == category
    ref = bench["references"][qid]
    name, messages = build_judge_messages(q, ["A1", "A2"], 1, bench["prompts"], bench["references"])
    assert name == "single-math-v1"
    assert ref[0] in messages[1]["content"] and ref[1] not in messages[1]["content"]
    name, messages = build_judge_messages(q, ["A1", "A2"], 2, bench["prompts"], bench["references"])
    assert name == "single-math-v1-multi-turn"
    user = messages[1]["content"]
    assert user.index(ref[0]) < user.index(ref[1]) < user.index("A1") < user.index("A2")


def test_missing_reference_is_an_error(bench):
    q = Question(999, "math", ["q1", "q2"])
    with pytest.raises(UserError, match="reference answer"):
        build_judge_messages(q, ["a", "b"], 1, bench["prompts"], {})
    # The question's own reference is used when the GPT-4 file has none.
    q.reference = ["R1", "R2"]
    _, messages = build_judge_messages(q, ["a", "b"], 2, bench["prompts"], {})
    assert "R1" in messages[1]["content"] and "R2" in messages[1]["content"]


def test_fill_template_leaves_braces_in_answers_alone():
    assert fill_template("Q: {question} A: {answer}", {"question": "{answer}", "answer": "x {y}"}) == "Q: {answer} A: x {y}"
    with pytest.raises(KeyError):
        fill_template("{missing}", {})


@pytest.mark.parametrize(
    "text, rating",
    [
        ("Good answer. Rating: [[7]]", 7.0),
        ("Rating: [[8.5]]", 8.5),
        ("[[ 9 ]]", None),  # FastChat's pattern has no blanks inside the brackets
        ("Rating: [[6/10]]", None),  # nor a "/10"
        ("7", None),  # nor a bare number
        ("[[7]] then [[8]]", 7.0),  # the first rating counts
        ("Rating: [5]", 5.0),  # single-bracket fallback
        ("Step [1] is wrong. Rating: [[3]]", 3.0),  # double brackets win over single
        ("As the format says, e.g. [[5]]... my verdict: [[2]]", 5.0),
        ("Rating: [[10]]", 10.0),
        ("Rating: [[11]]", None),  # outside 1..10
        ("Rating: [[0]]", None),
        ("I would rate it highly.", None),
        ("Rating: [[rating]]", None),
    ],
)
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


def test_judge_grader_rates_by_the_same_rule():
    from mmpo.graders.judge import JudgeGrader

    replies = {"a": "[[7]] then [[8]]", "b": "[[7/10]]", "c": "7"}

    class Canned:
        url = "canned"

        def request(self, payload):
            return {"choices": [{"message": {"content": replies[payload["messages"][-1]["content"].split("[Response]\n")[1][0]]}}]}

    from mmpo.graders import ScoreItem

    grader = JudgeGrader("http://unused", "m", client=Canned(), progress=False, concurrency=1)
    prompt = [{"role": "user", "content": "q"}]
    got = grader.score([ScoreItem(prompt, key) for key in replies])
    assert got == [parse_rating(text) for text in replies.values()] == [7.0, None, None]


# --- a local judge server whose answers the test controls -------------------------------------------------


class FakeJudge:
    """A local OpenAI-style endpoint. ``plan`` is a list of statuses to return first (then 200s); a 200
    answer grades the answer shown in the prompt by its marker: ``score=N`` -> ``[[N]]``, ``norating`` ->
    prose without a rating, ``fail`` -> HTTP 500 every time."""

    def __init__(self, plan: list[int] | None = None, retry_after: str | None = None):
        self.plan = list(plan or [])
        self.retry_after = retry_after
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    status = judge.plan.pop(0) if judge.plan else 200
                graded = _graded_answer(body["messages"][-1]["content"])
                if status == 200 and "fail" in graded:
                    status = 500
                if status != 200:
                    payload = json.dumps({"error": {"message": f"planned {status}"}}).encode()
                    self.send_response(status)
                    if judge.retry_after:
                        self.send_header("Retry-After", judge.retry_after)
                else:
                    match = re.search(r"score=(\d+)", graded)
                    content = f"Fine. Rating: [[{match.group(1)}]]" if match else "A thoughtful answer, I think."
                    payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _graded_answer(prompt: str) -> str:
    """The answer a judge prompt asks about: the single answer, or the last assistant turn of a conversation."""
    if "### Assistant A:" in prompt:
        return prompt.rsplit("### Assistant A:", 1)[1]
    if "[The Start of Assistant's Answer]" in prompt:
        return prompt.split("[The Start of Assistant's Answer]", 1)[1].split("[The End of Assistant's Answer]", 1)[0]
    return prompt


def _sleeps() -> tuple[list[float], callable]:
    waited: list[float] = []
    return waited, waited.append


def test_client_retries_with_exponential_backoff_then_succeeds():
    waited, sleep = _sleeps()
    with FakeJudge(plan=[503, 502, 429]) as judge:
        client = JudgeClient(judge.url, "judge-x", api_key="k", max_retries=5, backoff_base=0.5, sleep=sleep)
        text = client.complete([{"role": "user", "content": "[The Start of Assistant's Answer]\nscore=8\n[The End of Assistant's Answer]"}])
    assert parse_rating(text) == 8.0
    assert waited == [0.5, 1.0, 2.0]  # base * 2**attempt before each retry
    assert client.requests_sent == 4 and client.retries == 3
    assert judge.requests[0]["path"] == "/v1/chat/completions" and judge.requests[0]["auth"] == "Bearer k"
    assert judge.requests[0]["body"]["model"] == "judge-x" and judge.requests[0]["body"]["temperature"] == 0.0


def test_client_honours_retry_after_and_caps_backoff():
    waited, sleep = _sleeps()
    with FakeJudge(plan=[429, 429], retry_after="7") as judge:
        client = JudgeClient(judge.url, "j", max_retries=3, backoff_max=5.0, sleep=sleep)
        client.complete([{"role": "user", "content": "[The Start of Assistant's Answer]\nscore=2\n[The End of Assistant's Answer]"}])
    assert waited == [5.0, 5.0]
    assert JudgeClient("http://127.0.0.1:1", "j", backoff_base=1.0, backoff_max=30.0).backoff(10) == 30.0


def test_client_gives_up_after_max_retries_and_does_not_retry_client_errors():
    waited, sleep = _sleeps()
    with FakeJudge(plan=[500] * 10) as judge:
        client = JudgeClient(judge.url, "j", max_retries=2, backoff_base=0.01, sleep=sleep)
        with pytest.raises(JudgeRequestError, match="3 attempts"):
            client.complete([{"role": "user", "content": "x"}])
        assert len(judge.requests) == 3 and len(waited) == 2
    with FakeJudge(plan=[400]) as judge:
        with pytest.raises(JudgeRequestError, match="HTTP 400"):
            JudgeClient(judge.url, "j", sleep=sleep).complete([{"role": "user", "content": "x"}])
        assert len(judge.requests) == 1
    with FakeJudge(plan=[401]) as judge:
        with pytest.raises(JudgeConfigError, match="401"):
            JudgeClient(judge.url, "j", sleep=sleep).complete([{"role": "user", "content": "x"}])


def test_client_fails_at_once_when_the_connection_is_refused():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waited, sleep = _sleeps()
    client = JudgeClient(f"http://127.0.0.1:{port}", "j", max_retries=2, backoff_base=0.01, sleep=sleep, timeout=5)
    with pytest.raises(JudgeConfigError, match=f"http://127.0.0.1:{port}/v1/chat/completions refused the connection") as e:
        client.complete([{"role": "user", "content": "x"}])
    assert "\n" not in str(e.value)
    assert client.requests_sent == 1 and waited == []  # no retries: nothing listens there


def test_chat_completions_url_forms():
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert chat_completions_url(url) == "http://h:1/v1/chat/completions"


# --- judging ----------------------------------------------------------------------------------------------


def _write_answers(path: Path, turns_by_qid: dict[int, list[str]], model_id: str = "policy-x") -> None:
    with open(path, "w") as f:
        for qid, turns in turns_by_qid.items():
            f.write(json.dumps({"question_id": qid, "model_id": model_id, "choices": [{"index": 0, "turns": turns}]}) + "\n")


def test_judge_counts_parsed_and_missing_and_resumes(bench, tmp_path):
    answers_path = tmp_path / "answers.jsonl"
    # 81 writing, 111 math (reference-guided), 131 extraction, 141 stem.
    _write_answers(answers_path, {
        81: ["score=8", "score=6"],
        111: ["score=3", "norating"],
        131: ["fail", "score=9"],
        141: ["score=10", "score=5"],
    })
    answers = load_answers(answers_path)
    judgments = tmp_path / "judgments.jsonl"
    waited, sleep = _sleeps()
    with FakeJudge() as judge:
        client = JudgeClient(judge.url, "judge-x", max_retries=1, backoff_base=0.01, sleep=sleep)
        summary = judge_answers(client, bench["questions"], answers, bench["prompts"], bench["references"], judgments,
                                limit=3, parallel=2, progress=False)
        first_requests = len(judge.requests)
        # The first 3 answered questions in question-file order: 81, 111, 131 -> 6 turns.
        assert summary["turns_total"] == 6
        assert summary["parsed"] == 4 and summary["missing"] == 2
        assert summary["parsed"] + summary["missing"] == summary["turns_total"]
        assert summary["missing_unparseable"] == 1 and summary["missing_failed"] == 1
        assert first_requests == 7  # 6 turns + 1 retry of the failing one
        assert summary["overall"] == pytest.approx((8 + 6 + 3 + 9) / 4)
        assert summary["per_turn"] == {"1": pytest.approx((8 + 3) / 2), "2": pytest.approx((6 + 9) / 2)}
        assert summary["per_category"]["writing"] == {"score": 7.0, "n": 2, "missing": 0}
        assert summary["per_category"]["math"] == {"score": 3.0, "n": 1, "missing": 1}
        assert summary["per_category"]["extraction"] == {"score": 9.0, "n": 1, "missing": 1}
        assert summary["unanswered_questions"] and 141 not in summary["unanswered_questions"]
        math_prompts = [r["body"]["messages"][-1]["content"] for r in judge.requests if bench["references"][111][0] in r["body"]["messages"][-1]["content"]]
        assert len(math_prompts) == 2  # both math turns were graded against the reference

        # Rerun: nothing new is asked except the failed turn (the unparseable one is kept unless asked).
        summary2 = judge_answers(client, bench["questions"], answers, bench["prompts"], bench["references"], judgments,
                                 limit=3, progress=False)
        assert summary2["requested_now"] == 1 and len(judge.requests) == first_requests + 2  # 1 request + 1 retry
        summary3 = judge_answers(client, bench["questions"], answers, bench["prompts"], bench["references"], judgments,
                                 limit=None, retry_unparseable=True, progress=False)
        # 141's two turns are new; 111 turn 2 (unparseable) and 131 turn 1 (failed) are asked again.
        assert summary3["requested_now"] == 4
        assert summary3["turns_total"] == 8 and summary3["parsed"] == 6 and summary3["missing"] == 2
    lines = [json.loads(line) for line in judgments.read_text().splitlines()]
    assert len(lines) == 6 + 1 + 4 and {r["judge_model"] for r in lines} == {"judge-x"}


def test_judge_stops_when_the_endpoint_keeps_failing(bench, tmp_path):
    answers_path = tmp_path / "answers.jsonl"
    _write_answers(answers_path, {81: ["fail", "fail"], 82: ["fail", "score=4"], 83: ["score=5", "score=5"]})
    judgments = tmp_path / "judgments.jsonl"
    waited, sleep = _sleeps()
    with FakeJudge() as judge:
        client = JudgeClient(judge.url, "j", max_retries=0, sleep=sleep)
        with pytest.raises(UserError, match="3 requests in a row"):
            judge_answers(client, bench["questions"], load_answers(answers_path), bench["prompts"], bench["references"],
                          judgments, max_consecutive_failures=3, progress=False)
    assert len(judgments.read_text().splitlines()) == 3  # what was judged before stopping is kept


def test_summary_with_nothing_rated():
    records = [{"question_id": 1, "turn": t, "category": "writing", "model_id": "m", "judge_model": "j",
                "score": None, "status": "failed"} for t in (1, 2)]
    summary = summarize_judgments(records)
    assert summary["overall"] is None and summary["missing"] == 2 and summary["per_category"]["writing"]["score"] is None


def test_radar_plot_writes_a_png(tmp_path):
    per_category = {c: {"score": s, "n": 2, "missing": 0} for c, s in zip(CATEGORY_TEMPERATURE, [8, 7.5, 4, 3, 5, 6, 9, None])}
    path = radar_plot(per_category, tmp_path / "radar.png", "test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_judge_writes_scores_judgments_and_plot(bench, tmp_path, monkeypatch):
    from mmpo.cli.main import main

    answers_path = tmp_path / "answers.jsonl"
    _write_answers(answers_path, {81: ["score=8", "score=7"], 101: ["score=4", "norating"]})
    monkeypatch.setenv("MMPO_JUDGE_API_KEY", "from-env")
    with FakeJudge() as judge:
        code = main(["eval", "mtbench", "judge", "--answers", str(answers_path), "--judge-url", judge.url,
                     "--judge-model", "jm", "--out", str(tmp_path / "scores.json"), "--questions-dir", str(bench["files"].questions.parent)])
    assert code == 0
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["turns_total"] == 4 and report["parsed"] == 3 and report["missing"] == 1
    assert report["overall"] == pytest.approx((8 + 7 + 4) / 3)
    assert report["http_requests"] == 4 == len(judge.requests)
    assert {r["auth"] for r in judge.requests} == {"Bearer from-env"}
    assert (tmp_path / "scores.radar.png").exists() and report["plot"] == str(tmp_path / "scores.radar.png")
    assert len((tmp_path / "scores.judgments.jsonl").read_text().splitlines()) == 4


def test_cli_generate_with_a_tiny_model(tmp_path, tiny_model_dir):
    from mmpo.cli.main import main

    model = tiny_model_dir
    # A question file of its own, with no judge prompts beside it: generation does not need them.
    questions = tmp_path / "my_questions.jsonl"
    questions.write_text("".join(
        json.dumps({"question_id": qid, "category": cat, "turns": [f"Q{qid} part 1?", f"Q{qid} part 2?"]}) + "\n"
        for qid, cat in ((7, "writing"), (8, "math"), (9, "stem"))
    ))
    out = tmp_path / "answers.jsonl"
    args = ["eval", "mtbench", "generate", "--model", str(model), "--out", str(out), "--limit", "2", "--max-new-tokens", "4",
            "--questions", str(questions)]
    assert main(args) == 0
    answers = load_answers(out)
    assert sorted(answers) == [7, 8]
    assert [json.loads(line)["temperature"] for line in out.read_text().splitlines()] == [0.7, 0.0]
    assert all(len(a.turns) == 2 and a.model_id == model.name for a in answers.values())
    assert main(args) == 0  # rerun: nothing to do, nothing appended
    assert len(out.read_text().splitlines()) == 2
