"""Bad-input catalogue: `mcit ls`, `show`, `diff`, `config show`, `export` and mistyped verbs.

Each case damages a copy of one real run folder (made once by a tiny `mcit run`) or gives a bad
argument, and asserts a clean one-line refusal naming what is wrong, no traceback, no file changed
and, for export, no model folder written."""
import json
import shutil

import pytest

from badinput import assert_rejected, rerecord, tiny_run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    with tiny_run(tmp_path_factory, "badbrowse") as run:
        yield run


def _write(path, text):
    path.write_text(text)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _method(run, line):
    """Replace the method section's `name: lora` line (and optionally add settings after it)."""
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("\n  name: lora  #", f"\n  {line}\n  # was:", 1))


def _not_done(run, *stages):
    for stage in stages:
        (run / "stages" / stage / "done.json").unlink()
    (run / "metrics.json").unlink()


def _fake_checkpoint(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"other weights")
    return folder


def _base(run, change):
    _edit_json(run / "environment.json", lambda env: change(env["base_model"]))


# id: (prepare(run, tmp) -> argv, mentions)
CASES = {
    "ls-missing-folder": (lambda run, tmp: ["ls", str(tmp / "nope")], ["no such folder", "nope"]),
    "ls-a-file": (lambda run, tmp: ["ls", str(run / "config.yaml")], ["no such folder", "config.yaml"]),
    "show-missing-run": (lambda run, tmp: ["show", str(tmp / "nope")], ["run folder not found", "nope"]),
    "show-not-a-run-folder": (lambda run, tmp: ["show", str(run / "stages")], ["not a run folder", "stages"]),
    "show-config-not-yaml": (lambda run, tmp: _write(run / "config.yaml", "seed: [0\n") or ["show", str(run)],
                             ["config.yaml", "not valid YAML"]),
    "show-config-not-a-mapping": (lambda run, tmp: _write(run / "config.yaml", "- 1\n") or ["show", str(run)],
                                  ["config.yaml", "not a mapping"]),
    "show-environment-not-json": (lambda run, tmp: _write(run / "environment.json", "{") or ["show", str(run)],
                                  ["environment.json", "not valid JSON"]),
    "show-metrics-not-json": (lambda run, tmp: _write(run / "metrics.json", "{\"MFT\": ") or ["show", str(run)],
                              ["metrics.json", "not valid JSON"]),
    "show-matrix-not-a-matrix": (lambda run, tmp: _write(run / "matrix.json", '{"tasks": ["x"]}') or ["show", str(run)],
                                 ["matrix.json", "not an accuracy-matrix record"]),
    "show-prediction-line-not-json": (
        lambda run, tmp: _write(run / "stages/02-VQAv2/predictions/VQAv2.jsonl",
                                (run / "stages/02-VQAv2/predictions/VQAv2.jsonl").read_text() + "{oops\n")
        or rerecord(run / "stages/02-VQAv2/predictions/VQAv2.jsonl")
        or ["show", str(run)], ["VQAv2.jsonl", "line 7", "not valid JSON"]),
    "show-negative-answers": (lambda run, tmp: ["show", str(run), "--answers", "-1"], ["--answers", ">= 0"]),
    "diff-second-not-a-run": (lambda run, tmp: ["diff", str(run), str(tmp / "nope")], ["run folder not found", "nope"]),
    "export-without-merge": (lambda run, tmp: ["export", str(run)], ["--merge"]),
    "export-missing-run": (lambda run, tmp: ["export", str(tmp / "nope"), "--merge", str(tmp / "out")],
                           ["run folder not found"]),
    "export-target-exists": (lambda run, tmp: (tmp / "out").mkdir() or ["export", str(run), "--merge", str(tmp / "out")],
                             ["already exists", "out"]),
    "export-stage-out-of-range": (lambda run, tmp: ["export", str(run), "--stage", "3", "--merge", str(tmp / "out")],
                                  ["--stage 3", "stages 1 to 2"]),
    "export-stage-zero": (lambda run, tmp: ["export", str(run), "--stage", "0", "--merge", str(tmp / "out")],
                          ["--stage 0", "stages 1 to 2"]),
    "export-stage-not-completed": (
        lambda run, tmp: _not_done(run, "02-VQAv2") or ["export", str(run), "--stage", "2", "--merge", str(tmp / "out")],
        ["--stage 2", "has not completed", "completed 1"]),
    "export-nothing-completed": (
        lambda run, tmp: _not_done(run, "01-ImageNet", "02-VQAv2") or ["export", str(run), "--merge", str(tmp / "out")],
        ["no stage has completed"]),
    "export-taskid-lora": (lambda run, tmp: _method(run, "name: lora-taskid") or ["export", str(run), "--merge", str(tmp / "out")],
                           ["lora-taskid", "cannot be merged", "task id"]),
    "export-lcia": (lambda run, tmp: _method(run, "name: lcia") or ["export", str(run), "--merge", str(tmp / "out")],
                    ["lcia", "cannot be merged", "instruction"]),
    "export-moelora-several-experts": (
        lambda run, tmp: _method(run, "name: moelora") or ["export", str(run), "--merge", str(tmp / "out")],
        ["moelora", "moe_experts=4", "router"]),
    "export-base-model-gone": (
        lambda run, tmp: _base(run, lambda b: b.update(path=str(tmp / "gone"), sha256="0" * 64))
        or ["export", str(run), "--merge", str(tmp / "out")],
        ["base model not found", f"it was at {{tmp}}{'/'}gone", "--base-model"]),
    "export-base-model-replaced": (
        lambda run, tmp: _base(run, lambda b: b.update(sha256="0" * 64)) or ["export", str(run), "--merge", str(tmp / "out")],
        ["base model not found", "now holds other weights", "000000000000"]),
    "export-wrong-base-model-given": (
        lambda run, tmp: ["export", str(run), "--merge", str(tmp / "out"), "--base-model", str(_fake_checkpoint(tmp / "other"))],
        ["--base-model", "not the run's base model", "environment.json"]),
    "export-base-model-not-a-checkpoint": (
        lambda run, tmp: ["export", str(run), "--merge", str(tmp / "out"), "--base-model", str(tmp)],
        ["--base-model", "no config.json"]),
    "export-unknown-method-in-config": (
        lambda run, tmp: _method(run, "name: lroa") or ["export", str(run), "--merge", str(tmp / "out")],
        ["method.name", "lroa", "did you mean 'lora'"]),
    "report-not-a-run-or-compare-folder": (lambda run, tmp: ["report", str(run / "stages")],
                                           ["neither a run folder", "compare.json"]),
    "report-compare-json-malformed": (lambda run, tmp: _write(tmp / "compare.json", "{") or ["report", str(tmp)],
                                      ["compare.json", "not valid JSON"]),
    "report-metrics-not-json": (lambda run, tmp: _write(run / "metrics.json", "[") or ["report", str(run)],
                                ["metrics.json", "not valid JSON"]),
    "mistyped-verb": (lambda run, tmp: ["exprot", str(run)], ["invalid choice: 'exprot'", "did you mean 'export'?"]),
    "mistyped-config-verb": (lambda run, tmp: ["config", "shwo"], ["did you mean 'show'?"]),
    "config-show-mistyped-method": (lambda run, tmp: ["config", "show", "method.name=lroa"], ["did you mean 'lora'"]),
    "config-show-mistyped-key": (lambda run, tmp: ["config", "show", "train.leanring_rate=0.1"], ["did you mean 'train.lr'"]),
    "config-show-missing-file": (lambda run, tmp: ["config", "show", str(tmp / "missing.yaml")],
                                 ["config file not found", "missing.yaml"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rejected(made, tmp_path, case):
    run = shutil.copytree(made, tmp_path / "lora")
    prepare, mentions = CASES[case]
    argv = prepare(run, tmp_path)
    mentions = [m.replace("{tmp}", str(tmp_path)) for m in mentions]
    existed = (tmp_path / "out").exists()
    assert_rejected(argv, mentions=mentions, watch=[tmp_path])
    assert (tmp_path / "out").exists() == existed  # no model folder written, not even a half one
    assert not list(tmp_path.glob(".out.tmp*"))
