"""Readers for classification sets on disk, for the EMT evaluation (see :mod:`mcit.emt.datasets`).

Three layouts are read:

* **image folder**: ``<root>/<class>/<image>`` (one sub-folder per class, sorted names are the
  classes), or ``<root>/{train,test}/<class>/<image>`` when the data comes pre-split. Hidden
  entries and files without an image extension are skipped.
* **MNIST idx files**: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (``.idx`` spellings and ``.gz``
  copies accepted), in ``<root>``, ``<root>/raw`` or ``<root>/MNIST/raw``.
* **CIFAR binary release**: CIFAR-10 ``data_batch_*.bin`` + ``test_batch.bin`` (+
  ``batches.meta.txt``), CIFAR-100 ``train.bin`` + ``test.bin`` + ``fine_label_names.txt`` +
  ``coarse_label_names.txt``; in ``<root>`` or its ``cifar-10-batches-bin`` /
  ``cifar-100-binary`` sub-folder.

The pickled CIFAR "python version" is refused: nothing here ever unpickles a file (unpickling
runs arbitrary code), and the message says which release to download instead.

Every reader returns a :class:`RawSet` whose images are decoded lazily (``image_at(i)``), so a
sample limit never pays for the images it drops. Every problem is a
:class:`~mcit.data.coin_format.DataError` naming the file and what is wrong, and every file
read is checked to lie inside the dataset root (symlinks included).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from mcit.data.coin_format import DataError
from mcit.data.images import open_image

__all__ = [
    "CIFAR10_CLASSES",
    "DIGIT_CLASSES",
    "DIGIT_SYNONYMS",
    "IMAGE_EXTENSIONS",
    "RawSet",
    "RawSplit",
    "confined",
    "open_rgb",
    "read_cifar10",
    "read_cifar100",
    "read_idx",
    "read_image_folder",
    "read_mnist",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
DIGIT_CLASSES = tuple(str(d) for d in range(10))
DIGIT_SYNONYMS = {str(d): (w,) for d, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))}
# The CIFAR-10 names in label order, as in the release's batches.meta.txt (used when it is absent).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SYNONYMS = {"airplane": ("aeroplane", "plane"), "automobile": ("car",), "ship": ("boat",),
                    "truck": ("lorry",)}

_CIFAR_PIXELS = 32 * 32 * 3
_PICKLE_MAGIC = 0x80  # first byte of a pickle (protocol >= 2), never a valid CIFAR label byte here
# file names of the pickled "python version" releases
_PICKLED_NAMES = {10: {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                       "test_batch", "batches.meta"},
                  100: {"train", "test", "meta"}}
_BINARY_HINT = {
    10: "download the binary release 'cifar-10-binary.tar.gz' (CIFAR-10 binary version) and point "
        "to its extracted folder 'cifar-10-batches-bin'",
    100: "download the binary release 'cifar-100-binary.tar.gz' (CIFAR-100 binary version) and point "
         "to its extracted folder 'cifar-100-binary'",
}


@dataclass
class RawSplit:
    """One split before decoding: labels (int64 array) and a function decoding image ``i``."""

    labels: np.ndarray
    image_at: Callable[[int], Image.Image]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawSet:
    """What a reader found: class names, and either official ``train``/``test`` splits or one
    ``all`` split that the caller splits by seed."""

    classes: tuple[str, ...]
    splits: dict[str, RawSplit]
    source: str
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    noun: str = "object"


# ---------------------------------------------------------------------------------------
# paths


def confined(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed); DataError if it lands outside ``root``."""
    root_r = Path(root).resolve()
    target = Path(path).resolve()
    if target == root_r or not target.is_relative_to(root_r):
        raise DataError(f"resolves to {target}, outside the dataset root {root_r}", file=str(path))
    return target


