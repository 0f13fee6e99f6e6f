"""Every verb and sub-verb of `mcit` with bad arguments: a non-zero exit, a one-line message naming
the bad argument, no traceback and no file changed (the bad-input catalogue, tests/badinput.py).

Each case runs in a folder holding ``afile`` (a file where a folder or a config is expected) and
``adir`` (an empty folder: neither a run folder nor a model); every case is refused before any
model is built, so the whole catalogue takes seconds.
"""
import sys
import types

import pytest

from badinput import assert_rejected, invoke

A_GRID = ["--grid", "method.lora_r=2,4"]

CASES = [
    # (id, argv, words the message must contain)
    ("mcit-alone", [], ["command"]),
    ("unknown-verb", ["bogus"], ["bogus"]),
    ("unknown-top-option", ["--bogus"], ["command"]),
    ("run-unknown-option", ["run", "--bogus"], ["--bogus"]),
    ("run-config-missing", ["run", "nonexist.yaml"], ["nonexist.yaml"]),
    ("run-config-is-a-folder", ["run", "adir"], ["adir"]),
    ("run-config-not-a-mapping", ["run", "afile"], ["afile"]),
    ("run-override-typo", ["run", "train.lrr=1"], ["train.lrr", "train.lr"]),
    ("run-override-wrong-type", ["run", "train.lr=abc"], ["train.lr", "float"]),
    ("run-judge-backend-bogus", ["run", "judge.backend=bogus"], ["judge.backend", "bogus"]),
    ("run-judge-local-without-model", ["run", "judge.backend=local"], ["judge.model"]),
    ("run-judge-embedding-coin-protocol", ["run", "judge.protocol=coin"], ["judge.protocol"]),
    ("run-eval-scoring-bogus", ["run", "eval.scoring=bogus"], ["eval.scoring"]),
    ("run-output-dir-is-a-file", ["run", "output_dir=afile"], ["output_dir", "afile"]),
    ("run-output-dir-under-a-file", ["run", "output_dir=afile/runs"], ["output_dir", "afile"]),
    ("run-resume-without-folder", ["run", "--resume"], ["--resume"]),
    ("run-resume-nonexistent", ["run", "--resume", "nonexist"], ["nonexist", "run folder"]),
    ("run-resume-a-file", ["run", "--resume", "afile"], ["afile"]),
    ("run-resume-no-config-yaml", ["run", "--resume", "adir"], ["adir", "config.yaml", "rerun"]),
    ("run-resume-with-overrides", ["run", "--resume", "adir", "train.lr=1"], ["--resume", "overrides"]),
    ("compare-without-methods", ["compare"], ["--methods"]),
    ("compare-empty-methods", ["compare", "--methods", ""], ["--methods"]),
    ("compare-unknown-method", ["compare", "--methods", "lora,nosuch"], ["nosuch"]),
    ("compare-repeated-method", ["compare", "--methods", "lora,lora"], ["--methods"]),
    ("compare-seeds-not-ints", ["compare", "--methods", "lora", "--seeds", "a,b"], ["--seeds"]),
    ("compare-empty-seeds", ["compare", "--methods", "lora", "--seeds", ","], ["--seeds"]),
    ("compare-out-is-a-file", ["compare", "--methods", "lora", "--out", "afile"], ["--out", "afile"]),
    ("compare-config-missing", ["compare", "--methods", "lora", "nonexist.yaml"], ["nonexist.yaml"]),
    ("compare-override-typo", ["compare", "--methods", "lora", "train.lrr=1"], ["train.lrr"]),
    ("compare-unknown-option", ["compare", "--methods", "lora", "--bogus"], ["--bogus"]),
    ("tune-without-method-and-grid", ["tune"], ["--method", "--grid"]),
    ("tune-without-grid", ["tune", "--method", "lora"], ["--grid"]),
    ("tune-grid-without-values", ["tune", "--method", "lora", "--grid", "bad"], ["--grid", "bad"]),
    ("tune-grid-empty-values", ["tune", "--method", "lora", "--grid", "method.lora_r="], ["--grid"]),
    ("tune-grid-unknown-key", ["tune", "--method", "lora", "--grid", "nokey.x=1,2"], ["nokey.x"]),
    ("tune-grid-bad-value", ["tune", "--method", "lora", "--grid", "train.lr=a,b"], ["train.lr"]),
    ("tune-unknown-method", ["tune", "--method", "nosuch", *A_GRID], ["nosuch"]),
    ("tune-unknown-select", ["tune", "--method", "lora", *A_GRID, "--select", "BOGUS"], ["--select", "BOGUS"]),
    ("tune-seeds-not-ints", ["tune", "--method", "lora", *A_GRID, "--seeds", "x"], ["--seeds"]),
    ("tune-out-is-a-file", ["tune", "--method", "lora", *A_GRID, "--out", "afile"], ["--out", "afile"]),
    ("judge-without-run", ["judge"], ["RUN_DIR"]),
    ("judge-nonexistent-run", ["judge", "nonexist"], ["nonexist", "not found"]),
    ("judge-run-is-a-file", ["judge", "afile"], ["afile", "not a folder"]),
    ("judge-not-a-run-folder", ["judge", "adir"], ["adir", "not a run folder"]),
    ("judge-unknown-backend", ["judge", "adir", "--backend", "bogus"], ["--backend", "bogus"]),
    ("judge-malformed-override", ["judge", "adir", "model"], ["model", "key=value"]),
    ("judge-other-section", ["judge", "adir", "train.lr=1"], ["train.lr"]),
    ("judge-unknown-setting", ["judge", "adir", "judge.modle=x"], ["judge.modle"]),
    ("judge-unknown-option", ["judge", "adir", "--bogus"], ["--bogus"]),
    ("emt-without-datasets", ["emt", "adir"], ["--datasets"]),
    ("emt-nonexistent-target", ["emt", "nonexist", "--datasets", "digits"], ["nonexist"]),
    ("emt-target-is-a-file", ["emt", "afile", "--datasets", "digits"], ["afile", "not a folder"]),
    ("emt-limit-not-an-int", ["emt", "adir", "--datasets", "digits", "--limit", "x"], ["--limit"]),
    ("emt-limit-zero", ["emt", "adir", "--datasets", "digits", "--limit", "0"], ["--limit"]),
    ("emt-probe-train-negative", ["emt", "adir", "--datasets", "digits", "--probe-train", "-1"], ["--probe-train"]),
    ("emt-seed-not-an-int", ["emt", "adir", "--datasets", "digits", "--seed", "x"], ["--seed"]),
    ("emt-unknown-dataset", ["emt", "adir", "--datasets", "nosuch"], ["nosuch"]),
    ("emt-empty-datasets", ["emt", "adir", "--datasets", ","], ["--datasets"]),
    ("emt-unknown-decider", ["emt", "adir", "--datasets", "digits", "--decider", "bogus"], ["bogus"]),
    ("emt-judge-setting-with-rule", ["emt", "adir", "--datasets", "digits", "judge.model=x"], ["--decider"]),
    ("emt-out-is-a-file", ["emt", "adir", "--datasets", "digits", "--out", "afile"], ["--out", "afile"]),
    ("data-without-subverb", ["data"], ["check"]),
    ("data-unknown-subverb", ["data", "bogus"], ["bogus"]),
    ("data-check-config-missing", ["data", "check", "nonexist.yaml"], ["nonexist.yaml"]),
    ("data-check-override-typo", ["data", "check", "data.rooot=x"], ["data.rooot"]),
    ("data-check-unknown-option", ["data", "check", "--bogus"], ["--bogus"]),
]


