"""Behaviour of mcit.rundir: run folder creation and refusal, saved run info, JSON, stage markers."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from mcit.config import config_hash, load_config
from mcit.rundir import (
    RunError,
    create_run_dir,
    is_stage_done,
    load_json,
    load_stage_info,
    mark_stage_done,
    save_json,
    save_run_info,
    stage_dir,
)


def make_cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path / 'runs'}", *overrides])


# ----------------------------------------------------------------------------- run folder


def test_named_run_dir(tmp_path):
    cfg = make_cfg(tmp_path, "name=exp1")
    run_dir = create_run_dir(cfg)
    assert run_dir == tmp_path / "runs" / "exp1"
    assert run_dir.is_dir()


def test_unnamed_run_dir_is_timestamp_and_method(tmp_path):
    cfg = make_cfg(tmp_path, "method.name=full")
    run_dir = create_run_dir(cfg)
    assert run_dir.parent == tmp_path / "runs" and run_dir.is_dir()
    assert re.fullmatch(r"\d{8}-\d{6}-full", run_dir.name)


def test_existing_folder_with_same_config_is_reused(tmp_path):
    cfg = make_cfg(tmp_path, "name=same", "train.lr=0.01")
    run_dir = create_run_dir(cfg)
    save_run_info(run_dir, cfg, {})
    (run_dir / "keep.txt").write_text("x")
    again = load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=same", "train.lr=0.01"])
    assert create_run_dir(again) == run_dir
    assert (run_dir / "keep.txt").read_text() == "x"


def test_existing_folder_without_config_is_used(tmp_path):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    assert create_run_dir(make_cfg(tmp_path, "name=empty")).is_dir()


def test_existing_folder_with_other_config_is_refused(tmp_path):
    cfg = make_cfg(tmp_path, "name=clash")
    run_dir = create_run_dir(cfg)
    save_run_info(run_dir, cfg, {})
    before = (run_dir / "config.yaml").read_text()
    other = make_cfg(tmp_path, "name=clash", "train.lr=0.5")
    with pytest.raises(RunError) as info:
        create_run_dir(other)
    message = str(info.value)
    assert str(run_dir) in message and "train.lr" in message
    assert (run_dir / "config.yaml").read_text() == before


@pytest.mark.parametrize("method, unused_change, used_change", [
    ("lora", "method.ewc_lambda=5", "method.lora_r=4"),
    ("ewc", "method.lcia_fallback=0.5", "method.ewc_lambda=5"),  # an addition alone runs on lora
    ("ewc", "method.replay_ratio=0.9", "method.lora_r=4"),
    ("lcia-ema", "method.lcia_threshold=0.5", "method.lcia_fallback=0.5"),
])
def test_a_new_value_of_a_setting_the_method_never_reads_keeps_the_same_run(tmp_path, method, unused_change,
                                                                            used_change):
    cfg = make_cfg(tmp_path, "name=r", f"method.name={method}")
    run_dir = create_run_dir(cfg)
    save_run_info(run_dir, cfg, {})
    assert create_run_dir(make_cfg(tmp_path, "name=r", f"method.name={method}", unused_change)) == run_dir
    with pytest.raises(RunError, match=used_change.split("=")[0]):
        create_run_dir(make_cfg(tmp_path, "name=r", f"method.name={method}", used_change))
    with pytest.raises(RunError, match="method.with"):  # another part is another run
        create_run_dir(make_cfg(tmp_path, "name=r", f"method.name={method}", "method.with=[replay]"))


def test_unused_settings_are_the_ones_no_part_declares():
    from mcit.methods.registry import unused_settings

    assert "replay_ratio" not in unused_settings("lora", ["replay"])
    assert {"replay_ratio", "ewc_lambda", "moe_experts", "lcia_fallback"} <= unused_settings("lora", [])
    assert "lora_r" not in unused_settings("ewc", [])  # on lora
    assert "lora_r" in unused_settings("full", []) and "train_projector" not in unused_settings("full", [])
    assert unused_settings("my.module:Method", []) == set()  # a method from outside mcit may read anything
    assert unused_settings("lora", ["my.module:Extra"]) == set()


def test_each_method_file_reads_only_the_settings_its_spec_declares():
    """What makes unused_settings safe: every method.* setting a built-in method's code (the files
    of its class and base classes) reads is declared by its spec. Any attribute of a setting's
    name counts as a read (`c.lora_r`, `self.cfg.lora_r`): too many, never too few."""
    import inspect

    from mcit.methods.registry import BUILTIN, _union_fields

    fields = {n for n, _, _ in _union_fields([c for s in BUILTIN for c in s.settings])}
    # lcia-ema is LCIA with grouping off: LCIA's constructor reads the grouping settings, which
    # only the grouping decision (never reached) uses.
    never_reached = {"lcia-ema": {"lcia_grouping", "lcia_threshold", "lcia_similarity", "lcia_tfidf",
                                  "lcia_expand_ema"}}
    seen = {}
    for spec in BUILTIN:
        declared = {f.name for c in spec.settings for f in dataclasses.fields(c)}
        files = {inspect.getsourcefile(k) for k in spec.load().__mro__ if k.__module__.startswith("mcit.methods")}
        read = {m for f in files for m in re.findall(r"\.(\w+)", Path(f).read_text())} & fields
        assert read - declared - never_reached.get(spec.name, set()) == set(), spec.name
        seen[spec.name] = read
    assert seen["lora"] >= {"lora_r", "train_projector"} and "lcia_fallback" in seen["lcia-ema"]  # the scan sees reads


def test_existing_folder_with_unreadable_config_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train:\n  not_a_key: 1\n")
    with pytest.raises(RunError, match="cannot be read"):
        create_run_dir(make_cfg(tmp_path, "name=broken"))


def test_output_dir_spelling_does_not_count_as_a_different_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["output_dir=runs", "name=r"])
    run_dir = create_run_dir(cfg)
    save_run_info(run_dir, cfg, {})
    assert create_run_dir(load_config(None, ["output_dir=./runs/", "name=r"])).resolve() == run_dir.resolve()


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "  "])
def test_bad_run_names_are_refused(tmp_path, name):
    cfg = make_cfg(tmp_path)
    cfg.name = name
    with pytest.raises(RunError):
        create_run_dir(cfg)


def test_run_error_is_a_runtime_error():
    assert issubclass(RunError, RuntimeError)


# ----------------------------------------------------------------------------- run info


def test_save_run_info_writes_config_and_environment(tmp_path):
    cfg = make_cfg(tmp_path, "name=info", "seed=42", "data.tasks=[GQA, VizWiz]")
    run_dir = create_run_dir(cfg)
    device = {"type": "cpu", "count": 0}
    save_run_info(run_dir, cfg, {"device": device})

    # config.yaml is the resolved config and loads back to an equal one
    assert load_config(run_dir / "config.yaml", []) == cfg
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 42

    env = load_json(run_dir / "environment.json")
    for key in ("python", "platform", "packages", "device", "seed", "argv", "git_commit", "time",
                "config_hash"):
        assert key in env, key
    assert env["device"] == device
    assert env["seed"] == 42
    assert env["argv"] == sys.argv
    assert env["python"] == sys.version.split()[0]
    assert env["config_hash"] == config_hash(cfg)
    for package in ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy"):
        assert package in env["packages"]
    assert env["packages"]["numpy"]  # installed in the test environment
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40,64}", env["git_commit"])
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", env["time"])


def test_save_run_info_leaves_no_temporary_files(tmp_path):
    cfg = make_cfg(tmp_path, "name=clean")
    run_dir = create_run_dir(cfg)
    save_run_info(run_dir, cfg, {})
    save_run_info(run_dir, cfg, {})
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "environment.json", "run.json"]
    assert not list(run_dir.parent.glob(".*"))  # nor the hidden folder the run folder was created in


def test_git_commit_from_a_fake_repository(tmp_path):
    from mcit.rundir import git_commit

    sha = "a" * 40
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    (tmp_path / "pkg").mkdir()
    assert git_commit(tmp_path / "pkg") == sha

    packed = "b" * 40
    (tmp_path / ".git" / "refs" / "heads" / "main").unlink()
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs\n{packed} refs/heads/main\n")
    assert git_commit(tmp_path / "pkg") == packed

    (tmp_path / ".git" / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(tmp_path / "pkg") == "c" * 40


def test_git_commit_without_repository_is_none(tmp_path):
    from mcit.rundir import git_commit

    (tmp_path / ".git").mkdir()  # a .git without HEAD: unreadable, not an error
    assert git_commit(tmp_path) is None


# ----------------------------------------------------------------------------- JSON


def test_save_and_load_json(tmp_path):
    obj = {"z": 1, "a": [1.5, None, "x"], "nested": {"b": True}, "path": Path("/p")}
    path = save_json(tmp_path / "sub" / "x.json", obj)
    text = path.read_text()
    assert text.index('"z"') < text.index('"a"')  # keys keep their order
    assert '\n  "z": 1' in text  # indent 2
    assert load_json(path) == {"z": 1, "a": [1.5, None, "x"], "nested": {"b": True}, "path": "/p"}


def test_save_json_handles_numpy_and_nan(tmp_path):
    np = pytest.importorskip("numpy")
    path = save_json(tmp_path / "m.json", {"m": np.array([[1.0, np.nan]]), "s": np.float32(2.5)})
    data = load_json(path)
    assert data["m"][0][0] == 1.0 and math.isnan(data["m"][0][1]) and data["s"] == 2.5


def test_save_json_replaces_atomically(tmp_path):
    path = tmp_path / "a.json"
    save_json(path, {"v": 1})
    with pytest.raises(TypeError):
        save_json(path, {"v": object()})
    assert load_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_load_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RunError, match="bad.json"):
        load_json(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- stages


def test_stage_dir_naming(tmp_path):
    assert stage_dir(tmp_path, 0, "ScienceQA") == tmp_path / "stages" / "01-ScienceQA"
    assert stage_dir(tmp_path, 9, "GQA") == tmp_path / "stages" / "10-GQA"
    assert not (tmp_path / "stages").exists()  # only a path, nothing created
    assert stage_dir(tmp_path, 1, "a/b").parent == tmp_path / "stages"
    with pytest.raises(ValueError):
        stage_dir(tmp_path, -1, "GQA")


def test_stage_done_marker(tmp_path):
    sd = stage_dir(tmp_path, 2, "TextVQA")
    assert not is_stage_done(sd)
    assert load_stage_info(sd) is None
    sd.mkdir(parents=True)
    (sd / "adapter.bin").write_bytes(b"weights")
    assert not is_stage_done(sd)  # files alone do not make a stage done
    mark_stage_done(sd, {"task": "TextVQA", "steps": 300, "scores": {"TextVQA": 51.0}})
    assert is_stage_done(sd)
    info = load_stage_info(sd)
    assert info["task"] == "TextVQA" and info["steps"] == 300 and "done_at" in info
    assert json.loads((sd / "done.json").read_text())["scores"] == {"TextVQA": 51.0}


def test_mark_stage_done_creates_the_folder(tmp_path):
    sd = stage_dir(tmp_path, 0, "GQA")
    mark_stage_done(sd, {})
    assert is_stage_done(sd)


def test_corrupt_done_marker_is_not_done(tmp_path):
    sd = stage_dir(tmp_path, 0, "GQA")
    sd.mkdir(parents=True)
    (sd / "done.json").write_text("{trunc")
    assert not is_stage_done(sd)


# ----------------------------------------------------------------------------- resume safety


def test_run_folder_appears_whole_with_its_config_record(tmp_path):
    leftover = tmp_path / "runs" / ".whole.creating-1"  # an earlier attempt killed half-way
    leftover.mkdir(parents=True)
    cfg = make_cfg(tmp_path, "name=whole", "train.lr=0.002")
    run_dir = create_run_dir(cfg)
    record = load_json(run_dir / "run.json")
    assert record["config"]["train"]["lr"] == 0.002 and "output_dir" not in record["config"]
    assert record["config_hash"] == config_hash(record["config"])
    assert load_config(run_dir / "config.yaml", []) == cfg
    assert not leftover.exists() and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["whole"]


def test_non_empty_folder_without_config_is_refused(tmp_path):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RunError, match="not empty and is not a run folder"):
        create_run_dir(make_cfg(tmp_path, "name=mine"))
    assert sorted(p.name for p in (tmp_path / "runs" / "mine").iterdir()) == ["notes.txt"]


def test_edited_config_yaml_is_named_key_by_key(tmp_path):
    from mcit.rundir import load_run_config

    run_dir = create_run_dir(make_cfg(tmp_path, "name=e"))
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("  lr: 0.001", "  lr: 0.5").replace("seed: 0", "seed: 3"))
    with pytest.raises(RunError) as info:
        load_run_config(run_dir)
    assert "was edited" in str(info.value)
    assert "seed: 0 -> 3" in str(info.value) and "train.lr: 0.001 -> 0.5" in str(info.value)


def test_done_json_records_file_hashes_and_a_changed_file_is_named(tmp_path):
    from mcit.rundir import completed_stages

    sd = stage_dir(tmp_path, 0, "GQA")
    (sd / "model").mkdir(parents=True)
    (sd / "model" / "w.bin").write_bytes(b"abc")
    (sd / "model" / ".w.bin.123.tmp").write_bytes(b"half")  # a cut-off write is not part of the stage
    (sd / "checkpoint").mkdir()
    (sd / "checkpoint" / "state.json").write_text("{}")  # nor the in-task checkpoint
    mark_stage_done(sd, {"scores": {"GQA": 1.0}})
    sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256(b"abc")
    assert load_json(sd / "done.json")["files"] == {"stages/01-GQA/model/w.bin": sha_abc}
    assert len(completed_stages(tmp_path, ["GQA", "VQAv2"])) == 1
    (sd / "model" / "w.bin").write_bytes(b"abd")
    with pytest.raises(RunError, match=r"w\.bin is damaged.*01-GQA/done\.json"):
        completed_stages(tmp_path, ["GQA", "VQAv2"])
