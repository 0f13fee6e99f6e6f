"""The EMT encoder baseline: pooled vision-tower features on a tiny random LLaVA, the linear
probe on separable and on random data, and zero-shot only where a text tower exists."""
import types

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from PIL import Image

from mcit.emt.probe import (
    encoder_features,
    linear_probe,
    vision_tower_of,
    zero_shot_accuracy,
    zero_shot_available,
)
from mcit.models.load import load_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("emt_ckpt"), vision_layers=2)
    return load_checkpoint(path)


def _images(n, size=(40, 30)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_pooled_features_shape_and_batching(tiny):
    model, processor = tiny
    images = _images(5)
    feats = encoder_features(model, processor, images, batch_size=2)
    assert feats.shape == (5, model.config.vision_config.hidden_size) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert np.allclose(feats, encoder_features(model, processor, images, batch_size=5), atol=1e-5)
    assert not np.allclose(feats[0], feats[1])
    assert encoder_features(model, processor, [], batch_size=4).shape == (0, model.config.vision_config.hidden_size)


def test_features_are_the_mean_of_patch_tokens_of_the_llm_layer(tiny):
    model, processor = tiny
    images = _images(3)
    tower = vision_tower_of(model)
    assert tower is model.model.vision_tower
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    layer = model.config.vision_feature_layer  # -2, what the projector reads
    expected = hidden[layer][:, 1:].mean(dim=1).numpy()  # CLS dropped
    assert hidden[layer].shape[1] == (32 // 8) ** 2 + 1
    assert np.allclose(encoder_features(model, processor, images), expected, atol=1e-5)
    last = encoder_features(model, processor, images, layer=-1)
    assert np.allclose(last, hidden[-1][:, 1:].mean(dim=1).numpy(), atol=1e-5)
    both = encoder_features(model, processor, images, layer=[-2, -1])
    assert both.shape == (3, 2 * expected.shape[1])


def test_feature_extraction_leaves_model_state_alone(tiny):
    model, processor = tiny
    model.train()
    try:
        encoder_features(model, processor, _images(2))
        assert model.model.vision_tower.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_vision_tower_is_found_under_wrappers(tiny):
    model, _ = tiny
    wrapper = torch.nn.Module()
    wrapper.base_model = torch.nn.Module()
    wrapper.base_model.model = model
    assert vision_tower_of(wrapper) is model.model.vision_tower
    with pytest.raises(ValueError, match="no vision tower"):
        vision_tower_of(torch.nn.Linear(2, 2))


def test_linear_probe_on_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, size=(5, 16))
    y_train, y_test = np.arange(200) % 5, np.arange(100) % 5
    x_train = centers[y_train] + rng.normal(0, 0.5, size=(200, 16))
    x_test = centers[y_test] + rng.normal(0, 0.5, size=(100, 16))
    result = linear_probe(x_train, y_train, x_test, y_test, seed=0)
    assert result.accuracy >= 99.0 and result.train_accuracy == 100.0
    assert (result.n_train, result.n_test, result.n_classes) == (200, 100, 5)
    assert result.chance == 20.0 and result.majority == 20.0
    assert result.converged and result.predictions.shape == (100,)
    again = linear_probe(x_train, y_train, x_test, y_test, seed=0)
    assert np.array_equal(result.predictions, again.predictions)


def test_linear_probe_on_random_labels_is_at_chance():
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(size=(400, 20)), rng.normal(size=(2000, 20))
    y_train, y_test = rng.integers(0, 4, size=400), rng.integers(0, 4, size=2000)
    result = linear_probe(x_train, y_train, x_test, y_test, seed=0)
    assert abs(result.accuracy - 25.0) < 4.0
    assert result.train_accuracy > result.accuracy + 10  # it fits noise, which does not transfer


def test_linear_probe_input_errors():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        linear_probe(x, [1, 1, 1, 1], x, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        linear_probe(np.zeros(4), [0, 1, 0, 1], x, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels of shape"):
        linear_probe(x, [0, 1], x, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="dims"):
        linear_probe(x, [0, 1, 0, 1], np.zeros((4, 2)), [0, 1, 0, 1])


def test_tiny_llava_features_feed_the_probe(tiny):
    """End to end on the tiny model: features of two very different image kinds are separable."""
    model, processor = tiny
    red = [Image.new("RGB", (32, 32), (200 + i, 10, 10)) for i in range(10)]
    blue = [Image.new("RGB", (32, 32), (10, 10, 200 + i)) for i in range(10)]
    feats = encoder_features(model, processor, red + blue, batch_size=8)
    labels = np.array([0] * 10 + [1] * 10)
    idx_train, idx_test = np.arange(20) % 2 == 0, np.arange(20) % 2 == 1
    result = linear_probe(feats[idx_train], labels[idx_train], feats[idx_test], labels[idx_test])
    assert result.accuracy == 100.0


def test_zero_shot_is_not_available_without_a_text_tower(tiny):
    model, processor = tiny
    assert not zero_shot_available(model) and not zero_shot_available(vision_tower_of(model))
    images = _images(2)
    assert zero_shot_accuracy(vision_tower_of(model), processor, images, [0, 1], ["a", "b"]) is None
    assert zero_shot_accuracy(model, processor, images, [0, 1], ["a", "b"]) is None


class _ColourClip(torch.nn.Module):
    """A stand-in two-tower encoder: an image embeds as its mean RGB, a prompt as the colour
    its class name says. Checks the matching logic, not a model."""

    COLOURS = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 1.0]}

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.names = list(self.COLOURS)

    def get_text_features(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(pooler_output=torch.tensor([self.COLOURS[self.names[i]] for i in input_ids[:, 0]]))

    def get_image_features(self, pixel_values):
        return pixel_values.mean(dim=(2, 3))


def test_zero_shot_matches_class_prompts():
    enc = _ColourClip()
    tokenizer = lambda texts, **kw: {"input_ids": torch.tensor([[enc.names.index(t.split()[-1].rstrip("."))]
                                                                for t in texts])}
    image_processor = lambda images, return_tensors: {"pixel_values": torch.stack(
        [torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255 for im in images])}
    processor = types.SimpleNamespace(tokenizer=tokenizer, image_processor=image_processor)
    images = [Image.new("RGB", (4, 4), c) for c in [(250, 0, 0), (0, 0, 250), (0, 240, 10), (200, 5, 5)]]
    assert zero_shot_available(enc)
    acc = zero_shot_accuracy(enc, processor, images, [0, 2, 1, 0], ["red", "green", "blue"], batch_size=3)
    assert acc == 100.0
    assert zero_shot_accuracy(enc, processor, images, [0, 0, 0, 0], ["red", "green", "blue"]) == 50.0


def test_zero_shot_runs_on_a_tiny_clip_model():
    from transformers import CLIPConfig, CLIPModel

    from mcit.models.tiny_llava import train_tokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    clip = CLIPModel(cfg)
    tok = train_tokenizer(["a photo of a cat dog bird"] * 10, 300)
    from mcit.models.tiny_llava import _ImageProcessor

    ip = _ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = types.SimpleNamespace(tokenizer=tok, image_processor=ip)
    assert zero_shot_available(clip)
    acc = zero_shot_accuracy(clip, processor, _images(4), [0, 1, 2, 0], ["cat", "dog", "bird"])
    assert acc is not None and 0.0 <= acc <= 100.0
    # its vision half alone has no text tower
    assert zero_shot_accuracy(clip.vision_model, processor, _images(2), [0, 1], ["cat", "dog"]) is None
