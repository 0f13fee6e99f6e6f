"""`mcit export RUN --merge OUT`: a stage as a standalone Hugging Face model that loads with
transformers alone and answers every test question as the stage did (greedy), for each method
whose stage merges; the run's record of its base model (path and sha256) and how export finds it."""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from badinput import invoke
from test_end_to_end import SMALL

from mcit.config import load_config
from mcit.data.stream import build_stream
from mcit.eval.evaluate import evaluate_task
from mcit.eval.generate import prompt_batch
from mcit.export import model_fingerprint
from mcit.methods import build_method
from mcit.models.load import load_checkpoint
from mcit.rundir import restore_stage

# A higher learning rate than SMALL's, so that every stage answers differently from the base model.
METHODS = {
    "lora": ["method.name=lora"],
    "moelora": ["method.name=moelora", "method.moe_experts=1"],
    "projector": ["method.name=projector"],
    "olora": ["method.name=olora"],
    "lcia-ema": ["method.name=lcia-ema"],  # the balanced EMA changes the weights, the merge sees one LoRA
}
STAGES = {1: "01-ImageNet", 2: "02-VQAv2"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(root / "cache"))
        for name, extra in METHODS.items():
            code, _, err = invoke(["run", *SMALL, f"output_dir={root / 'runs'}", f"name={name}", "train.lr=0.02",
                                   "train.steps_per_task=4", *extra])
            assert code == 0, err
        yield root / "runs"


def _stage_model(run, stage):
    """The stage as mcit itself rebuilds it (base model + method set-up + saved weights), unmerged."""
    cfg = load_config(run / "config.yaml", [])
    env = json.loads((run / "environment.json").read_text())
    model, processor = load_checkpoint(env["base_model"]["path"])
    method = build_method(cfg.method)
    model = method.setup(model, cfg)
    restore_stage(method, model, run / "stages" / stage)
    return model.eval(), processor


def _saved_answers(run, stage, task):
    lines = (run / "stages" / stage / "predictions" / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line)["raw"] for line in lines]


@pytest.mark.parametrize("method", list(METHODS))
def test_exported_model_loads_with_transformers_alone_and_answers_as_the_stage_did(runs, tmp_path, method):
    run, out = runs / method, tmp_path / "merged"
    code, _, err = invoke(["export", str(run), "--merge", str(out)])
    assert code == 0, err
    model = AutoModelForImageTextToText.from_pretrained(out).eval()  # no mcit, no PEFT
    processor = AutoProcessor.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())  # adapters folded in

    cfg = load_config(run / "config.yaml", [])
    stream = build_stream(cfg.data, cfg.data_seed, show_progress=False)
    base = [_saved_answers(run, "00-base", t) for t in stream.tasks]
    answers = []
    for task in stream.tasks:  # the last stage answered every task: all of its answers again
        _, records = evaluate_task(model, processor, stream.test[task], stream.image_root, stream.scorers[task],
                                   cfg.eval, show_progress=False)
        answers.append([r["raw"] for r in records])
    assert answers == [_saved_answers(run, "02-VQAv2", t) for t in stream.tasks]
    assert answers != base  # the stage changed the answers, so equal answers say the trained weights are there

    staged, _ = _stage_model(run, "02-VQAv2")  # and the same numbers, not just the same argmax
    batch = prompt_batch(processor, stream.test["VQAv2"][:3], stream.image_root)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, staged(**batch).logits, rtol=1e-4, atol=1e-4)


def test_an_earlier_stage_exports_with_stage(runs, tmp_path):
    out = tmp_path / "stage1"
    code, _, err = invoke(["export", str(runs / "lora"), "--stage", "1", "--merge", str(out)])
    assert code == 0, err
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    cfg = load_config(runs / "lora" / "config.yaml", [])
    stream = build_stream(cfg.data, cfg.data_seed, show_progress=False)
    _, records = evaluate_task(model, processor, stream.test["ImageNet"], stream.image_root,
                               stream.scorers["ImageNet"], cfg.eval, show_progress=False)
    assert [r["raw"] for r in records] == _saved_answers(runs / "lora", "01-ImageNet", "ImageNet")


def test_a_run_records_its_base_model_by_path_and_hash(runs):
    record = json.loads((runs / "lora" / "environment.json").read_text())["base_model"]
    assert set(record) == {"path", "sha256"} and len(record["sha256"]) == 64
    assert record["sha256"] == model_fingerprint(record["path"])


def test_export_finds_a_moved_base_model_in_the_cache_by_its_hash(runs, tmp_path):
    run = shutil.copytree(runs / "lora", tmp_path / "lora")
    env_path = run / "environment.json"
    env = json.loads(env_path.read_text())
    env["base_model"]["path"] = env["checkpoint"] = str(tmp_path / "elsewhere" / "tiny-llava")  # moved away
    env_path.write_text(json.dumps(env))
    code, out, err = invoke(["export", str(run), "--merge", str(tmp_path / "m")])
    assert code == 0, err
    assert f"on base model {runs.parent / 'cache'}" in out  # found where it is now
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_fingerprint_changes_with_the_weights_not_with_the_processor(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"abc")
    first = model_fingerprint(folder)
    (folder / "tokenizer.json").write_text("{}")
    assert model_fingerprint(folder) == first
    (folder / "model.safetensors").write_bytes(b"abd")
    assert model_fingerprint(folder) != first
