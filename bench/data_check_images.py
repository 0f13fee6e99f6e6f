"""What decoding every image costs the data check: ``verify()`` only (what the check did before, which
lets a truncated JPEG through), a full decode one file after another, ``check_release`` (a full
decode of each distinct image once, in a thread pool), and ``check_release`` again with the list of
images that decoded fine, on a release of photo-sized JPEGs.

Prints one JSON object: per-image milliseconds of each (wall clock), the ratios to verify(), and the
cost of a second check that finds every image unchanged (what a run's start-up check pays once the
images have been checked).

    python bench/data_check_images.py                   # 300 JPEGs of 640 x 480 (COCO-sized)
    python bench/data_check_images.py --images 2000 --side 1024
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mcit.data.check import check_release
from mcit.data.coin_format import write_test_json, write_train_json
from mcit.data.images import decode_problem
from mcit.data.schema import Sample


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    # smooth gradients plus noise: compresses like a photo (pure noise would be far larger)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h))], axis=-1)
    noise = rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _release(root: Path, n: int, w: int, h: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, release = root / "images", root / "Original" / "VQAv2"
    (images / "VQAv2").mkdir(parents=True)
    release.mkdir(parents=True)
    for i in range(n):
        _photo(rng, w, h).save(images / "VQAv2" / f"{i}.jpg", quality=90)
    samples = [Sample(f"q{i}", "VQAv2", f"VQAv2/{i}.jpg", "What is this?\nAnswer briefly.", ("a photo",))
               for i in range(n)]
    write_train_json(release / "train.json", samples)
    write_test_json(release / "test.json", samples)  # the same images again: decoded once
    return release.parent, images


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--side", type=int, default=640, help="width; height is 3/4 of it")
    args = ap.parse_args()
    w, h = args.side, args.side * 3 // 4
    with tempfile.TemporaryDirectory() as tmp:
        release, images = _release(Path(tmp), args.images, w, h)
        files = sorted((images / "VQAv2").iterdir())

        def verify_only():
            for f in files:
                with Image.open(f) as im:
                    im.verify()

        verify = _timed(verify_only)
        serial = _timed(lambda: [decode_problem(f) for f in files])
        report = None

        def pooled():
            nonlocal report
            report = check_release(release, images, ["VQAv2"])

        pool = _timed(pooled)
        assert report.ok and report.images == args.images, report.format()
        remembered = Path(tmp) / "checked.json"
        check_release(release, images, ["VQAv2"], remember=remembered)

        def again():
            nonlocal report
            report = check_release(release, images, ["VQAv2"], remember=remembered)

        unchanged = _timed(again)
        assert report.ok and report.images == 0 and report.images_unchanged == args.images
    n = args.images
    print(json.dumps({
        "images": n, "size": [w, h], "records": 2 * n,
        "ms_per_image": {"verify_only": 1e3 * verify / n, "decode_serial": 1e3 * serial / n,
                         "check_release_pool": 1e3 * pool / n, "check_release_unchanged": 1e3 * unchanged / n},
        "ratio_to_verify": {"decode_serial": serial / verify, "check_release_pool": pool / verify},
        "pool_vs_serial": pool / serial, "unchanged_vs_pool": unchanged / pool,
    }, indent=1))


if __name__ == "__main__":
    main()