def _root_dir(root: Path | str, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{what} folder not found", file=str(root))
    if not root.is_dir():
        hint = "; extract the archive first and give the extracted folder" if root.name.endswith(
            (".tar", ".tar.gz", ".tgz", ".zip")) else ""
        raise DataError(f"{what} root is a file, not a folder{hint}", file=str(root))
    return root


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file to RGB, to its last byte; a DataError naming the file when it is damaged
    (a truncated file is never handed on, to be scored as a wrong answer) or above the pixel limit."""
    return open_image(path)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"not a valid gzip file ({exc or 'truncated'})", file=str(path)) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from None


# ---------------------------------------------------------------------------------------
# image folder


def _visible(entries) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_dirs(folder: Path, root: Path) -> dict[str, list[Path]]:
    """class name -> image files of ``folder/<class>/``, every path confined to ``root``."""
    out: dict[str, list[Path]] = {}
    with os.scandir(folder) as it:
        entries = _visible(it)
    for entry in entries:
        path = Path(entry.path)
        if not entry.is_dir():  # stray top-level files (README, labels.txt) are not classes
            continue
        confined(root, path)
        with os.scandir(path) as it:
            files = [Path(e.path) for e in _visible(it) if Path(e.name).suffix.lower() in IMAGE_EXTENSIONS]
        for f in files:
            if not confined(root, f).is_file():
                raise DataError("is not a regular file", file=str(f))
        if not files:
            raise DataError(f"class folder holds no images (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})",
                            file=str(path))
        out[entry.name] = files
    return out


def _folder_split(by_class: dict[str, list[Path]], classes: Sequence[str]) -> RawSplit:
    index = {c: k for k, c in enumerate(classes)}
    files = [f for c in by_class for f in by_class[c]]
    labels = np.array([index[c] for c in by_class for _ in by_class[c]], dtype=np.int64)
    return RawSplit(labels, lambda i: open_rgb(files[i]))


def read_image_folder(root: Path | str) -> RawSet:
    """``<root>/<class>/*.png`` (one split, split later by seed) or ``<root>/{train,test}/<class>/``."""
    root = _root_dir(root, "image folder")
    with os.scandir(root) as it:
        top = {e.name for e in _visible(it) if e.is_dir()}
    if top == {"train", "test"}:
        parts = {s: _class_dirs(confined(root, root / s), root) for s in ("train", "test")}
        classes = tuple(sorted(set(parts["train"]) | set(parts["test"])))
        splits = {s: _folder_split(parts[s], classes) for s in ("train", "test")}
    else:
        by_class = _class_dirs(root, root)
        classes = tuple(by_class)
        splits = {"all": _folder_split(by_class, classes)}
    if len(classes) < 2:
        raise DataError(f"an image folder needs at least 2 class sub-folders, found {len(classes)}", file=str(root))
    return RawSet(classes, splits, f"image folder {root}")


# ---------------------------------------------------------------------------------------
# MNIST idx


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (plain or .gz) as a uint8 array."""
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError("not an idx file (the magic number must start with two zero bytes)", file=str(path))
    if data[2] != 0x08:
        raise DataError(f"idx element type 0x{data[2]:02x} is not supported (only 0x08, unsigned byte)",
                        file=str(path))
    if data[3] != ndim:
        raise DataError(f"idx file has {data[3]} dimensions, expected {ndim}", file=str(path))
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError("idx header is truncated", file=str(path))
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(f"idx body holds {len(data) - header} bytes, the header {tuple(dims)} says {expected}",
                        file=str(path))
    if dims[0] == 0:
        raise DataError("idx file holds no items", file=str(path))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_mnist_file(root: Path, base: str) -> Path | None:
    names = [base, base.replace("-idx", ".idx")]
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):  # the plain file wins
                if candidate.is_file():
                    confined(root, candidate)
                    return candidate
    return None


_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_mnist(root: Path | str, classes: Sequence[str] | None = None) -> RawSet:
    """MNIST (or any MNIST-format set such as Fashion-MNIST, given its ``classes``) from idx files."""
    root = _root_dir(root, "MNIST")
    names = tuple(classes) if classes is not None else DIGIT_CLASSES
    splits = {}
    for split, (img_base, lab_base) in _MNIST_FILES.items():
        img_path, lab_path = _find_mnist_file(root, img_base), _find_mnist_file(root, lab_base)
        for path, base in ((img_path, img_base), (lab_path, lab_base)):
            if path is None:
                raise DataError(f"MNIST file {base} (or {base}.gz) not found in it, nor in raw/ or MNIST/raw/",
                                file=str(root))
        images = read_idx(img_path, 3)
        labels = read_idx(lab_path, 1).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"holds {len(images)} images but {lab_path.name} holds {len(labels)} labels",
                            file=str(img_path))
        bad = np.flatnonzero(labels >= len(names))
        if bad.size:
            raise DataError(f"label {labels[bad[0]]} at index {bad[0]} is outside 0..{len(names) - 1}",
                            file=str(lab_path))
        splits[split] = RawSplit(labels, lambda i, a=images: Image.fromarray(a[i], "L").convert("RGB"))
    synonyms = DIGIT_SYNONYMS if classes is None else {}
    return RawSet(names, splits, f"MNIST idx files in {root}", dict(synonyms),
                  "number" if classes is None else "object")


# ---------------------------------------------------------------------------------------
# CIFAR binary release


def _refuse_pickled(folder: Path, version: int) -> None:
    py_dirs = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
    bad = None
    if folder.name in py_dirs.values():
        bad = folder
    elif (folder / py_dirs[version]).is_dir():
        bad = folder / py_dirs[version]
    else:
        found = sorted(p.name for p in folder.iterdir() if p.name in _PICKLED_NAMES[version] and p.is_file())
        if found:
            bad = folder / found[0]
    if bad is not None:
        raise DataError("this is the pickled CIFAR python release, which mcit refuses to read (unpickling can "
                        f"run arbitrary code); {_BINARY_HINT[version]}", file=str(bad))


def _cifar_dir(root: Path, version: int, marker: str) -> Path:
    sub = root / ("cifar-10-batches-bin" if version == 10 else "cifar-100-binary")
    if not (root / marker).exists() and sub.is_dir():
        confined(root, sub)
        return sub
    return root


def _names_file(path: Path, root: Path, count: int, required: bool) -> tuple[str, ...] | None:
    if not path.is_file():
        if required:
            raise DataError(f"class-name file not found (it ships with the binary release, {count} names)",
                            file=str(path))
        return None
    confined(root, path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path)) from None
    # the release writes names like "aquarium_fish" or "maple_tree"; prompts want words
    names = tuple(line.strip().replace("_", " ") for line in text.splitlines() if line.strip())
    if len(names) != count:
        raise DataError(f"lists {len(names)} class names, expected {count}", file=str(path))
    if len(set(names)) != count:
        raise DataError("lists the same class name twice", file=str(path))
    return names


def _cifar_records(path: Path, root: Path, version: int, label_bytes: int, n_classes: Sequence[int]) -> np.ndarray:
    confined(root, path)
    data = _read_bytes(path)
    record = label_bytes + _CIFAR_PIXELS
    if data[:1] == bytes([_PICKLE_MAGIC]):
        raise DataError("holds a pickle (the CIFAR python release?), not CIFAR binary records; mcit never "
                        f"unpickles files: {_BINARY_HINT[version]}", file=str(path))
    if not data or len(data) % record:
        other = ("; it looks like a CIFAR-100 file (2 label bytes per record)" if version == 10
                 and data and len(data) % (record + 1) == 0 else "")
        raise DataError(f"size {len(data)} bytes is not a positive multiple of the {record}-byte CIFAR-{version} "
                        f"record ({label_bytes} label byte{'s' if label_bytes > 1 else ''} + {_CIFAR_PIXELS} "
                        f"pixel bytes){other}", file=str(path))
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    for col, limit in enumerate(n_classes):
        bad = np.flatnonzero(arr[:, col] >= limit)
        if bad.size:
            raise DataError(f"record {bad[0]}: label byte {col} is {arr[bad[0], col]}, outside 0..{limit - 1}",
                            file=str(path))
    return arr


def _cifar_image(records: np.ndarray, label_bytes: int, i: int) -> Image.Image:
    # a record stores the 1024 red, then green, then blue values, each plane row-major
    planes = records[i, label_bytes:].reshape(3, 32, 32)
    return Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0)), "RGB")


def _cifar_split(parts: list[np.ndarray], label_bytes: int, label_col: int) -> RawSplit:
    records = parts[0] if len(parts) == 1 else np.concatenate(parts)
    labels = records[:, label_col].astype(np.int64)
    return RawSplit(labels, lambda i: _cifar_image(records, label_bytes, i))


def read_cifar10(root: Path | str) -> RawSet:
    """CIFAR-10 binary release: ``data_batch_*.bin`` (train) and ``test_batch.bin`` (test)."""
    root = _root_dir(root, "CIFAR-10")
    folder = _cifar_dir(root, 10, "test_batch.bin")
    train_files = sorted(folder.glob("data_batch_*.bin"), key=lambda p: (len(p.name), p.name))
    test_file = folder / "test_batch.bin"
    if not train_files or not test_file.is_file():
        _refuse_pickled(folder, 10)
        missing = "data_batch_*.bin" if not train_files else "test_batch.bin"
        raise DataError(f"CIFAR-10 binary file {missing} not found in it ({_BINARY_HINT[10]})", file=str(folder))
    classes = _names_file(folder / "batches.meta.txt", root, 10, required=False) or CIFAR10_CLASSES
    train = [_cifar_records(p, root, 10, 1, (10,)) for p in train_files]
    test = [_cifar_records(test_file, root, 10, 1, (10,))]
    splits = {"train": _cifar_split(train, 1, 0), "test": _cifar_split(test, 1, 0)}
    synonyms = {c: s for c, s in CIFAR10_SYNONYMS.items() if c in classes}
    return RawSet(classes, splits, f"CIFAR-10 binary release in {folder}", synonyms)


def read_cifar100(root: Path | str, label_level: str = "fine") -> RawSet:
    """CIFAR-100 binary release: ``train.bin``/``test.bin`` records of (coarse, fine, pixels);
    ``label_level`` picks the 100 fine or the 20 coarse classes."""
    if label_level not in ("fine", "coarse"):
        raise ValueError(f"label_level must be 'fine' or 'coarse', got {label_level!r}")
    root = _root_dir(root, "CIFAR-100")
    folder = _cifar_dir(root, 100, "train.bin")
    train_file, test_file = folder / "train.bin", folder / "test.bin"
    if not train_file.is_file() or not test_file.is_file():
        _refuse_pickled(folder, 100)
        missing = "train.bin" if not train_file.is_file() else "test.bin"
        raise DataError(f"CIFAR-100 binary file {missing} not found in it ({_BINARY_HINT[100]})", file=str(folder))
    fine = _names_file(folder / "fine_label_names.txt", root, 100, required=True)
    coarse = _names_file(folder / "coarse_label_names.txt", root, 20, required=True)
    col = 1 if label_level == "fine" else 0
    splits = {s: _cifar_split([_cifar_records(p, root, 100, 2, (20, 100))], 2, col)
              for s, p in (("train", train_file), ("test", test_file))}
    return RawSet(fine if label_level == "fine" else coarse, splits,
                  f"CIFAR-100 binary release in {folder} ({label_level} labels)")
