"""A canary key planted everywhere a user might put one is found in no file, log or error message.

Places: the variable named by judge.api_key_env, OPENAI_API_KEY, MCIT_JUDGE_API_KEY, the command
line (judge.api_key=..., misspelled keys, `--api-key ...`), judge.base_url's user:key@ and ?api_key=,
and a config YAML file. `mcit run` (a tiny stream, judged by an OpenAI-compatible server on
127.0.0.1, which may receive the key: that is its purpose) and `mcit judge` must leave it out of
every file under the output and cache folders, stdout and stderr.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from badinput import assert_rejected, invoke
from test_cli_no_traceback import no_training  # noqa: F401 - a fixture
from test_end_to_end import SMALL

from mcit.config import load_config
from mcit.redact import redact_argv, redact_config, redact_message

CANARY = "sk-canary-5f0d2b7e9a41c3d8"
SMALL_UNJUDGED = [o for o in SMALL if not o.startswith("judge.")]


@pytest.fixture()
def endpoint():
    """An OpenAI-compatible endpoint answering every request with the score 7."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "7"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def planted(tmp_path, monkeypatch):
    """The canary in every environment variable a key may come from; the cache inside tmp_path."""
    for name in ("MY_JUDGE_KEY", "OPENAI_API_KEY", "MCIT_JUDGE_API_KEY"):
        monkeypatch.setenv(name, CANARY)
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _files_holding_canary(*roots) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]


def test_canary_reaches_no_file_log_or_message_of_a_judged_run_and_of_mcit_judge(planted, endpoint, monkeypatch):
    base_url = f"http://judge:{CANARY}@{endpoint}/v1?api_key={CANARY}"
    argv = ["mcit", "run", *SMALL_UNJUDGED, "judge.backend=openai", "judge.model=m", f"judge.base_url={base_url}",
            "judge.api_key_env=MY_JUDGE_KEY", "judge.max_retries=0", f"output_dir={planted / 'runs'}", "name=canary"]
    monkeypatch.setattr(sys, "argv", argv)  # environment.json records the process's command line
    code, out, err = invoke(argv[1:])
    assert code == 0, err
    run = planted / "runs" / "canary"
    assert (run / "metrics_gk.json").is_file()  # the judge ran: the key had somewhere to leak to
    saved = json.loads((run / "environment.json").read_text())
    assert f"judge.base_url=http://***@{endpoint}/v1?api_key=***" in saved["argv"]

    monkeypatch.setattr(sys, "argv", ["mcit", "judge", str(run), f"judge.base_url={base_url}"])
    code, out2, err2 = invoke(["judge", str(run), f"judge.base_url={base_url}"])
    assert code == 0, err2
    assert CANARY not in out + err + out2 + err2
    assert _files_holding_canary(planted) == []


@pytest.mark.parametrize("argv", [
    ["run", f"judge.api_key={CANARY}"],
    ["run", f"train.api_key={CANARY}"],
    ["run", f"judge.apikey={CANARY}"],
    ["run", f"judge.token={CANARY}"],
    ["run", f"judge.password={CANARY}"],
    ["run", "--api-key", CANARY],
    ["run", f"--api-key={CANARY}"],
    ["run", f"judge.base_url=http://me:{CANARY}@127.0.0.1:9/v1", "judge.timeout=soon"],
    ["run", f"judge.base_url=http://127.0.0.1:9/v1?api_key={CANARY}", "judge.timeout=soon"],
    ["run", f"judge.base_url=http://127.0.0.1:9/v1?key={CANARY}", "train.lrr=1"],
    ["judge", "adir", f"judge.api_key={CANARY}"],
    ["judge", "adir", f"judge.base_url=http://me:{CANARY}@127.0.0.1:9/v1"],
    ["emt", "adir", "--datasets", "digits", "--decider", "openai", f"judge.apikey={CANARY}"],
    ["compare", "--methods", "lora", f"judge.secret={CANARY}"],
    ["data", "check", f"data.api_token={CANARY}"],
], ids=["judge.api_key", "other-section", "misspelled", "token", "password", "option", "option=",
        "url-userinfo", "url-query", "url-key-and-typo", "judge-verb", "judge-verb-url", "emt", "compare", "data-check"])
def test_a_refused_command_never_echoes_the_key(planted, argv, no_training):  # noqa: F811
    (planted / "adir").mkdir()
    err = assert_rejected(argv, watch=[planted], code=2)
    assert CANARY not in err


def test_a_key_in_a_config_file_is_not_echoed(tmp_path, monkeypatch, no_training):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # no canary in the environment: the file is the only place it is
    for text in (f"judge:\n  api_key: {CANARY}\n", f"judge:\n  apikey: {CANARY}\n", f"api_key: {CANARY}\n"):
        (tmp_path / "bad.yaml").write_text(text)
        err = assert_rejected(["run", "bad.yaml"], mentions=["bad.yaml"], code=2)
        assert CANARY not in err


def test_redact_argv_masks_secret_values_and_url_credentials_only():
    argv = ["mcit", "run", "cfg.yaml", "train.lr=3e-4", "judge.max_tokens=20", "judge.api_key_env=MY_KEY",
            "judge.api_key=abcd", "--token", "efgh", "judge.base_url=https://u:pw@host/v1?api_key=k&model=m"]
    assert redact_argv(argv) == ["mcit", "run", "cfg.yaml", "train.lr=3e-4", "judge.max_tokens=20",
                                 "judge.api_key_env=MY_KEY", "judge.api_key=***", "--token", "***",
                                 "judge.base_url=https://***@host/v1?api_key=***&model=m"]


def test_redact_message_masks_argv_and_environment_secrets():
    message = "bad value 'hunter22' for x; env key s3cr3t-v4lue; url http://a:b@h/v1"
    masked = redact_message(message, ["judge.password=hunter22"], {"SERVICE_TOKEN": "s3cr3t-v4lue", "HOME": "/h"})
    assert masked == "bad value '***' for x; env key ***; url http://***@h/v1"


def test_the_shells_working_directory_is_not_masked_as_a_password():
    """PWD holds the current directory ("pwd" is also short for password): an error naming a path
    under it must stay readable; a PWD-like credential variable is still masked."""
    env = {"PWD": "/home/me/project", "OLDPWD": "/home/me/elsewhere", "DB_PWD": "p4ssw0rd-long"}
    message = "no folder Original in /home/me/project/coin (was /home/me/elsewhere); p4ssw0rd-long"
    assert redact_message(message, [], env) == "no folder Original in /home/me/project/coin (was /home/me/elsewhere); ***"


def test_redact_config_masks_a_copy_and_keeps_the_original():
    cfg = load_config(None, ["judge.base_url=http://u:pw@h:8000/v1?token=t&x=1"])
    assert redact_config(cfg).judge.base_url == "http://***@h:8000/v1?token=***&x=1"
    assert cfg.judge.base_url == "http://u:pw@h:8000/v1?token=t&x=1"


def test_a_run_folder_saved_without_credentials_is_still_the_same_run(tmp_path):
    """config.yaml holds the masked URL; the same command run again (credentials given again) is
    recognised as the same run, not refused as a different config."""
    from mcit.rundir import check_same_run, save_run_info

    cfg = load_config(None, [f"judge.base_url=http://u:{CANARY}@h:8000/v1", f"output_dir={tmp_path}", "name=r"])
    save_run_info(tmp_path / "r", cfg, {})
    assert CANARY not in (tmp_path / "r" / "config.yaml").read_text()
    check_same_run(tmp_path / "r", cfg)  # no RunError