@pytest.fixture()
def no_training(monkeypatch):
    """mcit.train replaced by a stub that fails the test: a bad input must be refused before any
    training starts (and before torch is imported)."""
    def reached_training(*args, **kwargs):
        raise AssertionError("a bad argument reached the training")

    monkeypatch.setitem(sys.modules, "mcit.train", types.SimpleNamespace(run_stream=reached_training))


@pytest.fixture()
def place(tmp_path, monkeypatch, no_training):
    """A working folder with a file and an empty folder in it; the cache kept inside too."""
    (tmp_path / "afile").write_text("not a folder, not a config\n")
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("argv, mentions", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_arguments_are_refused_in_one_line(place, argv, mentions):
    err = assert_rejected(argv, mentions=mentions, watch=[place], code=2)
    assert err.strip(), "refused without a message"
    assert not (place / "runs").exists() and not (place / "compare").exists() and not (place / "tune").exists()


@pytest.mark.parametrize("argv", [["--help"], *([verb, "--help"] for verb in ("run", "judge", "compare", "tune", "emt")),
                                  ["data", "check", "--help"]], ids=lambda a: " ".join(a))
def test_help_of_every_verb_exits_0_without_a_traceback(place, argv):
    code, out, err = invoke(argv)
    assert code == 0 and "Traceback" not in out + err
    assert out.startswith("usage: mcit")


def test_a_file_system_error_is_one_line_naming_the_path(place, monkeypatch):
    """An OSError about a path (here: the config cannot be read) is reported as `<path>: <reason>`."""
    config = place / "locked.yaml"
    config.write_text("seed: 1\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.read_text", refuse)
    err = assert_rejected(["run", str(config)], mentions=[str(config), "Permission denied"], code=2)
    assert len(err.strip().splitlines()) == 1
