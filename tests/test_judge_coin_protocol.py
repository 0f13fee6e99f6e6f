"""Protocol coin of the GK judge: CoIN's official requests, reply parser and score rounding.

The expected values were worked out from CoIN's official scripts (create_prompt.py,
eval_GenealKnowledge.py, evaluate_score.py), partly by running them on these inputs; the rules
file is made up here with the structure of CoIN's rule.json (no CoIN text is copied).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_judge import _fake_run, serve

from mcit.cli import main
from mcit.config import ConfigError, JudgeConfig, load_config
from mcit.eval.judge import judge_run
from mcit.eval.judge_backends import build_backend
from mcit.eval.judge_protocol import (CoinProtocol, JudgeItem, gk_task_score, gk_task_score_official,
                                      load_coin_rules, parse_score_coin)
from mcit.report.matrix import load_matrix

RULES = {
    "default": {"role": "Assistant", "prompt": "not used by protocol coin"},
    "CoIN": {"role": "Pupil", "prompt": "Grade the pupil from 0 to 10.\nOne number.\n"},
    "CoIN_Grounding": {"role": "Pupil", "prompt": "Boxes are (x1, y1, x2, y2) in [0, 1].\nGrade 0-10."},
}


def _rules(folder: Path, data=RULES, name: str = "rule.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=4))
    return path


def _coin_cfg(rules, **kw) -> JudgeConfig:
    return JudgeConfig(backend="openai", protocol="coin", rules=str(rules), model="Qwen1.5-32B-Chat", **kw)


# ----------------------------------------------------------------------------- the request


class _Recorder:
    """An OpenAI-compatible server on 127.0.0.1 that keeps every request body and answers each with
    the reply scripted for the prediction in its prompt (default ``default_reply``)."""

    def __init__(self, replies: dict[str, str] | None = None, default_reply: str = "4/5"):
        self.bodies: list[dict] = []
        self.replies, self.default_reply = replies or {}, default_reply
        lock, recorder = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    recorder.bodies.append(body)
                content = recorder.reply(body["messages"][-1]["content"])
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, prompt: str) -> str:
        # the prediction's block: "[Pupil]" under protocol coin (RULES), "[Assistant's answer]" under mcit
        blocks = ("[Pupil]\n{}\n", "[Assistant's answer]\n{}\n")
        hits = (r for p, r in self.replies.items() if any(b.format(p) in prompt for b in blocks))
        return next(hits, self.default_reply)


@pytest.fixture
def recorder():
    yield from serve(_Recorder())


def test_the_exact_request_body_of_protocol_coin(tmp_path, recorder):
    judge = build_backend(_coin_cfg(_rules(tmp_path), base_url=recorder.url))
    vqa = JudgeItem("ignored", "two", "  2 cats\n", text="How many cats are there?\nAnswer with a number.")
    box = JudgeItem("ignored", "[0.1, 0.2, 0.3, 0.4]", "[0.1, 0.2, 0.3, 0.5]", grounding=True,
                    text="Please provide the bounding box coordinate of the region this sentence describes: the cat")
    judge.judge([vqa])
    judge.judge([box])
    assert recorder.bodies[0] == {
        "model": "Qwen1.5-32B-Chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": (
                "[Context]\n[Question]\nHow many cats are there?\n\n"
                "[Ground truth answer]\ntwo\n\n[End of ground truth answer]\n\n"
                "[Pupil]\n  2 cats\n\n\n[End of Pupil]\n\n"
                "[System]\nGrade the pupil from 0 to 10.\nOne number.")},
        ],
        "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_tokens": 20,
    }
    # Grounding: the whole text (instruction included), the box rule
    assert recorder.bodies[1]["messages"][1]["content"] == (
        "[Context]\n[Question]\nPlease provide the bounding box coordinate of the region this sentence "
        "describes: the cat\n\n[Ground truth answer]\n[0.1, 0.2, 0.3, 0.4]\n\n[End of ground truth answer]\n\n"
        "[Pupil]\n[0.1, 0.2, 0.3, 0.5]\n\n[End of Pupil]\n\n"
        "[System]\nBoxes are (x1, y1, x2, y2) in [0, 1].\nGrade 0-10.")
    assert judge.describe()["protocol"] == "coin" and judge.describe()["repetition_penalty"] == 1.05


@pytest.mark.parametrize("text, question", [
    ("Q?\nInstr.", "Q?"),
    ("Line one\nLine two\nInstr.", "Line one\nLine two"),
    ("A one-line question", ""),  # split("\n")[:-1] of one line: nothing
    ("Q?\nInstr.\n", "Q?\nInstr."),  # a trailing newline keeps the instruction
])
def test_question_is_the_text_without_its_last_line(tmp_path, text, question):
    protocol = CoinProtocol(load_coin_rules(_rules(tmp_path)))
    prompt = protocol.prompt(JudgeItem("ignored", "a", "b", text=text))
    assert prompt.startswith(f"[Context]\n[Question]\n{question}\n\n[Ground truth answer]\na\n")


def test_image_tokens_are_removed_and_the_prompt_stripped(tmp_path):
    rules = dict(RULES, CoIN={"role": "Pupil", "prompt": "Grade.   \n\n"})
    protocol = CoinProtocol(load_coin_rules(_rules(tmp_path, rules)))
    prompt = protocol.prompt(JudgeItem("", "cat", "a <image> cat", text="<image>What is it?\nInstr."))
    assert prompt == ("[Context]\n[Question]\nWhat is it?\n\n[Ground truth answer]\ncat\n\n[End of ground truth "
                      "answer]\n\n[Pupil]\na  cat\n\n[End of Pupil]\n\n[System]\nGrade.")


def test_settings_override_the_coin_defaults_and_mcit_sends_what_it_sent(tmp_path, recorder):
    cfg = _coin_cfg(_rules(tmp_path), base_url=recorder.url, system="", repetition_penalty=1.0, temperature=0.0)
    build_backend(cfg).judge([JudgeItem("q", "a", "b", text="q\ni")])
    body = recorder.bodies[-1]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert (body["repetition_penalty"], body["temperature"]) == (1.0, 0.0)

    mcit = JudgeConfig(backend="openai", model="m", base_url=recorder.url)  # the default protocol
    build_backend(mcit).judge([JudgeItem("q", "a", "b", text="q\ni")])
    body = recorder.bodies[-1]
    assert set(body) == {"model", "messages", "temperature", "top_p", "max_tokens"}
    assert [m["role"] for m in body["messages"]] == ["user"] and "[Reference answer]" in body["messages"][0]["content"]


def test_a_code_checkout_is_searched_at_the_usual_place(tmp_path):
    checkout = tmp_path / "CoIN"
    _rules(checkout / "ETrain" / "Eval" / "LLaVA" / "CoIN")
    assert load_coin_rules(checkout)["CoIN"] == RULES["CoIN"]
    assert load_coin_rules(checkout / "ETrain" / "Eval" / "LLaVA" / "CoIN")["CoIN_Grounding"] == RULES["CoIN_Grounding"]


# ----------------------------------------------------------------------------- the reply parser

# (reply, what the official evaluate_score.py adds to the sum; None: nothing added)
OFFICIAL_REPLIES = [
    ("7", 7.0), ("10", 10.0), ("0", 0.0), (" 8\n", 8.0), ("8.5", 8.5), ("10.0", 10.0), ("0.0", 0.0),
    ("11", None), ("15", None), ("-3", -3.0), ("1e1", 10.0), ("nan", None), ("inf", None), ("1_0", 10.0),
    ("+7", 7.0), (".5", 0.5), ("9.", 9.0), ("２", 2.0),
    ("4/5", 4.0), ("5/0", 5.0), ("10/10", 10.0), ("0/10", 0.0), ("12/10", None), ("8.5/10", None),
    ("0.5/1", None), ("7 /10", None), ("1 / 10", None), ("Score: 8/10", None), ("Rating: 7/10\nExplanation", None),
    ("٣/10", 3.0),
    ("**8**", 8.0), ("'6'", 6.0), ("Score: 10", 1.0), ("10\n\nThe assistant's answer matches.", 1.0),
    ("Score: 7, close", 7.0), ("8 out of 10", 8.0), ("3 4", 3.0),
    ("Score: 0", None), ("", None), ("   ", None), ("I'd rate it 0.", None), ("The answer is wrong.", None),
]


@pytest.mark.parametrize("reply, expected", OFFICIAL_REPLIES)
def test_replies_are_parsed_as_the_official_parser_does(reply, expected):
    assert parse_score_coin(reply) == expected


@pytest.mark.parametrize("reply", ["-inf", "½/2", "五/10"])
def test_replies_that_stop_the_official_script_score_nothing(reply):
    # official: -inf makes round() fail, "½" / "五" pass isnumeric() and then float() raises
    assert parse_score_coin(reply) is None


def test_a_failed_request_has_no_score():
    assert parse_score_coin(None) is None


# ----------------------------------------------------------------------------- the task score


@pytest.mark.parametrize("scores, exact, official", [
    ([10, 10, 3, 0], 57.5, 57),  # 23 / 40 * 100.0 = 57.49999999999999 -> 57 (not 58)
    ([10] * 10 + [9] + [0] * 9, 54.5, 55),  # 109 / 200 * 100.0 = 54.50000000000001 -> 55
    ([5, 0, 0, 0], 12.5, 12),  # round half to even
    ([7, 0, 0, 0], 17.5, 18),
    ([1, 0, 0], 100 / 30, 3),
    ([4.0, 8.0, 10.0, -3.0], 47.5, 48),  # "4/5", "**8**", "1e1", "-3" by the official script: 48
    ([10, None, None], 100 / 3, 33),  # nothing added counts as 0
])
def test_official_rounding_beside_the_exact_score(scores, exact, official):
    assert gk_task_score(scores) == pytest.approx(exact)
    assert gk_task_score_official(scores) == official


def test_official_rounding_of_an_empty_cell_is_none():
    assert gk_task_score_official([]) is None


# ----------------------------------------------------------------------------- judge_run


@pytest.fixture
def scripted():
    yield from serve(_Recorder({"yes": "10"}, default_reply="4/5"))


def test_judge_run_records_the_protocol_and_both_scores(tmp_path, scripted):
    run = _fake_run(tmp_path)
    cfg = _coin_cfg(_rules(tmp_path / "coin"), base_url=scripted.url)
    record = judge_run(run, cfg, log=lambda s: None)
    assert record["protocol"] == "coin" and record["judge"]["protocol"] == "coin"
    assert record["official_matrix"] == "matrix_gk_official.json"
    # after GQA: predictions yes, yes, yes, no -> 10 + 10 + 10 + 4 = 34 of 40
    cell = next(c for c in record["cells"] if c["stage"] == "01-GQA")
    assert (cell["score"], cell["score_official"]) == (85.0, 85)
    # Grounding after stage 2: "4/5" twice -> 8 of 20 = 40; GQA: yes, ???, no, no -> 22 of 40 = 55
    tasks, matrix, zero_shot, _ = load_matrix(run / "matrix_gk_official.json")
    assert matrix == [[85, None], [55, 40]] and zero_shot == [40, 40]
    assert all(isinstance(c["score_official"], int) for c in record["cells"])
    assert load_matrix(run / "matrix_gk.json")[1] == [[85.0, None], [55.0, 40.0]]


def test_a_cached_mcit_reply_is_never_reused_for_coin(tmp_path, scripted):
    run = _fake_run(tmp_path)
    mcit = JudgeConfig(backend="openai", model="Qwen1.5-32B-Chat", base_url=scripted.url)
    first = judge_run(run, mcit, log=lambda s: None)
    assert first["protocol"] == "mcit" and first["cache"]["new"] == 16
    assert not (run / "matrix_gk_official.json").exists()
    coin = judge_run(run, _coin_cfg(_rules(tmp_path / "coin"), base_url=scripted.url), log=lambda s: None)
    assert coin["cache"] == {"path": str(run / "judge_cache.jsonl"), "hits": 0, "new": 16}
    assert judge_run(run, mcit, log=lambda s: None)["cache"]["hits"] == 16  # each its own entries
    assert not (run / "matrix_gk_official.json").exists()  # the coin matrix does not outlive its judging
    assert len(scripted.bodies) == 32


# ----------------------------------------------------------------------------- settings and errors


def test_protocol_settings_defaults_and_validation():
    cfg = load_config(None, [])
    assert (cfg.judge.protocol, cfg.judge.rules, cfg.judge.system, cfg.judge.repetition_penalty) == (
        "mcit", None, None, None)
    with pytest.raises(ConfigError, match="judge.protocol"):
        load_config(None, ["judge.protocol=official"])
    with pytest.raises(ConfigError, match="judge.protocol: coin asks an LLM judge"):
        build_backend(JudgeConfig(protocol="coin", rules="x"))  # the embedding backend


@pytest.mark.parametrize("content, message", [
    (None, r"judge.rules: protocol coin reads its rule texts"),
    ("missing", r"judge.rules: .*nope.json: file not found"),
    ("folder", r"judge.rules: .* is a folder without ETrain/Eval/LLaVA/CoIN/rule.json or rule.json"),
    ('{"CoIN": {"role": "A", "prompt": "p"},', r"judge.rules: .*rule.json is not valid JSON: .*line 1"),
    ("[1, 2]", r"judge.rules: .*rule.json must hold a JSON object"),
    (json.dumps({"CoIN": RULES["CoIN"]}), r"judge.rules: .*rule.json has no 'CoIN_Grounding' entry"),
    (json.dumps(dict(RULES, CoIN={"role": "A"})), r"judge.rules: .*rule.json: CoIN.prompt is missing"),
    (json.dumps(dict(RULES, CoIN="text")), r"judge.rules: .*rule.json has a malformed 'CoIN' entry"),
    (b"\xff\xfe{", r"judge.rules: cannot read .*rule.json"),
])
def test_bad_rules_are_clear_config_errors(tmp_path, content, message):
    with pytest.raises(ConfigError, match=message):
        build_backend(_coin_cfg(_bad_rules(tmp_path, content)))


def _bad_rules(tmp_path: Path, content) -> Path | str:
    if content is None:
        return ""
    if content == "missing":
        return tmp_path / "nope.json"
    if content == "folder":
        return tmp_path
    path = tmp_path / "rule.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_cli_bad_rules_exit_2_without_traceback(tmp_path, capsys, scripted):
    run = _fake_run(tmp_path)
    base = ["judge", str(run), "--backend", "openai", "model=m", f"base_url={scripted.url}", "protocol=coin"]
    assert main(base) == 2
    assert "judge.rules: protocol coin reads its rule texts" in capsys.readouterr().err
    broken = _rules(tmp_path / "coin", "{not json")
    assert main(base + [f"rules={broken}"]) == 2
    err = capsys.readouterr().err
    assert f"judge.rules: {broken} is not valid JSON" in err and "Traceback" not in err
    assert main(base + [f"rules={_rules(tmp_path / 'good')}"]) == 0
    assert json.loads((run / "metrics_gk.json").read_text())["protocol"] == "coin"
    assert len(scripted.bodies) == 16  # nothing was sent before the rules were right: all from the last call
    assert all(b["messages"][0]["role"] == "system" for b in scripted.bodies)


# ----------------------------------------------------------------------------- local backend


def test_local_backend_sends_the_same_messages_through_the_chat_template(tmp_path):
    from test_judge import _tiny_lm

    folder = _tiny_lm(tmp_path / "lm")
    judge = build_backend(JudgeConfig(backend="local", model=str(folder), protocol="coin",
                                      rules=str(_rules(tmp_path / "coin")), max_tokens=3))
    judge._tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                                "{% if add_generation_prompt %}<assistant>{% endif %}")
    item = JudgeItem("", "red", "red", text="Colour?\nOne word.")
    text = judge._template(judge.protocol.messages(item))
    assert text == f"<system>You are a helpful assistant.\n<user>{judge.protocol.prompt(item)}\n<assistant>"
    assert judge.describe()["decoding"] == "sampled" and judge.describe()["repetition_penalty"] == 1.05
    verdict = judge.judge([item])[0]
    assert isinstance(verdict.reply, str) and verdict.score == parse_score_coin(verdict.reply)
