"""EMT with an LLM judge as the answer decider (mcit.emt.judge_decider): the three-way prompt, the
reply parser, the outcome mapping, `mcit emt --decider openai` against a loopback endpoint, EMT
tracking with a judge, and the user errors."""
from __future__ import annotations

import json
import re

import pytest
from test_emt_cli import ckpt  # noqa: F401  (a module-scoped fixture: a tiny checkpoint folder)
from test_judge import SECRET, _Endpoint, serve

from mcit.cli import main
from mcit.config import ConfigError, JudgeConfig, load_config
from mcit.emt.decide import JUDGE_NO_LABEL, JUDGE_UNPARSABLE, REASONS, summarize
from mcit.emt.judge_decider import JudgeDecider, build_judge_decider, build_judge_prompt, parse_label_reply
from mcit.eval.judge_backends import EmbeddingJudge, _TextJudge

QUESTION = "What is the shape in the image? Please answer with a single shape from this list: [circle, square, star]."
LABELS = ("circle", "square", "star")


class _Scripted(_TextJudge):
    """A text backend replying from a script; records the prompts and the batched calls."""

    backend, model = "openai", "scripted"

    def __init__(self, replies):
        super().__init__()
        self.script, self.prompts, self.batches = list(replies), [], 0

    def _replies(self, prompts):
        self.batches += 1
        self.prompts += prompts
        return [self.script.pop(0) for _ in prompts]


# ----------------------------------------------------------------------------- prompt and parser


def test_prompt_numbers_the_labels_and_does_not_give_the_target_away():
    prompt = build_judge_prompt(QUESTION, LABELS, "  It is a star.  ")
    assert "[Labels]\n1. circle\n2. square\n3. star\n[End of labels]" in prompt
    assert f"[Question]\n{QUESTION}\n" in prompt and "[Assistant's answer]\nIt is a star.\n" in prompt
    assert "Reply 0 if" in prompt and "not told the correct label" in prompt
    # what the judge sees does not depend on the target
    backend = _Scripted([("1", None), ("1", None)])
    JudgeDecider(backend).decide_many(QUESTION, LABELS, ["circle"], [0])
    JudgeDecider(backend).decide_many(QUESTION, LABELS, ["circle"], [2])
    assert backend.prompts[0] == backend.prompts[1]


@pytest.mark.parametrize("reply, expected", [
    ("2", 2), (" 2.", 2), ("**2**", 2), ("Answer: 3", 3), ("Label 3", 3), ("0", 0), ("3\n", 3),
    ("2 (square)", 2), ("Label-1", 1),
    ("4", None), ("17", None), ("-1", None), ("2.5", None),  # outside 0..K or not a whole number
    (None, None), ("", None), ("   ", None), ("square", None), ("I cannot tell.", None),
])
def test_parse_label_reply(reply, expected):
    assert parse_label_reply(reply, len(LABELS)) == expected


# ----------------------------------------------------------------------------- outcome mapping


