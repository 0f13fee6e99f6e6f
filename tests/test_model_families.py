"""Real model families through the real-checkpoint path (`model.name=<folder>`): LLaVA-1.5,
LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL and Idefics3, each built tiny with random weights from its
own config, tokenizer, Pillow image processor and processor class, saved with save_pretrained
(or as the hub lays the files out), then run through `mcit run` like a downloaded checkpoint."""
import importlib.util
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from conftest import save_tiny_checkpoint
from test_end_to_end import SMALL

from mcit.cli import main
from mcit.config import ConfigError
from mcit.data.encode import collate, encode_for_training
from mcit.data.schema import Sample
from mcit.eval.generate import generate_answers
from mcit.models.adapters import language_model_linear_names, projector_modules, set_trainable
from mcit.models.load import load_checkpoint
from mcit.models.tiny_llava import train_tokenizer

TEXTS = ["What is the object in the image? What color is the shape? Answer the question using a single word "
         "or phrase. Is there a red circle, a blue square or a green triangle? yes no left right top bottom"]


# One user turn with its content parts, then the generation prompt: each family's layout.
def _template(user_open: str, image: str, user_close: str, assistant_open: str) -> str:
    return ("{% for m in messages %}{% if m['role'] == 'user' %}" + user_open
            + "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image
            + "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}" + user_close
            + "{% else %}" + assistant_open + "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}"
            + "{% endif %}{% endfor %}{% if add_generation_prompt %}" + assistant_open + "{% endif %}")


def _tokenizer(specials: list[str], eos: str = "</s>") -> PreTrainedTokenizerFast:
    """The built-in byte-level BPE plus the family's own special tokens (no `image_token`
    attribute, as on the hub: each processor finds its image token by its own rule)."""
    bpe = train_tokenizer(TEXTS * 10, 400).backend_tokenizer
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token = eos  # the family's end-of-turn: the answer's last token, where generation stops
    return tok


def _text(tok, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, **extra)


def _save(model, tok, path, processor=None, image_processor=None, processor_class=None, template=None):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    else:  # the hub's Qwen-VL layout: a processor we cannot build here (its video part needs torchvision)
        tok.save_pretrained(path)
        image_processor.save_pretrained(path)
        (path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
        if processor_class:  # else AutoProcessor goes by the model type
            config = json.loads((path / "preprocessor_config.json").read_text())
            (path / "preprocessor_config.json").write_text(json.dumps(config | {"processor_class": processor_class}))
    return path


def llava(path):
    return save_tiny_checkpoint(path, texts=TEXTS)


def llava_next(path):
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    tok = _tokenizer(["<image>"])
    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]  # any-resolution: 16-pixel crops plus a base view
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8)
    config = LlavaNextConfig(vision_config=vision, text_config={"model_type": "llama", **_text(tok)},
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
                             vision_feature_layer=-1, vision_feature_select_strategy="default")
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                 image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3,
                                                 image_std=[0.5] * 3)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=_template("[INST] ", "<image>\n", " [/INST]", ""))
    return _save(LlavaNextForConditionalGeneration(config), tok, path, processor=processor)


def _qwen(path, v2_5: bool):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                      "<|video_pad|>"], eos="<|im_end|>")
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    # M-RoPE: the temporal/height/width sections add up to half the head dim (32 / 2 heads / 2).
    text = _text(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
    if v2_5:
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, out_hidden_size=32,
                      window_size=32, fullatt_block_indexes=[0])
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
    else:
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=8)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
    # 8-pixel patches merged 2x2: a 32x32 image is 16 patches, 4 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=8, merge_size=2,
                                               temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    template = _template("<|im_start|>user\n", "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n",
                         "<|im_start|>assistant\n")
    return _save(model, tok, path, image_processor=image_processor, template=template,
                 processor_class=None if v2_5 else "Qwen2VLProcessor")


def qwen2_vl(path):
    return _qwen(path, v2_5=False)


def qwen2_5_vl(path):
    return _qwen(path, v2_5=True)


def _idefics_tokenizer_and_config(config_class):
    """(tokenizer, config): Idefics3 and SmolVLM are one architecture, so one tiny shape and token set serve both."""
    tok = _tokenizer(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
                     eos="<end_of_utterance>")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    return tok, config_class(vision_config=vision, text_config={"model_type": "llama", **_text(tok)},
                             image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)


def idefics3(path):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    tok, config = _idefics_tokenizer_and_config(Idefics3Config)
    # Images split into 16-pixel tiles plus a global view; each tile is (16/8)^2 / 2^2 = 1 token.
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=1,
                                  chat_template=_template("User:", "<image>", "<end_of_utterance>\n", "Assistant:"))
    return _save(Idefics3ForConditionalGeneration(config), tok, path, processor=processor)


FAMILIES = {"llava": llava, "llava_next": llava_next, "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl,
            "idefics3": idefics3}

