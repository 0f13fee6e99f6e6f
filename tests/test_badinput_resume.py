"""The bad-input catalogue, `--resume` folders: every damaged, edited, partial or foreign run
folder is refused with exit 2, a message naming the file (and the key, for an edited config),
no traceback, and not one existing file of the folder changed.

Two run folders are made once per module (a tiny 2-task LoRA run): a finished one, and one cut
off in stage 2 just after an in-task checkpoint (as a kill there leaves it). Each case damages a
copy of one of them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import mcit.checkpoint
from badinput import assert_rejected, invoke, snapshot
from test_end_to_end import SMALL

from mcit.rundir import file_sha256

ARGS = [a for a in SMALL if not a.startswith("train.steps_per_task")] + ["train.steps_per_task=4",
                                                                        "train.checkpoint_every=2"]
S1, S2 = "stages/01-ImageNet", "stages/02-VQAv2"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """{"finished": run folder, "partial": run folder cut off in stage 2 after its first checkpoint}."""
    root = tmp_path_factory.mktemp("resume-templates")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(root / "cache"))
        assert invoke(["run", *ARGS, f"output_dir={root}", "name=finished"])[0] == 0

        real_save = mcit.checkpoint.save

        def save_then_die_in_stage_2(stage, *args, **kwargs):
            real_save(stage, *args, **kwargs)
            if Path(stage).name == "02-VQAv2":
                raise KeyboardInterrupt  # the process dies here: stage 2 has a checkpoint, no done.json

        mp.setattr(mcit.checkpoint, "save", save_then_die_in_stage_2)
        assert invoke(["run", *ARGS, f"output_dir={root}", "name=partial"])[0] == 130
    partial = root / "partial"
    assert (partial / S2 / "checkpoint" / "state.json").is_file() and not (partial / S2 / "done.json").exists()
    return {"finished": root / "finished", "partial": partial, "cache": root / "cache"}


@pytest.fixture()
def copy_of(templates, tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(templates["cache"]))

    def make(kind: str) -> Path:
        run = tmp_path / "runs" / kind
        shutil.copytree(templates[kind], run)
        return run
    return make


# -- how each case damages a run folder ------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _rehash(run: Path, stage: str, relative: str) -> None:
    """Record a replaced file's hash in its stage's done.json, as if the folder had been made so."""
    done = run / stage / "done.json"
    record = json.loads(done.read_text())
    record["files"][relative] = file_sha256(run / relative)
    done.write_text(json.dumps(record))


def _wrong_shape_adapter(run: Path) -> None:
    path = run / S1 / "model" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = tensors[key].new_zeros((tensors[key].shape[0] + 3, tensors[key].shape[1]))
    save_file(tensors, str(path))
    _rehash(run, S1, f"{S1}/model/adapter_model.safetensors")


def _method_changed_everywhere(run: Path) -> None:
    """config.yaml and its run.json record both say `full`, the saved weights are LoRA's."""
    _edit(run / "config.yaml", "  name: lora", "  name: full")
    record = json.loads((run / "run.json").read_text())
    record["config"]["method"]["name"] = "full"
    from mcit.config import config_hash
    record["config_hash"] = config_hash(record["config"])
    (run / "run.json").write_text(json.dumps(record))


def _done_lists_outside_path(run: Path) -> None:
    done = run / S1 / "done.json"
    record = json.loads(done.read_text())
    record["files"]["../../../etc/passwd"] = "0" * 64
    done.write_text(json.dumps(record))


def _extra_stage(run: Path) -> None:
    (run / "stages" / "03-Extra").mkdir()
    (run / "stages" / "03-Extra" / "notes.txt").write_text("x")


