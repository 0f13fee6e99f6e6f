"""Multi-turn LLaVA training records (every gpt turn supervised) and samples without an image,
in training and in batched generation, mixed with image samples in one batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_checkpoint
from PIL import Image

import test_model_families as families
from mcit.config import ConfigError
from mcit.data import coin_mini as cm
from mcit.data.coin_format import DataError, read_train_json, write_train_json
from mcit.data.encode import IGNORE_INDEX, collate, encode_for_training, load_image, turn_contexts
from mcit.data.schema import Sample
from mcit.eval.generate import generate_answers, prompt_batch
from mcit.models.load import load_checkpoint

# The chat template llava-hf/llava-1.5-7b-hf ships: answers end with a space, not with eos.
LLAVA15_HUB_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen's layout: the assistant turn closes with <|im_end|> (eos) and a newline.
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Renders only the latest exchange: earlier turns vanish, so no turn boundary can be found.
FORGETFUL_TEMPLATE = (
    "{% for m in messages[-2:] %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)

RED, BLUE = Image.new("RGB", (32, 32), (200, 40, 40)), Image.new("RGB", (48, 24), (40, 40, 200))
TURNS = [["Is it a circle?", "no"], ["Where is it?", "left"]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("turns")
    return {name: build(root / name) for name, build in families.FAMILIES.items()}


def _load(path, template: str | None = None):
    model, processor = load_checkpoint(path)
    if template is not None:
        processor.chat_template = template
    return model.eval(), processor


def _mixed() -> list[Sample]:
    """Image and text-only samples, single- and multi-turn, interleaved."""
    return [
        Sample("img", "t", RED, "What color is the shape?", ("red",)),
        Sample("txt", "t", None, "Say yes.", ("yes",)),
        Sample("img-turns", "t", BLUE, "What color is the shape?", ("blue",), extra={"turns": TURNS}),
        Sample("txt-turns", "t", None, "Is there a shape?", ("yes",), extra={"turns": TURNS[:1]}),
    ]


def _runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of every run of supervised positions."""
    runs, start = [], None
    for i, keep in enumerate((labels != IGNORE_INDEX).tolist() + [False]):
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            runs.append((start, i))
            start = None
    return runs


# --- reading and writing --------------------------------------------------------------------

def _write_records(tmp_path: Path, records: list) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    path = tmp_path / "Task" / "train.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(records), "utf-8")
    return path, images


def _turn(who: str, value: str) -> dict:
    return {"from": who, "value": value}


def test_multi_turn_record_is_read_as_llava_reads_it(tmp_path):
    path, images = _write_records(tmp_path, [{"id": 1, "image": "Task/a.png", "conversations": [
        _turn("gpt", "a leading gpt turn: skipped"),
        _turn("human", "<image>\nQuestion\nInstruction"), _turn("gpt", "A1"),
        _turn("human", "Q2"), _turn("gpt", "A2"),
        _turn("human", "a trailing question: no answer to train, dropped"),
    ]}])
    (s,) = read_train_json(path, "Task", images)
    assert (s.text, s.answers, s.instruction) == ("Question\nInstruction", ("A1",), "Instruction")
    assert s.extra == {"turns": [["Q2", "A2"]]}
    assert s.conversation == (("Question\nInstruction", "A1"), ("Q2", "A2"))


def test_single_turn_record_has_no_turns():
    s = Sample("a", "t", None, "Q", ("A",))
    assert s.extra == {} and s.conversation == (("Q", "A"),)


@pytest.mark.parametrize("conversation, field, words", [
    ([_turn("human", "<image>\nQ"), _turn("human", "Q again"), _turn("gpt", "A")],
     "conversations[1].from", "a human turn where a gpt turn"),
    ([_turn("gpt", "x"), _turn("gpt", "y"), _turn("human", "<image>\nQ"), _turn("gpt", "A")],
     "conversations[1].from", "a gpt turn where a human turn"),
    ([_turn("human", "<image>\nQ"), _turn("gpt", "A"), _turn("gpt", "B")], "conversations[2].from", "gpt turn"),
    ([_turn("system", "be nice"), _turn("human", "Q"), _turn("gpt", "A")], "conversations[0].from", "'system'"),
    ([_turn("human", "<image>\nQ"), _turn("gpt", "A"), _turn("human", "<image>\nQ2"), _turn("gpt", "B")],
     "conversations[2].value", "only appear in the first human turn"),
    ([_turn("human", "<image>\nQ"), _turn("gpt", "see <image>")], "conversations[1].value", "first human turn"),
    ([_turn("human", "<image>\nQ <image>"), _turn("gpt", "A")], "conversations[0].value", "more than one"),
    ([_turn("gpt", "only an answer")], "conversations", "no human turn"),
    ([_turn("gpt", "x"), _turn("human", "Q")], "conversations", "no gpt turn"),
])
def test_malformed_turn_sequences_are_data_errors(tmp_path, conversation, field, words):
    path, images = _write_records(tmp_path, [{"id": "r1", "image": "Task/a.png", "conversations": conversation}])
    with pytest.raises(DataError) as info:
        read_train_json(path, "Task", images)
    err = info.value
    assert (err.file, err.index, err.record, err.field) == ("Task/train.json", 0, "r1", field)
    assert str(err).startswith(f"Task/train.json, record 0 (id 'r1'), field '{field}': ") and words in str(err)


