"""Issue 15 part 4, evaluation without repeated work: test prompts encoded once per run (the
same batches, the same answers), a static KV cache where the model has one (the same answers),
the seconds per sample in the run folder, and bf16 evaluation only when asked for."""
import json

import pytest
import torch
from PIL import Image

from conftest import save_tiny_checkpoint
from test_end_to_end import SMALL
from test_model_families import FAMILIES, checkpoints  # noqa: F401  (checkpoints: the families' fixture)

import mcit.config as config_module
from mcit.cli import main
from mcit.config import EvalConfig
from mcit.data.encode import collate
from mcit.data.schema import Sample
from mcit.eval import generate
from mcit.eval.generate import (EvalTiming, PromptCache, encode_prompt, generate_answers, prompt_batch,
                                supports_static_cache)
from mcit.models.load import load_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two images of different sizes on disk (Qwen patch grids and LLaVA-NeXT crops differ)."""
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (32, 32), (200, 40, 40)).save(root / "red.png")
    Image.new("RGB", (48, 24), (40, 40, 200)).save(root / "blue.png")
    return root


def _samples():
    """Questions with and without an image in one batch, prompts of different lengths."""
    return [Sample(id="0", task="t", image="red.png", text="What color is the shape?", answers=("red",)),
            Sample(id="1", task="t", image=None, text="Say yes.", answers=("yes",)),
            Sample(id="2", task="t", image="blue.png", text="Is there a circle in the picture?", answers=("no",))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = load_checkpoint(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt"))
    return model.eval(), processor


def test_cached_prompts_make_the_processors_own_batch(tiny, images):
    _, processor = tiny
    side, processor.tokenizer.padding_side = processor.tokenizer.padding_side, "left"
    try:
        expected = prompt_batch(processor, _samples(), images)
    finally:
        processor.tokenizer.padding_side = side
    cache = PromptCache(max_bytes=2**30)
    for _ in range(2):  # encoded the first time, read back the second
        got = collate(cache.encoded(processor, _samples(), images), processor.tokenizer.pad_token_id, "left")
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
    assert (cache.misses, cache.hits) == (3, 3)
    # what is held: 2 images of 3x32x32 float32 and every prompt's int64 token ids
    tokens = sum(len(encode_prompt(processor, s, images)["input_ids"]) for s in _samples())
    assert cache.bytes == 2 * 3 * 32 * 32 * 4 + 8 * tokens


def test_the_cache_stops_keeping_prompts_at_its_bound(tiny, images):
    _, processor = tiny
    first = encode_prompt(processor, _samples()[0], images)
    cache = PromptCache(max_bytes=sum(t.nbytes for t in first.values()))  # room for the first prompt only
    cache.encoded(processor, _samples(), images)
    assert cache.bytes == cache.max_bytes and (cache.misses, cache.hits) == (3, 0)
    cache.encoded(processor, _samples(), images)
    assert (cache.misses, cache.hits) == (5, 1)  # the two that did not fit are encoded again


def test_a_sample_changed_under_the_same_id_is_encoded_again(tiny, images):
    _, processor = tiny
    cache = PromptCache(max_bytes=2**30)
    [before] = cache.encoded(processor, _samples()[:1], images)
    changed = Sample(id="0", task="t", image="blue.png", text="What color is it?", answers=("blue",))
    [after] = cache.encoded(processor, [changed], images)
    assert cache.misses == 2 and not torch.equal(before["pixel_values"], after["pixel_values"])


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_prompts_and_static_cache_give_the_same_answers(family, checkpoints, images):  # noqa: F811
    model, processor = load_checkpoint(checkpoints[family])
    model.eval()
    kwargs = dict(batch_size=3, max_new_tokens=4, show_progress=False)
    before = generate_answers(model, processor, _samples(), images, **kwargs)  # as evaluation was
    cache = PromptCache(max_bytes=2**30)
    cached = [generate_answers(model, processor, _samples(), images, prompts=cache, **kwargs) for _ in range(2)]
    static = generate_answers(model, processor, _samples(), images, prompts=cache, kv_cache="static", **kwargs)
    one_by_one = [generate_answers(model, processor, [s], images, prompts=cache, kv_cache="static",
                                   batch_size=1, max_new_tokens=4, show_progress=False)[0] for s in _samples()]
    assert cached == [before, before] and static == before and one_by_one == before
    assert cache.hits == 3 + 3 + 3


def test_static_cache_where_transformers_supports_it(checkpoints):  # noqa: F811
    """Idefics3 is not marked compilable in transformers: it keeps the dynamic cache."""
    supported = {family: supports_static_cache(load_checkpoint(checkpoints[family])[0]) for family in FAMILIES}
    assert supported == {"llava": True, "llava_next": True, "qwen2_vl": True, "qwen2_5_vl": True, "idefics3": False}


def test_static_cache_is_used_and_sized_to_prompt_plus_answer(tiny, images, monkeypatch):
    model, processor = tiny
    seen = []
    real = model.generate

    def spy(**kwargs):
        seen.append(kwargs.get(generate._CACHE_KWARG))
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    generate_answers(model, processor, _samples(), images, batch_size=3, max_new_tokens=4, show_progress=False)
    generate_answers(model, processor, _samples(), images, batch_size=3, max_new_tokens=4, show_progress=False,
                     kv_cache="dynamic")
    width = prompt_batch(processor, _samples(), images)["input_ids"].shape[1]
    assert seen[0].get_max_length() == width + 4 and seen[1] is None


def test_timing_splits_the_seconds_and_divides_by_samples():
    timing = EvalTiming(samples=4, encode_seconds=1.0, prefill_seconds=2.0, decode_seconds=1.0)
    assert timing.record() == {"samples": 4, "seconds": 4.0, "seconds_per_sample": 1.0,
                               "encode_seconds_per_sample": 0.25, "prefill_seconds_per_sample": 0.5,
                               "decode_seconds_per_sample": 0.25}


def test_generation_adds_to_the_timing(tiny, images):
    model, processor = tiny
    timing = EvalTiming(samples=1, encode_seconds=1.0)
    generate_answers(model, processor, _samples(), images, batch_size=2, max_new_tokens=3, show_progress=False,
                     timing=timing)
    assert timing.samples == 1 + 3 and timing.encode_seconds > 1.0
    assert timing.prefill_seconds > 0 and timing.decode_seconds > 0


def test_bf16_evaluation_is_opt_in_and_leaves_the_weights(tiny, images):
    assert EvalConfig().dtype == "float32" and EvalConfig().kv_cache == "static"  # static: the same answers
    assert "changes answers" in EvalConfig.__dataclass_fields__["dtype"].metadata["help"].lower()
    model, processor = tiny
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    answers = generate_answers(model, processor, _samples(), images, batch_size=3, max_new_tokens=3,
                               show_progress=False, dtype="bfloat16")
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert all(v.dtype == torch.float32 and torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_config_names_match_the_generation_module():
    assert config_module.EVAL_DTYPES == generate.DTYPES and config_module.KV_CACHES == generate.KV_CACHES


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("eval-runs")
    mp.setenv("MCIT_CACHE", str(root / "cache"))
    yield root
    mp.undo()


def _run(root, name, *extra):
    assert main(["run", *SMALL, f"output_dir={root / 'runs'}", f"name={name}", *extra]) == 0
    return root / "runs" / name


def _predictions(run):
    return {p.relative_to(run).as_posix(): p.read_text() for p in sorted(run.glob("stages/*/predictions/*.jsonl"))}


def test_a_run_records_seconds_per_sample_and_answers_as_without_the_savings(cache_dir):
    run = _run(cache_dir, "fast")
    plain = _run(cache_dir, "plain", "eval.prompt_cache_mb=0", "eval.kv_cache=static")
    assert _predictions(run) and _predictions(run) == _predictions(plain)
    base = json.loads((run / "stages" / "00-base" / "eval_seconds.json").read_text())
    assert set(base) == {"ImageNet", "VQAv2"} and base["VQAv2"]["samples"] == 6  # data.test_per_task=6
    done = json.loads((run / "stages" / "02-VQAv2" / "done.json").read_text())
    assert set(done["eval"]) == {"ImageNet", "VQAv2"} and done["eval"]["ImageNet"]["samples"] == 6
    record = done["eval"]["ImageNet"]
    assert record["seconds_per_sample"] == pytest.approx(record["seconds"] / 6, abs=1e-5)


def test_a_bf16_run_says_it_changes_answers(cache_dir, capsys):
    _run(cache_dir, "bf16", "eval.dtype=bfloat16", "data.tasks=[ImageNet]", "eval.zero_shot=false")
    assert "eval.dtype=bfloat16: answers generated under bf16 autocast; this changes some" in capsys.readouterr().out
    _run(cache_dir, "f32", "data.tasks=[ImageNet]", "eval.zero_shot=false")
    assert "bf16" not in capsys.readouterr().out
