"""The built-in model is a real HF checkpoint: it saves, loads through the generic
real-checkpoint path, generates in batches, and takes LoRA on the language model only."""
import pytest
import torch
from conftest import save_tiny_checkpoint
from PIL import Image

from mcit.config import ConfigError, load_config
from mcit.data.encode import IGNORE_INDEX, collate, encode_for_training
from mcit.data.schema import Sample
from mcit.eval.generate import generate_answers
from mcit.methods import build_method
from mcit.models.adapters import language_model_linear_names
from mcit.models.load import load_checkpoint
from mcit.models.tiny_llava import build_processor, train_tokenizer

TEXTS = ["What color is the circle?\nAnswer the question using a single word or phrase.", "red", "blue", "yes no"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), TEXTS, hidden_size=32, num_layers=2,
                                vision_layers=2)


@pytest.fixture()
def images(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
    return tmp_path


def _samples(n):
    return [Sample(id=str(i), task="VQAv2", image=f"{i % 3}.png", text=TEXTS[0] if i % 2 else "Is it red?\nAnswer yes or no.",
                   answers=("red",)) for i in range(n)]


def test_round_trip_through_real_checkpoint_path(tiny_checkpoint):
    model, processor = load_checkpoint(tiny_checkpoint)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert (tiny_checkpoint / "model.safetensors").is_file()
    assert not list(tiny_checkpoint.glob("*.bin"))  # never pickle
    again = build_processor(train_tokenizer(TEXTS * 10, 300), 32, 8)
    assert processor.tokenizer("red circle")["input_ids"] == again.tokenizer("red circle")["input_ids"]


def test_missing_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a local checkpoint"):
        load_checkpoint(tmp_path / "nope")


def test_labels_mask_everything_but_the_answer(tiny_checkpoint, images):
    _, processor = load_checkpoint(tiny_checkpoint)
    item = encode_for_training(processor, _samples(1)[0], images, max_length=512)
    labels, ids = item["labels"], item["input_ids"]
    kept = ids[labels != IGNORE_INDEX].tolist()
    assert processor.tokenizer.decode(kept, skip_special_tokens=True).strip() == "red"
    assert kept[-1] == processor.tokenizer.eos_token_id
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (ids == image_id).sum().item() == (32 // 8) ** 2  # one token per patch, CLS dropped
    with pytest.raises(ValueError, match="max_length"):
        encode_for_training(processor, _samples(1)[0], images, max_length=10)


def test_collate_pads_right_and_masks(tiny_checkpoint, images):
    _, processor = load_checkpoint(tiny_checkpoint)
    items = [encode_for_training(processor, s, images, 512) for s in _samples(2)]
    batch = collate(items, pad_id=processor.tokenizer.pad_token_id)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape[0] == 2
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()


def test_batched_generation_matches_one_at_a_time(tiny_checkpoint, images):
    model, processor = load_checkpoint(tiny_checkpoint)
    samples = _samples(5)
    batched = generate_answers(model, processor, samples, images, batch_size=5, max_new_tokens=6, show_progress=False)
    single = generate_answers(model, processor, samples, images, batch_size=1, max_new_tokens=6, show_progress=False)
    assert batched == single
    assert processor.tokenizer.padding_side == "right"  # restored


def test_lora_targets_language_model_linears_only(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    lm_linears = language_model_linear_names(model)
    assert lm_linears and all("language_model" in n for n in lm_linears)
    cfg = load_config(None, ["method.name=lora", "method.lora_r=4"])
    peft_model = build_method(cfg.method).setup(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    assert all("language_model" in n or "multi_modal_projector" in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable)  # train_projector defaults to on