# (id, template, damage, words the message must contain)
CASES = [
    ("config-lr-edited", "partial", lambda r: _edit(r / "config.yaml", "  lr: 0.001", "  lr: 0.002"),
     ["config.yaml", "edited", "train.lr: 0.001 -> 0.002"]),
    ("config-edited-finished-run", "finished", lambda r: _edit(r / "config.yaml", "  lr: 0.001", "  lr: 0.002"),
     ["config.yaml", "train.lr: 0.001 -> 0.002"]),
    ("config-method-lora-to-full", "partial", lambda r: _edit(r / "config.yaml", "  name: lora", "  name: full"),
     ["config.yaml", "method.name: 'lora' -> 'full'"]),
    ("config-unparsable", "partial", lambda r: (r / "config.yaml").write_text("train: [unclosed\n"),
     ["config.yaml", "cannot be read"]),
    ("config-unknown-key", "partial", lambda r: _edit(r / "config.yaml", "  lr: 0.001", "  lr: 0.001\n  lr_typo: 1"),
     ["config.yaml", "lr_typo"]),
    ("run-json-truncated", "partial", lambda r: _truncate(r / "run.json"), ["run.json", "not valid JSON"]),
    ("run-json-hash-forged", "partial", lambda r: _edit(r / "run.json", '"seed": 0', '"seed": 1'),
     ["run.json", "damaged"]),
    ("done-json-truncated-finished", "finished", lambda r: _truncate(r / S2 / "done.json"),
     ["02-VQAv2", "done.json", "not valid JSON"]),
    ("done-json-truncated-partial", "partial", lambda r: _truncate(r / S1 / "done.json"),
     ["01-ImageNet", "done.json"]),
    ("done-json-not-a-record", "partial", lambda r: (r / S1 / "done.json").write_text("[1, 2]"),
     ["01-ImageNet", "done.json", "damaged"]),
    ("done-json-lists-outside-path", "partial", _done_lists_outside_path, ["done.json", "not a path inside"]),
    ("later-stage-done-without-earlier", "finished", lambda r: (r / S1 / "done.json").unlink(),
     ["02-VQAv2", "stage 2 is complete but stage 1 is not"]),
    ("adapter-truncated", "finished", lambda r: _truncate(r / S1 / "model" / "adapter_model.safetensors"),
     ["01-ImageNet/model/adapter_model.safetensors", "damaged"]),
    ("adapter-missing", "partial", lambda r: (r / S1 / "model" / "adapter_model.safetensors").unlink(),
     ["adapter_model.safetensors", "missing"]),
    ("stage-model-folder-deleted", "finished", lambda r: shutil.rmtree(r / S2 / "model"),
     ["02-VQAv2/model", "missing"]),
    ("prediction-edited", "finished", lambda r: _truncate(r / S2 / "predictions" / "ImageNet.jsonl"),
     ["predictions/ImageNet.jsonl", "damaged"]),
    ("zero-shot-missing", "partial", lambda r: (r / "zero_shot.json").unlink(), ["zero_shot.json", "missing"]),
    ("zero-shot-edited", "partial", lambda r: (r / "zero_shot.json").write_text('{"ImageNet": 99}'),
     ["zero_shot.json", "damaged"]),
    ("base-predictions-deleted", "partial", lambda r: shutil.rmtree(r / "stages" / "00-base"),
     ["00-base", "missing"]),
    ("checkpoint-optimizer-truncated", "partial",
     lambda r: _truncate(r / S2 / "checkpoint" / "optimizer.safetensors"),
     ["checkpoint/optimizer.safetensors", "damaged", "delete the folder"]),
    ("checkpoint-adapter-truncated", "partial",
     lambda r: _truncate(r / S2 / "checkpoint" / "model" / "adapter_model.safetensors"),
     ["checkpoint/model/adapter_model.safetensors", "delete the folder"]),
    ("checkpoint-rng-missing", "partial", lambda r: (r / S2 / "checkpoint" / "rng.safetensors").unlink(),
     ["rng.safetensors", "missing"]),
    ("checkpoint-state-truncated", "partial", lambda r: _truncate(r / S2 / "checkpoint" / "state.json"),
     ["checkpoint/state.json", "delete the folder"]),
    ("extra-stage-folder", "finished", _extra_stage, ["03-Extra", "not a stage of this run"]),
    ("environment-missing-with-stages", "partial", lambda r: (r / "environment.json").unlink(),
     ["environment.json", "missing"]),
    ("adapter-of-wrong-shape", "partial", _wrong_shape_adapter, ["01-ImageNet", "do not fit", "lora"]),
    ("method-changed-with-its-record", "partial", _method_changed_everywhere, ["01-ImageNet", "do not fit", "full"]),
]


