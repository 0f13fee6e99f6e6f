"""mcit.data.images: every image is decoded to its last byte and refused above the pixel limit, by
the data check and by the loaders alike (training's load_image, EMT's readers)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mcit.config import DataConfig
from mcit.data import images as images_mod
from mcit.data.coin_format import DataError
from mcit.data.encode import load_image
from mcit.data.images import DEFAULT_MAX_PIXELS, decode_problem, open_image, set_pixel_limit
from mcit.emt.readers import open_rgb


def _jpeg(w=40, h=30) -> bytes:
    buf = io.BytesIO()  # noise: most of the file is scan data, so half of it keeps every header
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture()
def limit_restored():
    yield
    set_pixel_limit(DEFAULT_MAX_PIXELS)


def test_default_is_the_config_fields():
    assert DEFAULT_MAX_PIXELS == DataConfig().max_image_pixels == 40_000_000


def test_a_truncated_jpeg_passes_verify_but_not_the_decode(tmp_path):
    data = _jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:
        im.verify()  # what the check used to rely on: no complaint
    assert "truncated" in decode_problem(path)
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read image: image file is truncated"):
        open_image(path)
    (tmp_path / "whole.jpg").write_bytes(data)
    assert decode_problem(tmp_path / "whole.jpg") is None
    assert open_image(tmp_path / "whole.jpg").size == (40, 30)


def test_the_pixel_limit_is_read_from_the_header_and_named(tmp_path, limit_restored):
    path = tmp_path / "wide.png"
    Image.new("RGB", (50, 20), "red").save(path)
    assert decode_problem(path, max_pixels=1000) is None  # exactly at the limit is accepted
    why = decode_problem(path, max_pixels=999)
    assert why.startswith("image is 50 x 20 = 1,000 pixels, above data.max_image_pixels=999")
    set_pixel_limit(999)  # the run's data.max_image_pixels, as build_stream sets it
    with pytest.raises(DataError, match="above data.max_image_pixels=999"):
        load_image(tmp_path, "wide.png")
    with pytest.raises(DataError, match="above data.max_image_pixels=999"):
        open_rgb(path)
    set_pixel_limit(1000)
    assert load_image(tmp_path, "wide.png").mode == "RGB"


def test_a_bomb_is_refused_without_decoding_it(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("1", (12000, 9000), 1).save(path)  # 108 M pixels, a few KB on disk

    def no_decode(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(images_mod.Image.Image, "load", no_decode)
    assert "12000 x 9000 = 108,000,000 pixels" in decode_problem(path)


def test_load_image_names_the_records_path(tmp_path):
    (tmp_path / "Task").mkdir()
    (tmp_path / "Task" / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as err:
        load_image(tmp_path, "Task/x.png")
    assert str(err.value) == "Task/x.png: not a readable image (unknown format or not an image)"
    assert decode_problem(tmp_path / "Task" / "gone.png") == "image file not found"
    assert decode_problem(tmp_path / "Task") == "image path is not a file"