def test_writer_round_trips_multi_turn_records(tmp_path):
    samples = [
        Sample("m", "Task", "Task/a.png", "Q1\nInstruction", ("A1",), extra={"turns": TURNS}),
        Sample("t", "Task", None, "Text only\nInstruction", ("A",), extra={"turns": TURNS[:1]}),
        Sample("s", "Task", "Task/b.png", "Single\nInstruction", ("A",)),
    ]
    images = tmp_path / "images"
    path = write_train_json(tmp_path / "Task" / "train.json", samples)
    raw = json.loads(path.read_text())
    assert raw[0]["conversations"] == [
        _turn("human", "<image>\nQ1\nInstruction"), _turn("gpt", "A1"),
        _turn("human", "Is it a circle?"), _turn("gpt", "no"), _turn("human", "Where is it?"), _turn("gpt", "left"),
    ]
    assert "image" not in raw[1] and raw[1]["conversations"][0] == _turn("human", "Text only\nInstruction")
    back = read_train_json(path, "Task", images)
    assert back == samples and [s.extra for s in back] == [s.extra for s in samples]
    again = write_train_json(tmp_path / "again.json", back)
    assert again.read_text() == path.read_text()


def test_later_turns_survive_replays_saved_buffer():
    from mcit.methods.replay import sample_from_dict, sample_to_dict

    s = Sample("m", "Task", "Task/a.png", "Q1", ("A1",), extra={"turns": TURNS})
    back = sample_from_dict(json.loads(json.dumps(sample_to_dict(s))))
    assert back == s and back.conversation == s.conversation


# --- encoding for training ------------------------------------------------------------------

def _encode_as_before(processor, sample, image_root, max_length):
    """encode_for_training as it was before multi-turn support (commit 9326ef7), verbatim in
    behaviour: the reference the single-turn path must still match token for token."""
    image = load_image(image_root, sample.image)
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": sample.text}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=False)
    enc = processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
    prompt_ids = enc.pop("input_ids")[0]
    enc.pop("attention_mask", None)
    tok = processor.tokenizer
    target = tok(sample.answer.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = prompt_ids.tolist() + target
    assert len(ids) <= max_length
    item = {"input_ids": torch.tensor(ids), "labels": torch.tensor([IGNORE_INDEX] * len(prompt_ids) + target)}
    for key, value in enc.items():
        if value.shape == (1, len(prompt_ids)):
            item[key] = torch.cat([value[0], value.new_zeros(len(target))])
        else:
            item[key] = value
    return item


@pytest.fixture(scope="module")
def coin_mini(tmp_path_factory):
    return cm.generate(tmp_path_factory.mktemp("cm") / "coin-mini", seed=0, train_per_task=2, test_per_task=0,
                       pretrain_size=2, image_size=32, progress=False)


@pytest.mark.parametrize("family", ["builtin", *families.FAMILIES])
def test_single_turn_encoding_is_unchanged_on_coin_mini(family, coin_mini, checkpoints, tmp_path):
    samples = cm.load_pretrain(coin_mini) + [s for t in cm.TASKS for s in cm.load(coin_mini, t, "train")]
    if family == "builtin":  # the default run's model: the built-in tokenizer trained on coin-mini's text
        path = save_tiny_checkpoint(tmp_path / "ckpt", texts=[s.text + " " + s.answer for s in samples])
    else:
        path = checkpoints[family]
    _, processor = _load(path)
    root = cm.image_root(coin_mini)
    text_only = Sample("no-image", "t", None, samples[3].text, samples[3].answers)
    for s in samples + [text_only]:
        new, old = encode_for_training(processor, s, root, 2048), _encode_as_before(processor, s, root, 2048)
        assert new.keys() == old.keys(), s.id
        for key in old:
            assert new[key].dtype == old[key].dtype and torch.equal(new[key], old[key]), (s.id, key)


def test_multi_turn_labels_by_hand(checkpoints):
    """Built-in template: USER: <image>\\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT: A2</s>..."""
    _, processor = _load(checkpoints["llava"])
    tok = processor.tokenizer
    sample = _mixed()[2]
    item = encode_for_training(processor, sample, None, 512)
    ids, labels = item["input_ids"], item["labels"]
    single = encode_for_training(processor, Sample("1", "t", BLUE, sample.text, sample.answers), None, 512)
    answers = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in ("blue", "no", "left")]
    contexts = [tok(c, add_special_tokens=False)["input_ids"]
                for c in ("USER: Is it a circle? ASSISTANT:", "USER: Where is it? ASSISTANT:")]
    first = len(single["input_ids"]) - len(answers[0])  # the single-turn prompt, image tokens included
    ends = [first + len(answers[0])]
    ends.append(ends[0] + len(contexts[0]) + len(answers[1]))
    ends.append(ends[1] + len(contexts[1]) + len(answers[2]))
    assert _runs(labels) == [(end - len(a), end) for end, a in zip(ends, answers)]
    assert len(ids) == ends[-1]
    assert torch.equal(ids[:ends[0]], single["input_ids"])  # turn 1 exactly as a single-turn record
    for (start, end), answer in zip(_runs(labels), answers):
        assert ids[start:end].tolist() == labels[start:end].tolist() == answer
    assert ids[ends[0]:ends[1] - len(answers[1])].tolist() == contexts[0]
    assert ids[ends[1]:ends[2] - len(answers[2])].tolist() == contexts[1]


