"""The base model shipped with mcit (issue 15): built for the default settings, intact, used by a run
with those settings instead of building, and `mcit base-model` rebuilds one bit for bit."""
import json
import shutil

import pytest

from mcit.cli import main
from mcit.config import load_config
from mcit.recipes import base_model, shipped_base
from mcit.recipes.base_model import base_stage_key, ensure_base_model
from mcit.recipes.shipped_base import ASSET, differences, file_digests, install_shipped, read_manifest

# A base stage small enough to build twice in a test (seconds, not the default's minutes).
SMALL = ["data.image_size=32", "data.pretrain_size=64", "data.train_per_task=8", "data.test_per_task=4",
         "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
         "model.vision_hidden_size=32", "model.vision_layers=1", "model.vocab_size=300", "model.vision_steps=3",
         "model.vision_images=64", "model.vision_batch_size=8", "model.base_steps=3", "model.base_batch_size=4"]


def _default_key() -> str:
    cfg = load_config(None, [])
    return base_stage_key(cfg.model, cfg.data, cfg.data_seed)


def test_the_shipped_base_model_is_the_default_settings_and_matches_its_manifest():
    manifest = read_manifest(ASSET)
    assert manifest is not None, f"{ASSET} has no manifest.json"
    # A change to the default model/data settings or the base recipe changes the key: rebuild the
    # asset with `mcit base-model --out DIR` and ship DIR, or runs would silently build again.
    assert manifest["key"] == _default_key()
    assert differences(ASSET, manifest) == []
    assert {"model.safetensors", "config.json", "done"} <= set(manifest["files"])
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in manifest["files"])  # safetensors only


class _Main:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def test_a_run_with_the_default_settings_copies_the_shipped_model_instead_of_building(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "_train_base", lambda *a, **k: pytest.fail("built instead of copied"))
    lines = []
    target = ensure_base_model(load_config(None, []), tmp_path / "unused", tmp_path / "cache", _Main(), lines.append)
    assert target.name == f"tiny-llava-{_default_key()}"
    assert file_digests(target) == file_digests(ASSET)
    assert any("shipped with mcit" in line for line in lines)
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_shipped_base_false_builds_even_for_the_default_settings(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(base_model, "_train_base", lambda cfg, root, target, acc, log: built.append(target))
    cfg = load_config(None, ["model.shipped_base=false"])
    ensure_base_model(cfg, tmp_path / "data", tmp_path / "cache", _Main(), lambda *_: None)
    assert [t.name for t in built] == [f"tiny-llava-{_default_key()}"]


def test_a_damaged_shipped_file_is_reported_and_not_used(tmp_path):
    asset = tmp_path / "asset"
    shutil.copytree(ASSET, asset)
    with open(asset / "config.json", "a") as f:
        f.write(" ")
    lines = []
    assert not install_shipped(_default_key(), tmp_path / "target", lines.append, asset=asset)
    assert "config.json" in lines[0] and "does not match its manifest" in lines[0]
    assert not (tmp_path / "target").exists() and not list(tmp_path.glob("target.tmp*"))


def test_other_settings_never_take_the_shipped_model(tmp_path):
    assert not install_shipped("0" * 16, tmp_path / "target", pytest.fail)
    assert not (tmp_path / "target").exists()


def test_base_model_command_rebuilds_bit_for_bit_and_check_names_what_differs(tmp_path, capsys):
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["base-model", *SMALL, "--out", str(first), "--threads", "1"]) == 0
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["built_with"]["threads"] == 1  # a --check rebuild uses the reference's count
    cfg = load_config(None, SMALL)
    assert manifest["key"] == base_stage_key(cfg.model, cfg.data, cfg.data_seed)
    assert manifest["files"] == file_digests(first) and "model.safetensors" in manifest["files"]
    assert main(["base-model", *SMALL, "--out", str(second), "--check", "--against", str(first)]) == 0
    assert "bit for bit the same" in capsys.readouterr().out
    # A reference whose weights differ (here: its digest edited) is named, exit 1.
    manifest["files"]["model.safetensors"] = "0" * 64
    (first / "manifest.json").write_text(json.dumps(manifest))
    assert main(["base-model", *SMALL, "--out", str(third), "--check", "--against", str(first)]) == 1
    assert "model.safetensors" in capsys.readouterr().out


def test_base_model_command_keeps_an_omp_thread_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a scheduler's or the user's limit, as runs keep it
    assert main(["base-model", *SMALL, "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["built_with"]["threads"] == 1


def test_base_model_command_refuses_what_it_cannot_do(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert main(["base-model", *SMALL, "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (tmp_path / "full" / "x").read_text() == "keep"
    # --check against a base model built for other settings: refused before any training.
    assert main(["base-model", *SMALL, "--out", str(tmp_path / "o"), "--check"]) == 2
    err = capsys.readouterr().err
    assert "was built for base-stage key" in err and not (tmp_path / "o").exists()
    assert main(["base-model", *SMALL, "--out", str(tmp_path / "o"), "--check", "--against", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    assert main(["base-model", "model.name=/some/checkpoint", "--out", str(tmp_path / "o")]) == 2
    assert "builds the built-in tiny-llava" in capsys.readouterr().err


def test_manifest_digests_cover_every_file_but_itself(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"abc")
    (tmp_path / "manifest.json").write_text("{}")
    assert file_digests(tmp_path) == {
        "w.safetensors": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}  # sha256("abc")
    assert differences(tmp_path, {"files": {"w.safetensors": "x", "gone.json": "y"}}) == ["gone.json", "w.safetensors"]
    assert shipped_base.REBUILD.startswith("mcit base-model")