# What each family's projector is, written out by hand (not derived from adapters.PROJECTORS).
PROJECTOR = {
    "llava": ["model.multi_modal_projector."],
    "llava_next": ["model.multi_modal_projector.", "model.image_newline"],
    "qwen2_vl": ["model.visual.merger."],
    "qwen2_5_vl": ["model.visual.merger."],
    "idefics3": ["model.connector."],
}
LM = {"llava": "model.language_model.", "llava_next": "model.language_model.", "qwen2_vl": "model.language_model.",
      "qwen2_5_vl": "model.language_model.", "idefics3": "model.text_model."}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(root / name) for name, build in FAMILIES.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One coin-mini cache for the whole file: the data is generated once."""
    root = tmp_path_factory.mktemp("family-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(root / "cache"))
        yield root


def _samples():
    """Two images of different sizes: different crop counts (LLaVA-NeXT, Idefics3) and patch grids (Qwen)."""
    images = [Image.new("RGB", (32, 32), (200, 40, 40)), Image.new("RGB", (48, 24), (40, 40, 200))]
    qa = [("What color is the shape?", "red"), ("Is there a circle?", "no")]
    return [Sample(id=str(i), task="t", image=im, text=q, answers=(a,))
            for i, (im, (q, a)) in enumerate(zip(images, qa))]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_a_two_task_stream(family, checkpoints, cache):
    ckpt = checkpoints[family]
    name = f"{family}-lora"
    code = main(["run", *SMALL, f"output_dir={cache / 'runs'}", f"name={name}", f"model.name={ckpt}",
                 "eval.zero_shot=false", "method.name=lora", "method.train_projector=false", "train.max_length=512"])
    assert code == 0
    run = cache / "runs" / name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"MFT", "BWT"} <= set(metrics)

    model, _ = load_checkpoint(ckpt)
    lm_linears = set(language_model_linear_names(model))
    assert lm_linears and all(n.startswith(LM[family]) for n in lm_linears)
    for stage in ["01-ImageNet", "02-VQAv2"]:
        keys = load_file(str(run / "stages" / stage / "model" / "adapter_model.safetensors"))
        adapted = {k.removeprefix("base_model.model.").split(".lora_")[0] for k in keys}
        assert all(".lora_A." in k or ".lora_B." in k for k in keys)  # nothing saved in full
        assert adapted == lm_linears  # every LM linear, and nothing in the vision tower or projector

    for stage, tasks in [("01-ImageNet", ["ImageNet"]), ("02-VQAv2", ["ImageNet", "VQAv2"])]:
        for task in tasks:
            records = [json.loads(line) for line in (run / "stages" / stage / "predictions" / f"{task}.jsonl")
                       .read_text().splitlines()]
            assert len(records) == 6 and all(isinstance(r["raw"], str) for r in records)


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_model_and_generation(family, checkpoints):
    """Encode, batch and generate directly: a padded batch of differently sized images (and a
    text-only sample) gives each sample the same logits as on its own, and generate returns strings."""
    model, processor = load_checkpoint(checkpoints[family])
    assert type(processor.image_processor).__name__.endswith("Pil")  # the Pillow/numpy backend, no torchvision
    model.eval()
    pad = processor.tokenizer.pad_token_id
    samples = _samples() + [Sample(id="2", task="t", image=None, text="Say yes.", answers=("yes",))]
    items = [encode_for_training(processor, s, None, 512) for s in samples]
    with torch.no_grad():
        batched = model(**collate(items, pad)).logits
        for k, item in enumerate(items):
            alone = model(**collate([item], pad)).logits[0]
            assert torch.allclose(batched[k, :len(alone)], alone, atol=1e-5), k
    answers = generate_answers(model, processor, _samples(), None, batch_size=2, max_new_tokens=3, show_progress=False)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    one_by_one = [generate_answers(model, processor, [s], None, batch_size=1, max_new_tokens=3, show_progress=False)[0]
                  for s in _samples()]
    assert answers == one_by_one  # left padding does not change greedy answers


@pytest.mark.parametrize("family", FAMILIES)
def test_projector_and_vision_tower_per_family(family, checkpoints):
    model, _ = load_checkpoint(checkpoints[family])
    expected = PROJECTOR[family]

    set_trainable(model, language_model=False, projector=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(any(n.startswith(e) for e in expected) for n in trainable)
    assert all(any(n.startswith(e) for n in trainable) for e in expected)

    set_trainable(model, language_model=True, projector=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(LM[family]) or n.startswith("lm_head") for n in trainable)

    modules = projector_modules(model)
    assert modules == [e.rstrip(".") for e in expected if e.endswith(".")]


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3"])
def test_lora_trains_the_projector_in_full_when_asked(family, checkpoints, cache):
    name = f"{family}-projector"
    assert main(["run", *SMALL, f"output_dir={cache / 'runs'}", f"name={name}", f"model.name={checkpoints[family]}",
                 "eval.zero_shot=false", "data.tasks=[VQAv2]", "method.train_projector=true",
                 "train.max_length=512"]) == 0
    keys = load_file(str(cache / "runs" / name / "stages" / "01-VQAv2" / "model" / "adapter_model.safetensors"))
    full = [k.removeprefix("base_model.model.") for k in keys if ".lora_" not in k]
    modules = [e for e in PROJECTOR[family] if e.endswith(".")]  # image_newline is a bare parameter
    assert full and all(any(k.startswith(m) for m in modules) for k in full)
    assert all(any(k.startswith(m) for k in full) for m in modules)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_smolvlm_without_torchvision_is_a_clean_error(tmp_path):
    """SmolVLM's processor reads its video processor's settings even for a text prompt, and that
    video processor needs torchvision: refused with the reason, not half loaded."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm import SmolVLMImageProcessorPil

    tok, config = _idefics_tokenizer_and_config(SmolVLMConfig)
    path = _save(SmolVLMForConditionalGeneration(config), tok, tmp_path / "smolvlm",
                 image_processor=SmolVLMImageProcessorPil(), processor_class="SmolVLMProcessor",
                 template=_template("User:", "<image>", "<end_of_utterance>\n", "Assistant:"))
    with pytest.raises(ConfigError, match="(?i)torchvision"):
        load_checkpoint(path)
