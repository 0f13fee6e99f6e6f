"""The built-in model's base stage: its cache key follows every setting that shapes the base
model (and nothing else), and the vision-encoder stage learns and is reproducible from its seed."""
import pytest
import torch

from mcit.config import load_config
from mcit.data import coin_mini
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer
from mcit.recipes.base_model import base_stage_key
from mcit.recipes.vision_encoder import pretrain_vision

TINY = ["data.image_size=32", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "model.intermediate_size=64", "model.vision_hidden_size=32", "model.vision_layers=1", "model.vocab_size=300"]


def _key(*overrides: str) -> str:
    cfg = load_config(None, list(overrides))
    return base_stage_key(cfg.model, cfg.data, cfg.data_seed)


@pytest.mark.parametrize("setting", [
    "model.vision_steps=7", "model.vision_images=7", "model.vision_batch_size=7", "model.base_steps=7",
    "model.base_lr=0.01", "model.base_batch_size=7", "model.hidden_size=64", "data.pretrain_size=7",
    "data.image_size=32", "data.train_per_task=7", "data.seed=5",
])
def test_every_setting_that_shapes_the_base_model_changes_its_cache_key(setting):
    assert _key(setting) != _key()


@pytest.mark.parametrize("setting", [
    "model.dtype=bfloat16", "train.lr=0.01", "train.steps_per_task=7", "method.name=full", "data.test_per_task=7",
])
def test_settings_the_base_stage_does_not_use_keep_its_cache_key(setting):
    assert _key(setting) == _key()


def _tiny_model(seed: int = 0):
    cfg = load_config(None, TINY)
    tokenizer = train_tokenizer(["a photo of a red circle", "what colour is the square?"], cfg.model.vocab_size)
    processor = build_processor(tokenizer, cfg.data.image_size, cfg.model.patch_size)
    torch.manual_seed(seed)
    return build_model(cfg.model, processor, cfg.data.image_size), processor


def _vision_stage(steps: int):
    model, processor = _tiny_model()
    items = coin_mini.vision_items(seed=0, n=32, image_size=32)
    # a fixed thread count, as the base stage uses: this stage's last bits change with the count
    stats = pretrain_vision(model, processor.image_processor, items, steps=steps, batch_size=8, lr=2e-3,
                            seed=0, show_progress=False, threads=1)
    return stats, model.model.vision_tower.state_dict()


def test_vision_stage_lowers_its_loss_and_is_reproducible_from_the_seed():
    stats, weights = _vision_stage(steps=40)
    assert stats["steps"] == 40 and stats["images"] == 32
    assert stats["loss_last"] < 0.8 * stats["loss_first"]
    again, weights_again = _vision_stage(steps=40)
    assert again == stats
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_vision_stage_with_no_steps_keeps_the_random_tower():
    stats, weights = _vision_stage(steps=0)
    assert stats == {"steps": 0, "images": 32}
    untouched = _tiny_model()[0].model.vision_tower.state_dict()
    assert all(torch.equal(weights[k], untouched[k]) for k in weights)