def test_outcome_mapping_and_summary_by_hand():
    backend = _Scripted([("2", None), ("**3**", None), ("0", None), ("It is a square", None),
                         (None, "HTTP 500 (gave up after 5 attempts)"), ("9", None)])
    answers = ["square", "star", "circle or square", "hmm", "square", "square"]
    judged = JudgeDecider(backend).judge(QUESTION, LABELS, answers, [1, 1, 1, 1, 1, 1])
    assert backend.batches == 1 and backend.calls == 6  # one batched request for the whole set
    d = [j.decision for j in judged]
    assert (d[0].outcome, d[0].label, d[0].named, d[0].reason) == ("correct", 1, (1,), None)
    assert (d[1].outcome, d[1].label, d[1].named, d[1].reason) == ("wrong_label", 2, (2,), None)
    assert (d[2].outcome, d[2].label, d[2].reason) == ("hallucinated", None, JUDGE_NO_LABEL)
    assert [x.reason for x in d[3:]] == [JUDGE_UNPARSABLE] * 3  # no number, failed request, out of range
    assert all(x.outcome == "hallucinated" and not x.correct for x in d[3:])
    assert [j.reply for j in judged][:2] == ["2", "**3**"] and judged[4].reply is None
    assert "HTTP 500" in judged[4].error

    s = summarize(d)  # 1 correct, 1 wrong label, 4 hallucinated of 6
    assert s["n"] == 6 and s["accuracy"] == pytest.approx(100 / 6)
    assert s["shares"] == pytest.approx({"correct": 100 / 6, "wrong_label": 100 / 6, "hallucinated": 400 / 6})
    assert {JUDGE_NO_LABEL, JUDGE_UNPARSABLE} <= set(REASONS)
    assert s["hallucination_reasons"][JUDGE_NO_LABEL] == 1 and s["hallucination_reasons"][JUDGE_UNPARSABLE] == 3
    assert JudgeDecider(backend).decide_many(QUESTION, LABELS, [], []) == [] and backend.batches == 1


def test_emt_judge_asks_the_endpoint_at_temperature_zero():
    cfg = JudgeConfig(backend="embedding", model="m", base_url="http://127.0.0.1:9/v1")
    judge = build_judge_decider(cfg, "openai")
    try:
        assert judge.describe() | {"temperature": 0.0, "top_p": 1.0, "max_tokens": 20} == judge.describe()
    finally:
        judge.close()
    assert (cfg.temperature, cfg.top_p) == (0.7, 0.8)  # the GK view keeps CoIN's sampling


def test_the_embedding_backend_is_refused():
    with pytest.raises(ConfigError, match="embedding judge cannot read which label"):
        build_judge_decider(JudgeConfig(backend="embedding"))
    with pytest.raises(ConfigError, match="cannot decide EMT answers.*openai or local"):
        JudgeDecider(EmbeddingJudge.__new__(EmbeddingJudge))  # its type alone is refused (nothing loaded)


