"""coin-mini's three instruction sets: Original is byte-stable, Diverse and 10Type only swap
the instruction line of the same records."""
from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pytest

from mcit.data import coin_mini as cm

PARAMS = dict(seed=3, train_per_task=6, test_per_task=3, pretrain_size=4, image_size=48, progress=False)

# sha256 of Original/<Task>/<split>.json for PARAMS, computed with the generator as it was
# before the Diverse/10Type sets were added: adding sets must never change Original. Changes of
# the data itself bump coin_mini.VERSION and these digests (v4: ScienceQA's option order).
ORIGINAL_SHA256 = {
    "GQA/test.json": "03577a37c9b65a470fa43c33511e3819aca4f8628b7f356207c87baf2b09a344",
    "GQA/train.json": "983af11b418028fabd141c94a1456e7632b4d165d36796bc5f37afde9dda70d7",
    "Grounding/test.json": "9ace0f26b0a4ed6622fe50b5a972fa60e82c8141a69c2e1d181b2f5a49f30576",
    "Grounding/train.json": "e65e75e159d6f279036745e8ad9a820890c1be783c6d7d41f47f519a612ba87d",
    "ImageNet/test.json": "b5720df8b41c7cd1d7829bf619181b1678985202859fb83d17bae4469fb8657d",
    "ImageNet/train.json": "d47583173113793f2c0a2155e25e22acdb59f46bd5e563659f2d5ce16b185626",
    "OCRVQA/test.json": "f74c13793b0906ffbe36a14f12a33ffff5b4ddf2399c3223924124e2bcc5c859",
    "OCRVQA/train.json": "296a8176afc8ec69ecf6ff4d0f04d7814951c877d4f1cbf5c66778ffb7a9e22b",
    "ScienceQA/test.json": "f964570ae21dad2260b1b4f19cf089e34c0929f7bf981a544367703af79fba05",
    "ScienceQA/train.json": "2bc3cc088ab6c7f37063848503e9d0f4017a8a06f1e37406289a744c95deae78",
    "TextVQA/test.json": "a2d1c7265f77ff0a014610be3f5b8ce237cdf58cf30477f4f9f2347dcd145ef9",
    "TextVQA/train.json": "5c69fd0b6056312c1458a8ed164e0c554aa0b2d295806ca2fbe02a24a81de48b",
    "VQAv2/test.json": "fb85f23d07b0d1f4e9773b353e7a49cb22d280c368b59c4892bf27ddbade8874",
    "VQAv2/train.json": "84fdb1761b5615f075fd21902efa9da7effed013b45796825422a8f3ff94e14a",
    "VizWiz/test.json": "7c97f742b49662eafa4712fdf897007c4ba3f7266341cf65f7083783b9615519",
    "VizWiz/train.json": "051128066bc2ea6a46d49279d1de204a3a58af61ba1212768045c60ef184d2e6",
}
# digest over (path, sha256) of every image, and of pretrain.json, for PARAMS (same origin)
IMAGES_SHA256 = "013041b03a171387a05092a2c402bcb8d8b280112c3576ad2085ab1a38a3d614"
PRETRAIN_SHA256 = "a06dc6d7f3bc6c515f583b2abbffdd47d9dbab7cb30dc0e6a2e68407c240024b"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return cm.generate(tmp_path_factory.mktemp("sets") / "coin-mini", **PARAMS)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _last_line(template: str) -> str:
    return template.split("\n")[-1]


def _bare_question(text: str, task: str, templates: list[str]) -> str:
    """The text with its whole (possibly two-line) template removed."""
    for t in templates:
        if task == "Grounding" and text.startswith(t + ": "):
            return text[len(t) + 2:]
        if task != "Grounding" and text.endswith("\n" + t):
            return text[: -len(t) - 1]
    raise AssertionError(f"no template of {task} in {text!r}")


