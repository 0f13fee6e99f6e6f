"""The tiny model's vision-encoder stage: which pretrain answers become classes, and that it
actually trains the vision tower (and nothing else)."""
import torch
from PIL import Image

from mcit.config import ModelConfig
from mcit.data.schema import Sample
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer
from mcit.models.vision_pretrain import pretrain_vision


def test_short_frequent_answers_become_classes_and_only_the_vision_tower_moves(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
    samples = (
        [Sample(str(i), "pretrain", "0.png", "What is written?", ("red",)) for i in range(3)]
        + [Sample(str(i + 3), "pretrain", "1.png", "What is written?", ("blue",)) for i in range(3)]
        + [Sample("rare", "pretrain", "1.png", "Describe.", ("green",))]  # only once: not a class
        + [Sample(f"c{i}", "pretrain", "0.png", "Describe.", ("A long caption of a red square image",))
           for i in range(3)]  # too long: captions are not classes
    )
    processor = build_processor(train_tokenizer(["red blue green what is written"] * 5, 300), 32, 8)
    torch.manual_seed(0)
    mc = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     vision_hidden_size=32, vision_layers=2)
    model = build_model(mc, processor, 32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = pretrain_vision(model, processor, samples, tmp_path, steps=30, batch_size=4, lr=1e-2, seed=0,
                            show_progress=False)
    assert stats["classes"] == 2 and stats["images"] == 6
    assert stats["loss_last"] < stats["loss_first"]  # two separable colours: it learns
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("vision_tower" in n for n in moved)


def test_no_classes_means_no_training(tmp_path):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "0.png")
    samples = [Sample("a", "pretrain", "0.png", "Describe.", ("only once",))]
    processor = build_processor(train_tokenizer(["only once describe"] * 5, 300), 32, 8)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                    vision_hidden_size=32, vision_layers=1), processor, 32)
    assert pretrain_vision(model, processor, samples, tmp_path, steps=5, batch_size=2, lr=1e-3, seed=0,
                           show_progress=False)["steps"] == 0
