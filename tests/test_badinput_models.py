"""Bad-input catalogue, model folders: every damaged or unusable checkpoint is refused before
anything loads it, through the CLI (`mcit run model.name=`, `judge.backend=local judge.model=`,
`mcit judge --backend local`, `mcit emt`), with exit 2, a message naming the setting, the folder
and the file, no traceback, and no file changed (the folder itself included). Plus the folder
check's own behaviour on valid checkpoints (single file, sharded) and the file names it spells."""
import json
import random
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from badinput import assert_rejected
from conftest import save_tiny_checkpoint
from test_end_to_end import SMALL
from test_judge import _fake_run, _tiny_lm

from mcit.models.folder_check import CAUSAL_LM, MLLM, model_folder_problems

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A valid tiny LLaVA and a valid tiny causal LM, built once; every case damages a copy."""
    root = tmp_path_factory.mktemp("pristine")
    return {"mllm": save_tiny_checkpoint(root / "llava"), "lm": _tiny_lm(root / "lm")}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


# ------------------------------------------------------------------------------- damage


def _json(path, change):
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _header(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_with_header(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def truncate(folder):
    raw = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(raw[: len(raw) // 2])


def one_byte_short(folder):
    raw = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(raw[:-1])


def random_bytes(folder):
    (folder / WEIGHTS).write_bytes(random.Random(0).randbytes(200_000))


def empty_weights(folder):
    (folder / WEIGHTS).write_bytes(b"")


def header_claims_more(folder):
    """A well-formed header whose last tensor is twice its size: it ends 128 bytes past the file."""
    header, data = _header(folder / WEIGHTS)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    start, end = header[last]["data_offsets"]
    header[last] |= {"shape": [header[last]["shape"][0] * 2], "data_offsets": [start, end + (end - start)]}
    _write_with_header(folder / WEIGHTS, header, data)


def config_invalid_json(folder):
    (folder / "config.json").write_text('{"model_type": "llava",')


def config_missing(folder):
    (folder / "config.json").unlink()


def config_a_list(folder):
    (folder / "config.json").write_text("[]")


def unknown_model_type(folder):
    _json(folder / "config.json", lambda c: c | {"model_type": "llava_from_the_future"})


def no_model_type(folder):
    _json(folder / "config.json", lambda c: {k: v for k, v in c.items() if k != "model_type"})


def auto_map_config(folder):
    _json(folder / "config.json", lambda c: c | {"auto_map": {"AutoModelForImageTextToText": "modeling_evil.Evil"}})
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")


def auto_map_tokenizer(folder):
    _json(folder / "tokenizer_config.json", lambda c: c | {"auto_map": {"AutoTokenizer": [None, "tok_evil.Tok"]}})


def tokenizer_config_invalid(folder):
    (folder / "tokenizer_config.json").write_text("{not json")


def no_processor_files(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        (folder / name).unlink()


def no_image_processor(folder):
    (folder / "processor_config.json").unlink()


def no_tokenizer(folder):
    (folder / "tokenizer.json").unlink()


def no_chat_template(folder):
    (folder / "chat_template.jinja").unlink()


def pickle_only(folder):
    (folder / WEIGHTS).rename(folder / "pytorch_model.bin")  # never read: the name is the refusal


def ckpt_only(folder):
    (folder / WEIGHTS).rename(folder / "model.ckpt")


def no_weights(folder):
    (folder / WEIGHTS).unlink()


def _split_in_two(folder, second_shard="model-00002-of-00002.safetensors"):
    """The one weight file as shard 1 of an index that puts half the tensors in ``second_shard``."""
    names = sorted(_header(folder / WEIGHTS)[0].keys() - {"__metadata__"})
    (folder / WEIGHTS).rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {n: "model-00001-of-00002.safetensors" if i % 2 else second_shard for i, n in enumerate(names)}
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def sharded_missing_shard(folder):
    _split_in_two(folder)


def sharded_shard_outside(folder):
    _split_in_two(folder, second_shard="../model-00002-of-00002.safetensors")


def sharded_index_invalid(folder):
    (folder / WEIGHTS).unlink()
    (folder / INDEX).write_text('{"weight_map": ')


def sharded_index_no_weight_map(folder):
    (folder / WEIGHTS).rename(folder / "model-00001-of-00001.safetensors")
    (folder / INDEX).write_text(json.dumps({"metadata": {}}))


def shard_lacks_tensors(folder):
    names = sorted(_header(folder / WEIGHTS)[0].keys() - {"__metadata__"})
    (folder / WEIGHTS).rename(folder / "model-00001-of-00001.safetensors")
    weight_map = dict.fromkeys([*names, "extra.weight"], "model-00001-of-00001.safetensors")
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def folder_is_a_file(folder):
    shutil.rmtree(folder)
    folder.write_text("not a folder\n")


def folder_missing(folder):
    shutil.rmtree(folder)


def peft_adapter_folder(folder):
    for path in folder.iterdir():
        path.unlink()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "adapter_model.safetensors"))


def several_problems(folder):
    truncate(folder)
    no_chat_template(folder)
    auto_map_config(folder)


def sequence_classifier(folder):
    _json(folder / "config.json", lambda c: c | {"architectures": ["LlamaForSequenceClassification"]})


def intact(folder):
    pass


# -------------------------------------------------------------------------------- commands


def run_model(folder, out):
    return ["run", *SMALL, f"output_dir={out}", "name=r", f"model.name={folder}"]


def run_local_judge(folder, out):
    return ["run", *SMALL, f"output_dir={out}", "name=r", "judge.backend=local", f"judge.model={folder}"]


def emt(folder, out):
    return ["emt", str(folder), "--datasets", "digits", "--limit", "2", "--probe-train", "2", "--out", str(out)]


# id: (which pristine folder, damage, command, what the message must name besides the folder)
CASES = {
    # model.name = a damaged image-text-to-text checkpoint
    "weights-truncated-to-half": ("mllm", truncate, run_model, ["model.name", WEIGHTS, "truncated"]),
    "weights-one-byte-short": ("mllm", one_byte_short, run_model, ["model.name", WEIGHTS, "truncated"]),
    "weights-random-bytes": ("mllm", random_bytes, run_model, ["model.name", WEIGHTS, "header too large"]),
    "weights-empty-file": ("mllm", empty_weights, run_model, ["model.name", WEIGHTS, "header too small"]),
    "weights-header-claims-more-bytes": ("mllm", header_claims_more, run_model, ["model.name", WEIGHTS, "damaged"]),
    "config-invalid-json": ("mllm", config_invalid_json, run_model, ["model.name", "config.json", "not valid JSON"]),
    "config-missing": ("mllm", config_missing, run_model, ["model.name", "config.json: missing"]),
    "config-not-an-object": ("mllm", config_a_list, run_model, ["config.json", "not an object"]),
    "config-unknown-model-type": ("mllm", unknown_model_type, run_model,
                                  ["config.json", "'llava_from_the_future' is not a model type transformers"]),
    "config-no-model-type": ("mllm", no_model_type, run_model, ["config.json", "no model_type"]),
    "remote-code-auto-map-in-config": ("mllm", auto_map_config, run_model,
                                       ["config.json", "auto_map", "modeling_evil.Evil", "never runs"]),
    "remote-code-auto-map-in-tokenizer": ("mllm", auto_map_tokenizer, run_model,
                                          ["tokenizer_config.json", "auto_map", "tok_evil.Tok"]),
    "tokenizer-config-invalid-json": ("mllm", tokenizer_config_invalid, run_model,
                                      ["tokenizer_config.json", "not valid JSON"]),
    "no-processor-files": ("mllm", no_processor_files, run_model,
                           ["no tokenizer files", "no image processor", "no chat template"]),
    "no-image-processor": ("mllm", no_image_processor, run_model, ["no image processor", "preprocessor_config.json"]),
    "no-chat-template": ("mllm", no_chat_template, run_model, ["no chat template", "chat_template.jinja"]),
    "pickle-weights-only-bin": ("mllm", pickle_only, run_model,
                                ["pytorch_model.bin", "safetensors only", "safe_serialization=True"]),
    "pickle-weights-only-ckpt": ("mllm", ckpt_only, run_model, ["model.ckpt", "pickle", "safe_serialization=True"]),
    "no-weights": ("mllm", no_weights, run_model, ["no weights", WEIGHTS, INDEX]),
    "sharded-index-names-missing-shard": ("mllm", sharded_missing_shard, run_model,
                                          ["model-00002-of-00002.safetensors: missing", INDEX]),
    "sharded-shard-outside-folder": ("mllm", sharded_shard_outside, run_model, [INDEX, "not a file name"]),
    "sharded-index-invalid-json": ("mllm", sharded_index_invalid, run_model, [INDEX, "not valid JSON"]),
    "sharded-index-no-weight-map": ("mllm", sharded_index_no_weight_map, run_model, [INDEX, "weight_map"]),
    "sharded-shard-lacks-tensors": ("mllm", shard_lacks_tensors, run_model,
                                    ["model-00001-of-00001.safetensors", "lacks 1 tensors", "extra.weight"]),
    "folder-is-a-file": ("mllm", folder_is_a_file, run_model, ["model.name", "it is a file"]),
    "folder-missing": ("mllm", folder_missing, run_model, ["model.name", "no such folder"]),
    "peft-adapter-folder": ("mllm", peft_adapter_folder, run_model, ["a PEFT adapter", "no config.json", "base model"]),
    "causal-lm-as-model-name": ("lm", intact, run_model, ["model.name", "'llama' is not an image-text-to-text"]),
    "several-problems-at-once": ("mllm", several_problems, run_model,
                                 [WEIGHTS, "truncated", "no chat template", "auto_map"]),
    # judge.backend=local judge.model = not a usable causal LM, refused at run start
    "judge-local-at-an-mllm": ("mllm", intact, run_local_judge, ["judge.model", "'llava' is not a causal LM"]),
    "judge-local-truncated-weights": ("lm", truncate, run_local_judge, ["judge.model", WEIGHTS, "truncated"]),
    "judge-local-sequence-classifier": ("lm", sequence_classifier, run_local_judge,
                                        ["judge.model", "LlamaForSequenceClassification", "not a causal LM"]),
    "judge-local-no-tokenizer": ("lm", no_tokenizer, run_local_judge, ["judge.model", "no tokenizer files"]),
    "judge-local-pickle-only": ("lm", pickle_only, run_local_judge, ["judge.model", "pytorch_model.bin"]),
    # mcit emt on a damaged checkpoint
    "emt-truncated-weights": ("mllm", truncate, emt, ["emt", WEIGHTS, "truncated"]),
    "emt-pickle-only": ("mllm", pickle_only, emt, ["emt", "pytorch_model.bin", "safetensors only"]),
    "emt-remote-code": ("mllm", auto_map_config, emt, ["emt", "auto_map"]),
    "emt-unknown-model-type": ("mllm", unknown_model_type, emt, ["emt", "llava_from_the_future"]),
}


@pytest.mark.parametrize("base, damage, command, mentions", CASES.values(), ids=CASES.keys())
def test_bad_model_folder_is_refused_before_loading(pristine, cache, base, damage, command, mentions):
    folder = cache / "model"
    shutil.copytree(pristine[base], folder)
    damage(folder)
    out = cache / "out"
    err = assert_rejected(command(folder, out), mentions=[str(folder), *mentions], watch=[cache], code=2)
    assert not out.exists()  # no run folder (or EMT output) started
    assert len(err.strip().splitlines()) == 1, err


def test_mcit_judge_with_a_damaged_local_lm_is_refused(pristine, tmp_path):
    run = _fake_run(tmp_path)
    lm = tmp_path / "lm"
    shutil.copytree(pristine["lm"], lm)
    truncate(lm)
    assert_rejected(["judge", str(run), "--backend", "local", f"judge.model={lm}"],
                    mentions=["judge.model", str(lm), WEIGHTS, "truncated"], watch=[tmp_path], code=2)
    assert not (run / "matrix_gk.json").exists()


def test_emt_on_a_run_stage_whose_base_checkpoint_is_damaged(pristine, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(pristine["mllm"], base)
    no_weights(base)
    run = tmp_path / "run"
    (run / "stages" / "00-base").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "environment.json").write_text(json.dumps({"checkpoint": str(base)}))
    assert_rejected(["emt", str(run / "stages" / "00-base"), "--datasets", "digits", "--limit", "2"],
                    mentions=["base checkpoint", str(base), "no weights"], watch=[tmp_path], code=2)
    assert not (run / "stages" / "00-base" / "emt").exists()


def test_emt_checks_the_checkpoint_before_building_a_local_judge(pristine, tmp_path, monkeypatch):
    def no_judge_yet(*args, **kwargs):
        raise AssertionError("the judge was built before the checkpoint was checked")

    monkeypatch.setattr("mcit.emt.command.build_judge_decider", no_judge_yet)
    folder = tmp_path / "model"
    shutil.copytree(pristine["mllm"], folder)
    truncate(folder)
    assert_rejected([*emt(folder, tmp_path / "out"), "--decider", "local", f"judge.model={pristine['lm']}"],
                    mentions=["emt", str(folder), WEIGHTS, "truncated"], watch=[tmp_path], code=2)


def test_both_bad_folders_of_a_run_are_reported_at_once(pristine, cache):
    mllm, lm = cache / "mllm", cache / "lm"
    shutil.copytree(pristine["mllm"], mllm)
    shutil.copytree(pristine["lm"], lm)
    no_weights(mllm)
    truncate(lm)
    assert_rejected([*run_model(mllm, cache / "out"), "judge.backend=local", f"judge.model={lm}"],
                    mentions=["model.name", f"{mllm}: no weights", "judge.model", f"{lm}: model.safetensors"],
                    watch=[cache], code=2)


# ----------------------------------------------------------------------- the check itself


def test_valid_checkpoints_pass(pristine):
    assert model_folder_problems(pristine["mllm"], MLLM) == []
    assert model_folder_problems(pristine["lm"], CAUSAL_LM) == []


def test_a_complete_sharded_checkpoint_passes_and_a_damaged_shard_is_named(pristine, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(pristine["mllm"], folder)
    tensors = load_file(str(folder / WEIGHTS))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / shard))
    (folder / WEIGHTS).unlink()
    (folder / INDEX).write_text(json.dumps({"weight_map": {n: s for s, part in shards.items() for n in part}}))
    assert model_folder_problems(folder, MLLM) == []

    truncate_shard = folder / "model-00002-of-00002.safetensors"
    truncate_shard.write_bytes(truncate_shard.read_bytes()[:100])
    problems = model_folder_problems(folder, MLLM)
    assert len(problems) == 1 and problems[0].startswith("model-00002-of-00002.safetensors: not a complete")


def test_pickle_is_ignored_beside_safetensors(pristine, tmp_path):
    """transformers reads model.safetensors first; a stray .bin beside it is never loaded."""
    folder = tmp_path / "both"
    shutil.copytree(pristine["mllm"], folder)
    (folder / "pytorch_model.bin").write_bytes(b"never read")
    assert model_folder_problems(folder, MLLM) == []


def test_file_names_are_the_ones_transformers_uses():
    from transformers import utils

    from mcit.models import folder_check as fc

    assert (fc.CONFIG, fc.SAFE_WEIGHTS, fc.SAFE_INDEX) == (utils.CONFIG_NAME, utils.SAFE_WEIGHTS_NAME,
                                                          utils.SAFE_WEIGHTS_INDEX_NAME)
    assert (fc.IMAGE_PROCESSOR, fc.PROCESSOR) == (utils.IMAGE_PROCESSOR_NAME, utils.PROCESSOR_NAME)
    assert utils.CHAT_TEMPLATE_FILE in fc.CHAT_TEMPLATES and utils.WEIGHTS_NAME.endswith(fc.PICKLE_SUFFIXES)