def test_local_lm_judge_decides_every_answer_repeatably(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mcit.models.tiny_llava import train_tokenizer

    tok = train_tokenizer(["0 1 2 3 label circle square star answer"] * 20, 300)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    judge = build_judge_decider(JudgeConfig(model=str(tmp_path / "lm"), max_tokens=4), "local")
    answers, targets = ["circle", "a star", "no idea"], [0, 2, 1]
    first, second = (judge.judge(QUESTION, LABELS, answers, targets) for _ in range(2))
    assert [j.reply for j in first] == [j.reply for j in second]  # greedy: the same replies
    for j in first:
        k = parse_label_reply(j.reply, len(LABELS))
        assert j.decision.reason == (JUDGE_UNPARSABLE if k is None else JUDGE_NO_LABEL if k == 0 else None)


# ----------------------------------------------------------------------------- against an endpoint


def _label_number(prompt: str) -> str:
    """What a careful judge replies: the number of the one label named in the answer, else 0."""
    labels = re.findall(r"^(\d+)\. (.+)$", prompt.split("[Labels]\n")[1].split("\n[End of labels]")[0], re.M)
    answer = prompt.split("[Assistant's answer]\n")[1].split("\n[End of assistant's answer]")[0]
    words = re.findall(r"\w+", answer.lower())
    named = [k for k, label in labels if label.lower() in words]
    return named[0] if len(named) == 1 else "0"


class _LabelEndpoint(_Endpoint):
    def answer(self, prompt: str) -> tuple[int, str]:
        if "[Assistant's answer]\n???" in prompt:
            return 200, "Hard to say."  # unparsable
        return 200, _label_number(prompt)


@pytest.fixture
def label_endpoint():
    yield from serve(_LabelEndpoint())


def test_cli_emt_with_the_openai_decider(ckpt, label_endpoint, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("MCIT_JUDGE_API_KEY", SECRET)
    out = tmp_path / "out"
    code = main(["emt", str(ckpt), "--datasets", "coin-colors", "--limit", "8", "--probe-train", "16",
                 "--out", str(out), "--batch-size", "4", "--max-new-tokens", "4", "--decider", "openai",
                 "judge.model=m", f"judge.base_url={label_endpoint.url}", "judge.retry_backoff=0.01"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    record = json.loads((out / "emt.json").read_text())
    proto = record["protocol"]
    assert proto["decider"] == "openai" and "mcit.emt.judge_decider" in proto["decider_impl"]
    assert proto["judge"] | {"backend": "openai", "model": "m", "base_url": label_endpoint.url,
                             "temperature": 0.0, "top_p": 1.0} == proto["judge"]
    assert "decider `openai`" in (out / "emt.md").read_text()

    result = record["datasets"]["coin-colors"]
    classes = result["classes"]
    answers = [json.loads(line) for line in (out / result["answers"]).read_text().splitlines()]
    assert len(answers) == 8 and len(label_endpoint.requests) == 8
    for a in answers:  # every record carries the judge's reply, and the outcome follows from it
        k = int(a["judge_reply"])
        assert a["decider"] == "openai"
        if k == 0:
            assert (a["outcome"], a["reason"], a["named"]) == ("hallucinated", JUDGE_NO_LABEL, [])
        else:
            assert a["named"] == [classes[k - 1]]
            assert a["outcome"] == ("correct" if classes[k - 1] == a["label"] else "wrong_label")
    counts = result["mllm"]["counts"]
    assert counts["correct"] == sum(a["outcome"] == "correct" for a in answers)
    assert result["mllm"]["hallucination_reasons"][JUDGE_UNPARSABLE] == 0

    for r in label_endpoint.requests:  # deterministic sampling, the key sent only in the header
        assert (r["body"]["temperature"], r["body"]["top_p"], r["body"]["model"]) == (0.0, 1.0, "m")
        assert r["auth"] == f"Bearer {SECRET}"
        assert "[Labels]\n1. red\n2. green\n" in r["body"]["messages"][0]["content"]
    assert "judge: 0 replies from" in printed.out and "8 asked" in printed.out

    # The same answers again: every reply comes from the cache in the output folder.
    assert main(["emt", str(ckpt), "--datasets", "coin-colors", "--limit", "8", "--probe-train", "16",
                 "--out", str(out), "--batch-size", "4", "--max-new-tokens", "4", "--decider", "openai",
                 "judge.model=m", f"judge.base_url={label_endpoint.url}", "judge.retry_backoff=0.01"]) == 0
    again = capsys.readouterr()
    assert len(label_endpoint.requests) == 8 and "judge: 8 replies from" in again.out and "0 asked" in again.out
    assert json.loads((out / "emt.json").read_text())["datasets"] == record["datasets"]
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == 8
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in printed.out + printed.err + again.out + again.err


def test_cli_emt_judge_outcomes_by_hand(ckpt, label_endpoint, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Scripted MLLM answers (the tiny model only babbles) through the same command: every outcome."""
    from mcit.emt.datasets import load_dataset

    ds = load_dataset("coin-colors", limit=8, seed=0)
    t = [label for _, label in ds.test]
    scripted = [ds.classes[t[0]], f"It is {ds.classes[t[1]]}.", ds.classes[t[2]].upper(),  # correct
                ds.classes[(t[3] + 1) % 6], ds.classes[(t[4] + 2) % 6],  # wrong label
                f"{ds.classes[0]} or {ds.classes[1]}", "a shape", "???"]  # no label, no label, unparsable
    monkeypatch.setattr("mcit.eval.generate.generate_answers", lambda model, proc, samples, *a, **k: scripted)
    out = tmp_path / "out"
    assert main(["emt", str(ckpt), "--datasets", "coin-colors", "--limit", "8", "--probe-train", "16",
                 "--out", str(out), "--decider", "openai", "judge.model=m",
                 f"judge.base_url={label_endpoint.url}"]) == 0
    assert "1 of 8 answers got no usable judge reply" in capsys.readouterr().out
    mllm = json.loads((out / "emt.json").read_text())["datasets"]["coin-colors"]["mllm"]
    assert mllm["counts"] == {"correct": 3, "wrong_label": 2, "hallucinated": 3}
    assert mllm["shares"] == pytest.approx({"correct": 37.5, "wrong_label": 25.0, "hallucinated": 37.5})
    assert mllm["hallucination_reasons"] | {JUDGE_NO_LABEL: 2, JUDGE_UNPARSABLE: 1} == mllm["hallucination_reasons"]
    records = [json.loads(line) for line in (out / "answers" / "coin-colors.jsonl").read_text().splitlines()]
    assert records[7]["judge_reply"] == "Hard to say." and records[7]["reason"] == JUDGE_UNPARSABLE


def test_emt_tracking_with_a_judge_decider(ckpt, label_endpoint, tmp_path):  # noqa: F811
    from mcit.emt.curve import EmtTracker, read_curve
    from mcit.models.load import load_checkpoint

    cfg = load_config(None, ["emt.every_steps=1", "emt.datasets=[coin-shapes]", "emt.limit=4", "emt.batch_size=4",
                             "emt.decider=openai", "judge.model=m", f"judge.base_url={label_endpoint.url}"])
    tracker = EmtTracker(cfg, log=lambda _: None)
    assert tracker.protocol["judge"]["temperature"] == 0.0
    model, processor = load_checkpoint(ckpt)
    assert tracker.point(model, processor, 0, 1, "t") == []  # off the main process: the judge is not asked
    tracker.begin(tmp_path, [])
    rows = tracker.point(model, processor, 0, 1, "t")
    tracker.close()
    assert read_curve(tmp_path / "emt_curve.jsonl") == rows
    assert rows[0]["decider"] == "openai" and rows[0]["n"] == 4 and rows[0]["judge_unparsable"] == 0
    assert len(label_endpoint.requests) == 4
    assert len((tmp_path / "emt_judge_cache.jsonl").read_text().splitlines()) == 4  # kept in the run folder


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("args, message", [
    (["--decider", "openai"], "judge.model: the openai backend needs"),
    (["--decider", "local"], "judge.model: the local backend needs"),
    (["--decider", "openai", "judge.model=m", "judge.base_url=''"], "judge.base_url: the openai backend needs"),
    (["--decider", "rule", "judge.model=m"], "judge.* settings only apply to a judge decider"),
    (["--decider", "openai", "judge.model=m", "train.lr=1"], "only judge.* settings"),
])
def test_judge_decider_errors_exit_2_before_the_model_loads(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()  # not a checkpoint: a judge error must come before the model is loaded
    assert main(["emt", str(tmp_path / "empty"), "--datasets", "digits", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "neither a checkpoint" not in err
    assert not (tmp_path / "o").exists()


def test_cached_replies_are_not_asked_again_failed_requests_are(tmp_path):
    from mcit.eval.judge import JudgeCache

    backend = _Scripted([("1", None), (None, "timeout"), ("0", None), ("2", None)])
    decider = JudgeDecider(backend)
    decider.cache = JudgeCache(tmp_path / "cache.jsonl")
    labels, answers = ["red", "green"], ["red", "green", "blue"]
    first = decider.decide_many("Which colour?", labels, answers, [0, 1, 0])
    assert [d.reason for d in first] == [None, JUDGE_UNPARSABLE, JUDGE_NO_LABEL] and decider.hits == 0
    second = decider.decide_many("Which colour?", labels, answers, [0, 1, 0])
    # only the failed request went out again; the cached two came back as they were
    assert backend.prompts[3:] == [backend.prompts[1]] and decider.hits == 2
    assert [d.outcome for d in second] == ["correct", "correct", "hallucinated"]
    reread = JudgeCache(tmp_path / "cache.jsonl")  # on disk: a new process reuses it
    assert len(reread) == 3
