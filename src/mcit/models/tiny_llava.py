"""The small built-in model: a real `LlavaForConditionalGeneration` built from a config.

CLIP-style ViT -> 2-layer MLP projector -> Llama-style LM, with a byte-level BPE tokenizer
trained locally and wrapped in a `LlavaProcessor`, so it saves and loads with
`save_pretrained` / `from_pretrained` exactly like a downloaded LLaVA checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

try:  # transformers >= 5 names the Pillow/numpy backend explicitly (no torchvision needed)
    from transformers.models.clip import CLIPImageProcessorPil as _ImageProcessor
except ImportError:  # transformers 4.x: the default CLIPImageProcessor is already Pillow/numpy
    from transformers import CLIPImageProcessor as _ImageProcessor

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ...</s>"), as a Jinja
# chat template so the generic processor path applies it like any real checkpoint's.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the benchmark's own text: any string stays encodable."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    image_processor = _ImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # drop CLS, keep one token per patch
        num_additional_image_tokens=1,  # the CLS token the ViT adds
        chat_template=CHAT_TEMPLATE,
    )


def build_model(mc, processor: LlavaProcessor, image_size: int) -> LlavaForConditionalGeneration:
    """`mc` is a ModelConfig (hidden sizes, layers, heads)."""
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=mc.vision_hidden_size,
        intermediate_size=4 * mc.vision_hidden_size,
        num_hidden_layers=mc.vision_layers,
        num_attention_heads=mc.num_heads,
        image_size=image_size,
        patch_size=mc.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=mc.hidden_size,
        intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.num_layers,
        num_attention_heads=mc.num_heads,
        num_key_value_heads=mc.num_heads,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // mc.patch_size) ** 2,
        # LLaVA-1.5 reads CLIP's second-to-last layer (the last one is shaped by CLIP's contrastive
        # loss); this encoder is pretrained on exactly the layer the projector reads, so it reads
        # its last layer and computes no idle one.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model