@pytest.mark.parametrize("template, damage, mentions", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_run_folder_is_refused(copy_of, template, damage, mentions):
    run = copy_of(template)
    damage(run)
    assert_rejected(["run", "--resume", str(run)], mentions=mentions, watch=[run], code=2)


# -- folders that are not run folders, and --resume misused ---------------------------------------

def test_resume_of_a_file_is_refused(tmp_path):
    (tmp_path / "run.txt").write_text("x")
    assert_rejected(["run", "--resume", str(tmp_path / "run.txt")], mentions=["run.txt", "not a run folder"],
                    watch=[tmp_path], code=2)


def test_resume_of_a_missing_folder_is_refused(tmp_path):
    assert_rejected(["run", "--resume", str(tmp_path / "nope")], mentions=["nope", "does not exist"],
                    watch=[tmp_path], code=2)


def test_resume_of_an_empty_folder_says_to_rerun_the_original_command(tmp_path):
    (tmp_path / "r").mkdir()
    assert_rejected(["run", "--resume", str(tmp_path / "r")],
                    mentions=["no config.yaml", "empty", "rerun the original", "may be deleted"],
                    watch=[tmp_path], code=2)
    assert (tmp_path / "r").is_dir()


def test_resume_of_a_folder_killed_while_being_created(tmp_path):
    leftover = tmp_path / ".r.creating-4242"
    leftover.mkdir()
    (leftover / "config.yaml").write_text("seed: 0\n")
    assert_rejected(["run", "--resume", str(tmp_path / "r")],
                    mentions=["killed while its folder was being created", "rerun the original", ".r.creating-4242"],
                    watch=[tmp_path], code=2)


def test_resume_of_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "thesis.tex").write_text("x")
    assert_rejected(["run", "--resume", str(tmp_path / "r")], mentions=["not a run folder", "no config.yaml"],
                    watch=[tmp_path], code=2)


def test_resume_of_a_folder_with_config_yaml_only(copy_of, tmp_path):
    run = tmp_path / "only"
    run.mkdir()
    shutil.copy(copy_of("partial") / "config.yaml", run / "config.yaml")
    assert_rejected(["run", "--resume", str(run)], mentions=["run.json", "start a new run"], watch=[run], code=2)


def test_resume_with_overrides_is_refused(copy_of):
    run = copy_of("partial")
    assert_rejected(["run", "--resume", str(run), "train.lr=0.5"], mentions=["no config or overrides"],
                    watch=[run], code=2)


def test_a_new_run_into_a_foreign_non_empty_folder_is_refused(copy_of, tmp_path):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "data.csv").write_text("1,2\n")
    assert_rejected(["run", *ARGS, f"output_dir={tmp_path / 'runs'}", "name=mine"],
                    mentions=["mine", "not empty", "not a run folder"], watch=[tmp_path / "runs"], code=2)


# -- what is accepted ----------------------------------------------------------------------------

def test_resume_of_a_finished_run_says_so_and_changes_nothing(copy_of):
    run = copy_of("finished")
    before, paths = snapshot(run), sorted(run.rglob("*"))
    code, out, err = invoke(["run", "--resume", str(run)])
    assert code == 0 and "is finished" in out and "nothing to resume" in out, (out, err)
    assert snapshot(run) == before and sorted(run.rglob("*")) == paths  # nothing written, nothing added


def test_a_partial_run_resumes_from_its_checkpoint_and_keeps_its_completed_stage(copy_of):
    run = copy_of("partial")
    stage1 = snapshot(run / S1)
    code, _, err = invoke(["run", "--resume", str(run)])
    assert code == 0, err
    assert snapshot(run / S1) == stage1  # a completed stage is never rewritten
    assert (run / S2 / "done.json").is_file() and not (run / S2 / "checkpoint").exists()
    assert (run / "metrics.json").is_file()


def test_a_refused_resume_loads_no_torch(copy_of, tmp_path):
    """The folder is checked before torch, transformers or PEFT are imported (a fresh process:
    this one has them loaded already)."""
    run = copy_of("partial")
    _edit(run / "config.yaml", "  lr: 0.001", "  lr: 0.002")
    probe = ("import sys; from mcit.cli import main; code = main(['run', '--resume', sys.argv[1]]); "
             "print(code, sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe, str(run)], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "2 []" and "train.lr: 0.001 -> 0.002" in out.stderr, (out.stdout, out.stderr)