def test_original_bytes_unchanged(root: Path):
    got = {str(p.relative_to(root / "Original")): _sha(p) for p in sorted((root / "Original").glob("*/*.json"))}
    assert got == ORIGINAL_SHA256
    h = hashlib.sha256()
    for p in sorted((root / "images").rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    assert h.hexdigest() == IMAGES_SHA256
    assert _sha(root / "pretrain.json") == PRETRAIN_SHA256


def test_templates_shape():
    assert cm.INSTRUCTION_SETS == ("Original", "Diverse", "10Type")
    assert set(cm.TEMPLATES) == set(cm.INSTRUCTION_SETS)
    for task in cm.TASKS:
        assert cm.TEMPLATES["Original"][task] == [cm.INSTRUCTIONS[task]]
        assert len(cm.TEMPLATES["Diverse"][task]) == 1
        ten = cm.TEMPLATES["10Type"][task]
        assert len(ten) == 10 and len(set(ten)) == 10
        for t in cm.TEMPLATES["Diverse"][task] + ten:
            assert "\n" not in t and t.strip() == t
            if task == "Grounding":
                assert ":" not in t


@pytest.mark.parametrize("split", ["train", "test"])
def test_sets_share_records_and_use_their_templates(root: Path, split: str):
    for task in cm.TASKS:
        loaded = {s: cm.load(root, task, split, s) for s in cm.INSTRUCTION_SETS}
        base = loaded["Original"]
        assert len(base) == PARAMS[f"{split}_per_task"]
        for iset, samples in loaded.items():
            allowed = {_last_line(t) for t in cm.TEMPLATES[iset][task]}
            assert [s.id for s in samples] == [s.id for s in base]
            assert [s.image for s in samples] == [s.image for s in base]
            assert [s.answers for s in samples] == [s.answers for s in base]
            bare = [_bare_question(s.text, task, cm.TEMPLATES[iset][task]) for s in samples]
            assert bare == [_bare_question(s.text, task, cm.TEMPLATES["Original"][task]) for s in base]
            assert [s.extra for s in samples] == [s.extra for s in base]
            for s in samples:
                assert s.instruction in allowed, (iset, task, s.text)
                if task == "Grounding":
                    assert "\n" not in s.text
                else:
                    assert s.text.split("\n")[-1] == s.instruction


def test_diverse_differs_from_original(root: Path):
    for task in cm.TASKS:
        orig = cm.load(root, task, "train", "Original")
        div = cm.load(root, task, "train", "Diverse")
        assert all(a.instruction != b.instruction for a, b in zip(orig, div)), task
        assert cm.TEMPLATES["Diverse"][task][0] not in cm.TEMPLATES["Original"][task][0]


def test_10type_varied_and_deterministic(tmp_path: Path):
    params = dict(seed=5, train_per_task=20, test_per_task=1, pretrain_size=0, image_size=32, progress=False)
    a = cm.generate(tmp_path / "a", **params)
    b = cm.generate(tmp_path / "b", **params)
    for task in cm.TASKS:
        used = Counter(s.instruction for s in cm.load(a, task, "train", "10Type"))
        assert len(used) >= 3, (task, used)
        for split in ("train", "test"):
            assert (a / "10Type" / task / f"{split}.json").read_bytes() == \
                (b / "10Type" / task / f"{split}.json").read_bytes()
            assert (a / "Diverse" / task / f"{split}.json").read_bytes() == \
                (b / "Diverse" / task / f"{split}.json").read_bytes()


def test_old_dataset_without_sets_is_not_reused(tmp_path: Path):
    params = dict(seed=1, train_per_task=1, test_per_task=1, pretrain_size=0, image_size=32, progress=False)
    root = cm.generate(tmp_path / "cm", **params)
    assert cm.generate(root, **params) == root  # complete: reused
    shutil.rmtree(root / "10Type")  # what a dataset written before the sets existed looks like
    with pytest.raises(FileExistsError, match="instruction sets"):
        cm.generate(root, **params)
