"""Bad-input catalogue, judge area: failing endpoints, crafted run folders, unsafe key settings.

Every case runs ``mcit judge RUN ...`` (or ``mcit run``) in-process on a copy of one small saved
run (trained once per module with judge.backend=none) and asserts exit 2, a message naming the
file / field / setting, no traceback, no earlier file changed (the run's and one outside it),
nothing new outside the run folder, and the planted API key in no message and no file.

What a refused command writes: nothing, except the GK view made invalid by too many failed or
unparsable judgements, which writes its GK outputs (metrics_gk.json with "valid": false, matrix_gk.*,
stages/*/judge/*.jsonl, the judge cache) and still exits 2.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from badinput import assert_rejected, invoke
from faulty_endpoint import FaultyEndpoint
from test_end_to_end import SMALL  # the tiny model and data: 2 tasks x 6 test samples, judge.backend=none

from mcit.cli import main

CANARY = "sk-canary-7Hq2-never-anywhere"
TASKS = ("ImageNet", "VQAv2")
# 30 judged samples: base row 2 x 6, after ImageNet 1 x 6, after VQAv2 2 x 6
SAMPLES = 30
FAST = ["judge.max_retries=1", "judge.retry_backoff=0", "judge.timeout=0.5", "judge.concurrency=4"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_catalogue")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(root / "cache"))
        assert main(["run", *SMALL, "judge.backend=none", f"output_dir={root / 'runs'}", "name=saved"]) == 0
    return root / "runs" / "saved"


@pytest.fixture
def run(saved_run, tmp_path, monkeypatch):
    """A fresh copy of the saved run, an outside folder holding a file to protect, the canary key set."""
    monkeypatch.setenv("MCIT_JUDGE_API_KEY", CANARY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.jsonl").write_text('{"keep": "me"}\n')
    return Path(shutil.copytree(saved_run, tmp_path / "runs" / "r", symlinks=True))


@pytest.fixture
def endpoints():
    started: list[FaultyEndpoint] = []

    def start(mode: str, **kw) -> FaultyEndpoint:
        started.append(FaultyEndpoint(mode, **kw))
        return started[-1]
    yield start
    for e in started:
        e.close()


def judge_argv(run: Path, url: str, *extra: str) -> list[str]:
    return ["judge", str(run), "--backend", "openai", "judge.model=m", f"judge.base_url={url}", *FAST, *extra]


def assert_nothing_leaked(tmp_path: Path, err: str) -> None:
    """The canary key is in no message and no file; nothing new appeared outside the run folder."""
    assert CANARY not in err
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert CANARY.encode() not in path.read_bytes(), f"the API key was written to {path}"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["victim.jsonl"]


# ------------------------------------------------------------------------------ failing endpoints

ENDPOINT_CASES = [
    pytest.param("500", [], ["no answer from", "HTTP 500", "gave up after 2 attempts", "judge.base_url"],
                 id="endpoint-500-forever"),
    pytest.param("429", [], ["no answer from", "HTTP 429"], id="endpoint-429-forever"),
    pytest.param("close", [], ["no answer from", "RemoteProtocolError"], id="endpoint-closes-connection"),
    pytest.param("bad-json", [], ["no answer from", "malformed response"], id="endpoint-invalid-json"),
    pytest.param("no-choices", [], ["no answer from", "malformed response"], id="endpoint-json-without-choices"),
    pytest.param("slow", [], ["no answer from", "ReadTimeout"], id="endpoint-slower-than-timeout"),
    pytest.param("401", [], ["refused the API key", "HTTP 401", "$MCIT_JUDGE_API_KEY"], id="endpoint-refuses-key"),
    pytest.param("404", [], ["not found", "HTTP 404", "judge.model"], id="endpoint-wrong-model-or-url"),
    pytest.param("unparsable", [], [f"{SAMPLES} of {SAMPLES} judged samples", f"{SAMPLES} unparsable",
                                    "judge.max_failed_share=0.05", "metrics_gk.json"], id="endpoint-only-unparsable"),
    pytest.param("first-good", [], [f"{SAMPLES - 1} of {SAMPLES} judged samples", f"{SAMPLES - 1} failed: HTTP 500",
                                    "judge.max_failed_share=0.05"], id="endpoint-fails-after-first-answer"),
    pytest.param("first-good", ["judge.max_failed_share=0.9"], [f"{SAMPLES - 1} of {SAMPLES}", "0.9"],
                 id="endpoint-fails-beyond-a-raised-threshold"),
]


@pytest.mark.parametrize("mode, extra, mentions", ENDPOINT_CASES)
def test_failing_endpoint(run, tmp_path, endpoints, mode, extra, mentions):
    endpoint = endpoints(mode, delay=1.5)
    err = assert_rejected(judge_argv(run, endpoint.url, *extra), mentions=mentions, watch=[tmp_path], code=2)
    assert_nothing_leaked(tmp_path, err)
    gk = run / "metrics_gk.json"
    if mode in ("unparsable", "first-good"):  # written, numbers kept, flagged
        record = json.loads(gk.read_text())
        assert record["valid"] is False and record["samples"] == SAMPLES and "max_failed_share" in record["reason"]
        assert (run / "matrix_gk.md").read_text().startswith("> **INVALID General Knowledge view**")
    else:
        assert not gk.exists() and not (run / "matrix_gk.json").exists()  # a judge that never answered writes nothing


def test_redirect_to_another_host_is_refused_and_the_key_goes_nowhere(run, tmp_path, endpoints):
    other = endpoints("good")
    endpoint = endpoints("redirect", redirect_to=f"{other.url}/chat/completions?token={CANARY}")
    err = assert_rejected(judge_argv(run, endpoint.url), mentions=["redirects (HTTP 307)", "not followed",
                                                                   "judge.base_url"], watch=[tmp_path], code=2)
    assert other.requests == []  # the redirect target never saw a request, let alone the key
    assert_nothing_leaked(tmp_path, err)


# ------------------------------------------------------------------------------ key and URL settings

SETTING_CASES = [
    pytest.param("http://judge.example.com/v1", {}, ["judge.base_url", "plain http", "judge.example.com", "https://",
                                                     "$MCIT_JUDGE_API_KEY"], id="key-over-plain-http-to-remote-host"),
    pytest.param("http://judge.example.com/v1", {"MCIT_JUDGE_API_KEY": None, "OPENAI_API_KEY": CANARY},
                 ["plain http", "$OPENAI_API_KEY"], id="opted-in-openai-key-over-plain-http"),
    pytest.param("ftp://127.0.0.1/v1", {}, ["judge.base_url", "ftp://127.0.0.1/v1", "http:// or https://"],
                 id="base-url-not-http"),
    pytest.param("http://127.0.0.1:port/v1", {}, ["judge.base_url", "not a valid URL"], id="base-url-bad-port"),
    pytest.param("127.0.0.1:8000/v1", {}, ["judge.base_url", "http:// or https://"], id="base-url-without-scheme"),
    pytest.param("http://127.0.0.1:8000/v 1", {}, ["judge.base_url", "spaces or control characters"],
                 id="base-url-with-space"),
    pytest.param(f"http://user:{CANARY}@judge.example.com/v1", {}, ["judge.base_url", "***@judge.example.com"],
                 id="credentials-in-url-userinfo-over-http"),
    pytest.param(f"http://judge.example.com/v1?api_key={CANARY}", {}, ["judge.base_url", "api_key=***"],
                 id="credentials-in-url-query-over-http"),
]


@pytest.mark.parametrize("url, env, mentions", SETTING_CASES)
def test_unsafe_key_or_url_setting(run, tmp_path, monkeypatch, url, env, mentions):
    extra = []
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    if "OPENAI_API_KEY" in env:
        extra.append("judge.allow_openai_api_key_env=true")
    err = assert_rejected(judge_argv(run, url, *extra), mentions=mentions, watch=[tmp_path], code=2)
    assert_nothing_leaked(tmp_path, err)


@pytest.mark.parametrize("target", [pytest.param("victim.jsonl", id="cache-setting-names-a-foreign-file"),
                                    pytest.param(".", id="cache-setting-names-a-folder")])
def test_cache_setting_that_is_no_judge_cache(run, tmp_path, endpoints, target):
    """A crafted config.yaml (or a typo) pointing judge.cache at another file: never appended to."""
    endpoint = endpoints("good")
    path = tmp_path / "outside" / target
    assert_rejected(judge_argv(run, endpoint.url, f"judge.cache={path}"), mentions=[str(path), "judge.cache"], watch=[tmp_path], code=2)
    assert endpoint.requests == []


def test_saved_config_cache_outside_the_run_is_not_used(run, tmp_path, endpoints):
    """A crafted config.yaml whose judge.cache points outside the run folder: refused unless the
    command line names that cache itself."""
    endpoint = endpoints("good")
    config = run / "config.yaml"
    victim = tmp_path / "outside" / "victim.jsonl"
    config.write_text(config.read_text().replace("  cache: null", f"  cache: {victim}", 1))
    assert f"cache: {victim}" in config.read_text()
    assert_rejected(judge_argv(run, endpoint.url), mentions=["judge.cache", str(victim), "outside the run folder"],
                    watch=[tmp_path], code=2)
    assert endpoint.requests == []


@pytest.mark.parametrize("value", [pytest.param(CANARY, id="api-key-env-holds-the-key-itself"),
                                   pytest.param("MY KEY", id="api-key-env-with-space")])
def test_api_key_env_that_is_no_variable_name(run, tmp_path, endpoints, value):
    endpoint = endpoints("good")
    err = assert_rejected(judge_argv(run, endpoint.url, f"judge.api_key_env={value}"),
                          mentions=["judge.api_key_env", "NAME of an environment variable", "not shown"],
                          watch=[tmp_path], code=2)
    assert endpoint.requests == [] and value not in err
    assert_nothing_leaked(tmp_path, err)


def test_mcit_run_with_the_key_pasted_as_api_key_env_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.jsonl").write_text("{}\n")
    err = assert_rejected(["run", *SMALL, f"judge.api_key_env={CANARY}", f"output_dir={tmp_path / 'runs'}", "name=k"],
                          mentions=["judge.api_key_env", "not shown"], watch=[tmp_path], code=2)
    assert not (tmp_path / "runs" / "k" / "config.yaml").exists()
    assert_nothing_leaked(tmp_path, err)


@pytest.mark.parametrize("value, rule", [pytest.param("1.5", "must be in [0, 1]", id="max-failed-share-above-1"),
                                         pytest.param("-0.1", "must be in [0, 1]", id="max-failed-share-negative"),
                                         pytest.param("lots", "judge.max_failed_share", id="max-failed-share-text")])
def test_bad_failed_share_setting(run, tmp_path, endpoints, value, rule):
    endpoint = endpoints("good")
    assert_rejected(judge_argv(run, endpoint.url, f"judge.max_failed_share={value}"),
                    mentions=["judge.max_failed_share", rule], watch=[tmp_path], code=2)
    assert endpoint.requests == []  # refused before anything was asked


# ------------------------------------------------------------------------------ crafted run folders

def _stage(run: Path, n: int) -> Path:
    return run / "stages" / f"{n:02d}-{TASKS[n - 1]}"


def _set_task(run: Path, n: int, task, rename: str | None = None) -> Path:
    done = _stage(run, n) / "done.json"
    record = json.loads(done.read_text())
    record["task"] = task
    done.write_text(json.dumps(record))
    if rename:
        done.parent.rename(done.parent.parent / rename)
        return done.parent.parent / rename / "done.json"
    return done


def truncated_done(run, outside):
    done = _stage(run, 2) / "done.json"
    done.write_bytes(done.read_bytes()[:20])


def done_not_an_object(run, outside):
    (_stage(run, 1) / "done.json").write_text("[]")


def task_climbs_out(run, outside):
    _set_task(run, 1, "../../../outside/victim")


def task_absolute(run, outside):
    _set_task(run, 1, str(outside / "victim"))


def task_backslash(run, outside):
    _set_task(run, 1, "..\\..\\outside")


def task_with_newline(run, outside):
    _set_task(run, 1, "ImageNet\n| injected |")


def task_not_a_string(run, outside):
    _set_task(run, 1, ["ImageNet"])


def task_not_in_config(run, outside):
    _set_task(run, 1, "Other", rename="01-Other")


def task_in_wrong_folder(run, outside):
    _set_task(run, 1, "VQAv2")


def two_folders_for_a_stage(run, outside):
    shutil.copytree(_stage(run, 1), run / "stages" / "01-Copy")


def predictions_symlink_out(run, outside):
    path = _stage(run, 1) / "predictions" / "ImageNet.jsonl"
    shutil.copy(path, outside / "victim.jsonl")
    path.unlink()
    path.symlink_to(outside / "victim.jsonl")


def judge_folder_symlink_out(run, outside):
    (_stage(run, 1) / "judge").symlink_to(outside, target_is_directory=True)


def cache_symlink_out(run, outside):
    (run / "judge_cache.jsonl").symlink_to(outside / "victim.jsonl")


def matrix_symlink_out(run, outside):
    (run / "matrix_gk.md").symlink_to(outside / "victim.jsonl")


def stages_symlink_out(run, outside):
    elsewhere = outside.parent / "elsewhere"
    shutil.move(run / "stages", elsewhere)
    (run / "stages").symlink_to(elsewhere, target_is_directory=True)


def predictions_not_utf8(run, outside):
    (_stage(run, 2) / "predictions" / "VQAv2.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')


def predictions_line_not_json(run, outside):
    path = _stage(run, 2) / "predictions" / "ImageNet.jsonl"
    path.write_text(path.read_text() + '{"id": "cut\n')


def config_tasks_not_a_list(run, outside):
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("tasks: [ImageNet, VQAv2]", "tasks: {a: 1}"))


RUN_FOLDER_CASES = [
    pytest.param(truncated_done, ["02-VQAv2", "done.json", "not valid JSON"], id="truncated-done-json"),
    pytest.param(done_not_an_object, ["01-ImageNet", "done.json", "expected a JSON object"], id="done-json-not-object"),
    pytest.param(task_climbs_out, ["done.json", "field 'task'", "../../../outside/victim", "not a plain file name"],
                 id="task-name-dot-dot"),
    pytest.param(task_absolute, ["field 'task'", "not a plain file name"], id="task-name-absolute-path"),
    pytest.param(task_backslash, ["field 'task'", "not a plain file name"], id="task-name-backslashes"),
    pytest.param(task_with_newline, ["field 'task'", "not a plain file name"], id="task-name-newline"),
    pytest.param(task_not_a_string, ["field 'task'", "non-empty string"], id="task-name-not-string"),
    pytest.param(task_not_in_config, ["01-Other", "field 'task'", "not one of the run's tasks"],
                 id="task-not-in-config-tasks"),
    pytest.param(task_in_wrong_folder, ["01-ImageNet", "belongs in stage folder 01-VQAv2"],
                 id="task-in-another-stage-folder"),
    pytest.param(two_folders_for_a_stage, ["2 folders for stage 1", "01-Copy"], id="two-folders-one-stage"),
    pytest.param(predictions_symlink_out, ["ImageNet.jsonl", "leads outside the run folder"],
                 id="predictions-symlink-outside"),
    pytest.param(judge_folder_symlink_out, ["judge", "leads outside the run folder"], id="judge-folder-symlink-outside"),
    pytest.param(cache_symlink_out, ["judge_cache.jsonl", "leads outside the run folder"], id="cache-symlink-outside"),
    pytest.param(matrix_symlink_out, ["matrix_gk.md", "leads outside the run folder"], id="gk-matrix-symlink-outside"),
    pytest.param(stages_symlink_out, ["stages", "leads outside the run folder"], id="stages-symlink-outside"),
    pytest.param(predictions_not_utf8, ["VQAv2.jsonl", "not UTF-8"], id="predictions-not-utf8"),
    pytest.param(predictions_line_not_json, ["ImageNet.jsonl", "line 7", "not valid JSON"],
                 id="predictions-line-not-json"),
    pytest.param(config_tasks_not_a_list, ["config.yaml", "data.tasks"], id="config-tasks-not-a-list"),
]


@pytest.mark.parametrize("craft, mentions", RUN_FOLDER_CASES)
def test_crafted_run_folder(run, tmp_path, endpoints, craft, mentions):
    endpoint = endpoints("good")  # were the folder accepted, the judging would succeed: exit 0, test fails
    craft(run, tmp_path / "outside")
    err = assert_rejected(judge_argv(run, endpoint.url), mentions=mentions, watch=[tmp_path], code=2)
    assert endpoint.requests == []  # checked before the judge is asked anything
    assert_nothing_leaked(tmp_path, err)
    assert not (run / "metrics_gk.json").exists()


# ------------------------------------------------------------------------------ controls and `mcit run`

def test_control_a_good_endpoint_judges_the_same_copy(run, tmp_path, endpoints):
    """The fixture run and endpoint work: what the cases above refuse is the fault, not the setup."""
    endpoint = endpoints("good")
    code, out, err = invoke(judge_argv(run, endpoint.url))
    assert code == 0, err
    record = json.loads((run / "metrics_gk.json").read_text())
    assert record["valid"] is True and record["samples"] == SAMPLES and record["MFN"] == 100.0  # "10" for all
    assert {r["auth"] for r in endpoint.requests} == {f"Bearer {CANARY}"}  # loopback http: the key is sent
    assert CANARY not in out + err


def test_openai_api_key_is_sent_only_on_opt_in(run, endpoints, monkeypatch):
    monkeypatch.delenv("MCIT_JUDGE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    endpoint = endpoints("good")
    assert invoke(judge_argv(run, endpoint.url))[0] == 0
    assert {r["auth"] for r in endpoint.requests} == {None}
    endpoint.requests.clear()
    assert invoke(judge_argv(run, endpoint.url, "judge.cache=" + str(run / "other_cache.jsonl"),
                             "judge.allow_openai_api_key_env=true"))[0] == 0
    assert {r["auth"] for r in endpoint.requests} == {f"Bearer {CANARY}"}


def test_mcit_run_refuses_a_key_over_plain_http_before_training(run, tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    err = assert_rejected(["run", *SMALL, "judge.backend=openai", "judge.model=m",
                           "judge.base_url=http://judge.example.com/v1", f"output_dir={tmp_path / 'runs'}", "name=new"],
                          mentions=["judge.base_url", "plain http"], watch=[tmp_path], code=2)
    assert not (tmp_path / "runs" / "new" / "stages").exists()  # refused at the start: nothing trained
    assert_nothing_leaked(tmp_path, err)


def test_mcit_run_ends_with_exit_2_on_an_invalid_gk_view(tmp_path, endpoints, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MCIT_JUDGE_API_KEY", CANARY)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.jsonl").write_text("{}\n")
    endpoint = endpoints("unparsable")
    err = assert_rejected(["run", *SMALL, "judge.backend=openai", "judge.model=m", f"judge.base_url={endpoint.url}",
                           *FAST, f"output_dir={tmp_path / 'runs'}", "name=r"],
                          mentions=[f"{SAMPLES} of {SAMPLES}", "judge.max_failed_share"], code=2)
    run = tmp_path / "runs" / "r"
    assert json.loads((run / "metrics.json").read_text())["view"] == "instruction_following"  # the IF view stands
    assert json.loads((run / "metrics_gk.json").read_text())["valid"] is False
    assert_nothing_leaked(tmp_path, err)