def test_turn_contexts_follow_the_template(checkpoints):
    conversation = (("Q1", "A1"), ("Q2", "A2"))
    _, hub = _load(checkpoints["llava"], LLAVA15_HUB_TEMPLATE)  # answer closed by a space, eos only in labels
    assert turn_contexts(hub, conversation, True) == ["USER: <image>\nQ1 ASSISTANT:", " USER: Q2 ASSISTANT:"]
    _, qwen = _load(checkpoints["qwen2_vl"], QWEN_TEMPLATE)  # <|im_end|> is eos: only its newline is context
    assert turn_contexts(qwen, conversation, False) == [
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n",
        "\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
    ]
    item = encode_for_training(qwen, Sample("q", "t", RED, "Q1", ("A1",), extra={"turns": [["Q2", "A2"]]}), None, 512)
    tok = qwen.tokenizer
    kept = [tok.decode(item["input_ids"][a:b]) for a, b in _runs(item["labels"])]
    assert [k.replace(" ", "") for k in kept] == ["A1<|im_end|>", "A2<|im_end|>"]
    assert item["mm_token_type_ids"].shape == item["input_ids"].shape  # image-token flags cover the whole sequence


def test_a_template_that_drops_earlier_turns_is_a_clear_error(checkpoints):
    _, processor = _load(checkpoints["llava"], FORGETFUL_TEMPLATE)
    sample = Sample("rec-7", "GQA", None, "Q1", ("A1",), extra={"turns": [["Q2", "A2"]]})
    with pytest.raises(ConfigError, match=r"task GQA, record rec-7: the chat template does not extend"):
        encode_for_training(processor, sample, None, 512)
    encode_for_training(processor, Sample("rec-8", "GQA", None, "Q1", ("A1",)), None, 512)  # one turn is fine


# --- a mixed batch: training and generation -------------------------------------------------

@pytest.mark.parametrize("family", families.FAMILIES)
def test_training_step_on_a_mixed_batch(family, checkpoints):
    """Image and text-only samples, single- and multi-turn, in one padded batch: each row's
    logits equal the sample's own, and a few optimizer steps lower the loss."""
    torch.manual_seed(0)
    model, processor = _load(checkpoints[family])
    pad = processor.tokenizer.pad_token_id
    items = [encode_for_training(processor, s, None, 512) for s in _mixed()]
    batch = collate(items, pad)
    with torch.no_grad():
        logits = model(**batch).logits
        for k, item in enumerate(items):
            alone = model(**collate([item], pad)).logits[0]
            assert torch.allclose(logits[k, :len(alone)], alone, atol=1e-5), k
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("family", families.FAMILIES)
def test_mixed_batch_generation_equals_one_at_a_time(family, checkpoints):
    model, processor = _load(checkpoints[family])
    samples = [Sample(s.id, s.task, s.image, s.text, s.answers) for s in _mixed()] + [
        Sample("txt2", "t", None, "Is there a circle? yes no left right", ("no",))]
    kwargs = dict(max_new_tokens=4, show_progress=False)
    batched = generate_answers(model, processor, samples, None, batch_size=len(samples), **kwargs)
    alone = [generate_answers(model, processor, [s], None, batch_size=1, **kwargs)[0] for s in samples]
    assert batched == alone
    # Random weights make near-constant answers: the first step's logits are the sharper check.
    processor.tokenizer.padding_side = "left"
    with torch.no_grad():
        last = model(**prompt_batch(processor, samples, None)).logits[:, -1]
        for k, s in enumerate(samples):
            own = model(**prompt_batch(processor, [s], None)).logits[0, -1]
            assert torch.allclose(last[k], own, atol=1e-5), (family, s.id)
