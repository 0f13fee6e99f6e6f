"""Opening image files the one way every reader does: fully decoded, and never above a pixel limit.

``Image.open`` only reads the header and ``verify()`` only checks the container (a JPEG cut in half
passes it), so a damaged file used to surface mid-training, or as a wrong answer. Here an image
is refused when its header announces more than ``max_pixels`` pixels (before anything is
decoded, so a bomb costs nothing) and when its pixel data do not decode to the end.

The limit is ``data.max_image_pixels``; :func:`set_pixel_limit` makes the run's value the one
the loaders use (``mcit.data.stream.build_stream`` sets it), so the data check and training
refuse the same images.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..config import DataConfig
from .coin_format import DataError

__all__ = ["DEFAULT_MAX_PIXELS", "decode_problem", "inspect_image", "open_image", "pixel_limit", "set_pixel_limit"]

DEFAULT_MAX_PIXELS: int = DataConfig().max_image_pixels  # one default: the config field's
_limit = DEFAULT_MAX_PIXELS
# Pillow warns from ~89 M pixels on; the limit above is the one that decides, and says so itself.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def set_pixel_limit(max_pixels: int) -> None:
    """The limit :func:`open_image` applies when it is given none (the run's data.max_image_pixels)."""
    global _limit
    _limit = int(max_pixels)


def pixel_limit() -> int:
    return _limit


def _too_large(size: tuple[int, int], max_pixels: int) -> str | None:
    w, h = size
    if w * h <= max_pixels:
        return None
    return (f"image is {w} x {h} = {w * h:,} pixels, above data.max_image_pixels={max_pixels:,} "
            "(raise the limit if the image is genuine)")


def _decode(path: Path, max_pixels: int, fast: bool) -> tuple[Image.Image, int]:
    """(the image at ``path`` decoded to its last byte, its pixel count); raises on a damaged file
    or one too large. ``fast`` decodes a JPEG at 1/8 scale (all its data is still read, so
    truncation is caught; the image's size is then the reduced one, the count is not)."""
    im = Image.open(path)
    try:
        pixels = im.width * im.height
        why = _too_large(im.size, max_pixels)
        if why:
            raise _TooLarge(why)
        if fast and im.format == "JPEG":
            im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()
    except BaseException:
        im.close()
        raise
    return im, pixels


class _TooLarge(Exception):
    pass


def decode_problem(path: Path, max_pixels: int | None = None) -> str | None:
    """Why the file at ``path`` is not a usable image (not found, unreadable, damaged, too large),
    or None. Decodes it fully, keeping nothing."""
    return inspect_image(path, max_pixels)[0]


def inspect_image(path: Path, max_pixels: int | None = None) -> tuple[str | None, int | None]:
    """(:func:`decode_problem`'s answer, the image's pixel count when it decoded)."""
    path = Path(path)
    if not path.exists():
        return "image file not found", None
    if not path.is_file():
        return "image path is not a file", None
    try:
        im, pixels = _decode(path, _limit if max_pixels is None else max_pixels, fast=True)
        im.close()
    except _TooLarge as exc:
        return str(exc), None
    except UnidentifiedImageError:
        return "not a readable image (unknown format or not an image)", None
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, DecompressionBombError)
        return f"not a readable image ({type(exc).__name__}: {exc})", None
    return None, pixels


def open_image(path: Path, max_pixels: int | None = None, *, label: str | None = None) -> Image.Image:
    """The image at ``path`` as RGB; a DataError naming the file (``label``, default the path)
    when it is missing, damaged or above the pixel limit."""
    path = Path(path)
    try:
        with _decode(path, _limit if max_pixels is None else max_pixels, fast=False)[0] as im:
            return im.convert("RGB")
    except _TooLarge as exc:
        reason = str(exc)
    except FileNotFoundError:
        reason = "image file not found"
    except UnidentifiedImageError:
        reason = "not a readable image (unknown format or not an image)"
    except OSError as exc:
        reason = f"cannot read image: {exc.strerror or exc}"
    except Exception as exc:  # SyntaxError, ValueError, DecompressionBombError, ...
        reason = f"not a readable image ({type(exc).__name__}: {exc})"
    raise DataError(reason, file=label or str(path))
