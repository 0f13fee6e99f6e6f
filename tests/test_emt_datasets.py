"""EMT classification sets: built-in sources, the disk readers (on small files written here),
the refusal of the pickled CIFAR release, path confinement, splits and limits."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from mcit.config import ConfigError
from mcit.data.coin_format import DataError
from mcit.data.coin_mini import COLORS
from mcit.emt.datasets import ClassificationSet, load_dataset, parse_spec


def _pixels(im):
    return np.asarray(im)


def _same(a: ClassificationSet, b: ClassificationSet) -> bool:
    return all(
        len(a_s) == len(b_s) and all(la == lb and np.array_equal(_pixels(ia), _pixels(ib))
                                     for (ia, la), (ib, lb) in zip(a_s, b_s))
        for a_s, b_s in ((a.train, b.train), (a.test, b.test)))


@pytest.fixture(autouse=True)
def _never_unpickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def _assert_links_out_of_root_refused(kind: str, real, root) -> None:
    """Every reader must refuse a ROOT whose files are symlinks to REAL elsewhere: reads stay inside the root."""
    root.mkdir()
    for f in real.iterdir():
        os.symlink(f, root / f.name)
    with pytest.raises(DataError, match="outside the dataset root"):
        load_dataset(f"{kind}:{root}")


# ---------------------------------------------------------------------------------------
# built in


def test_digits():
    ds = load_dataset("digits", seed=0)
    assert ds.classes == tuple("0123456789") and ds.noun == "number"
    assert ds.synonyms["7"] == ("seven",)
    assert len(ds.train) + len(ds.test) == 1797 and not ds.official_split
    assert abs(len(ds.test) - 0.2 * 1797) < 10
    im, label = ds.train[0]
    assert im.mode == "RGB" and im.size == (32, 32) and 0 <= label < 10
    arr = _pixels(im)
    assert arr.max() > 150 and arr.min() < 20  # ink on a dark background, full range
    assert set(ds.labels("test").tolist()) == set(range(10))  # stratified


def test_split_is_fixed_by_seed_and_limit_is_stratified_and_nested():
    a, b = load_dataset("digits", limit=30, seed=1), load_dataset("digits", limit=30, seed=1)
    assert _same(a, b)
    assert not _same(a, load_dataset("digits", limit=30, seed=2))
    assert len(a.train) == len(a.test) == 30
    assert np.bincount(a.labels("test"), minlength=10).tolist() == [3] * 10
    big = load_dataset("digits", limit=60, seed=1)
    small_ids = {_pixels(im).tobytes() for im in a.images("test")}
    big_ids = {_pixels(im).tobytes() for im in big.images("test")}
    assert small_ids <= big_ids
    # train and test never share an image (coin drawings are all distinct)
    coin = load_dataset({"kind": "coin-objects", "per_class": 10}, seed=1)
    train_ids = {_pixels(i).tobytes() for i in coin.images("train")}
    assert len(train_ids) == len(coin.train) and not train_ids & {_pixels(i).tobytes() for i in coin.images("test")}

@pytest.mark.parametrize("kind,n_classes", [("coin-shapes", 6), ("coin-colors", 6), ("coin-objects", 8)])
def test_coin_sets_are_deterministic(kind, n_classes):
    a = load_dataset({"kind": kind, "per_class": 10, "image_size": 48}, seed=3)
    assert len(a.classes) == n_classes
    assert len(a.train) + len(a.test) == 10 * n_classes
    assert a.train[0][0].size == (48, 48)
    assert _same(a, load_dataset({"kind": kind, "per_class": 10, "image_size": 48}, seed=3))
    assert not _same(a, load_dataset({"kind": kind, "per_class": 10, "image_size": 48}, seed=4))


def test_coin_colors_show_their_colour():
    ds = load_dataset({"kind": "coin-colors", "per_class": 4}, seed=0)
    for im, label in ds.train + ds.test:
        rgb = np.array(COLORS[ds.classes[label]])
        dist = np.abs(_pixels(im).astype(int) - rgb).sum(axis=-1)
        assert (dist < 10).sum() > 50, ds.classes[label]


def test_spec_errors():
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        parse_spec("cifar1O:/x")
    with pytest.raises(ConfigError, match="needs a root"):
        parse_spec("mnist")
    with pytest.raises(ConfigError, match="takes no root"):
        parse_spec("digits:/x")
    with pytest.raises(ConfigError, match="unknown key 'test_fractoin'; did you mean 'test_fraction'"):
        parse_spec({"kind": "digits", "test_fractoin": 0.5})
    with pytest.raises(ConfigError, match="test_fraction"):
        parse_spec({"kind": "digits", "test_fraction": 1.5})
    with pytest.raises(ConfigError, match="not a class"):
        load_dataset({"kind": "coin-shapes", "per_class": 2, "synonyms": {"blob": ["thing"]}})
    with pytest.raises(ValueError, match="limit"):
        load_dataset("digits", limit=0)
    spec = parse_spec("cifar100:/data/c100")
    assert (spec.kind, spec.root, spec.display_name) == ("cifar100", "/data/c100", "cifar100")


def test_spec_synonyms_are_added():
    ds = load_dataset({"kind": "coin-shapes", "per_class": 2, "synonyms": {"circle": ["ring", "disc"]}})
    assert ds.synonyms["circle"] == ("ring", "disc")


# ---------------------------------------------------------------------------------------
# image folder


def _write_folder(root, classes=("cat", "dog", "fox"), per_class=5):
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10 + i, 12), (40 * k, 10 * i, 200)).save(root / cls / f"{i}.png")
    (root / "README.txt").write_text("not a class")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root


def test_image_folder(tmp_path):
    root = _write_folder(tmp_path / "pets")
    ds = load_dataset(f"imagefolder:{root}", seed=0)
    assert ds.name == "pets" and ds.classes == ("cat", "dog", "fox")
    assert len(ds.train) + len(ds.test) == 15 and len(ds.test) == 3  # one per class (0.2 * 5)
    for im, label in ds.train + ds.test:
        assert im.mode == "RGB" and _pixels(im)[0, 0, 0] == 40 * label
    limited = load_dataset({"kind": "imagefolder", "root": str(root), "name": "p"}, limit=2)
    assert len(limited.train) == 2 and len(limited.test) == 2 and limited.name == "p"


def test_image_folder_pre_split(tmp_path):
    _write_folder(tmp_path / "train", per_class=3)
    _write_folder(tmp_path / "test", classes=("cat", "dog"), per_class=2)
    ds = load_dataset({"kind": "imagefolder", "root": str(tmp_path)})
    assert ds.official_split and ds.classes == ("cat", "dog", "fox")
    assert (len(ds.train), len(ds.test)) == (9, 4)
    assert sorted(ds.labels("test").tolist()) == [0, 0, 1, 1]


def test_image_folder_errors(tmp_path):
    root = _write_folder(tmp_path / "a")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder holds no images"):
        load_dataset(f"imagefolder:{root}")
    (root / "empty").rmdir()
    (root / "dog" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"9\.png: not a readable image"):
        load_dataset(f"imagefolder:{root}")
    with pytest.raises(DataError, match="folder not found"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "only" / "x.png")
    with pytest.raises(DataError, match="at least 2 class"):
        load_dataset(f"imagefolder:{one}")


def test_image_folder_paths_stay_inside_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    root = _write_folder(tmp_path / "b")
    os.symlink(outside / "secret.png", root / "cat" / "zz.png")
    with pytest.raises(DataError, match="outside the dataset root"):
        load_dataset(f"imagefolder:{root}")
    (root / "cat" / "zz.png").unlink()
    os.symlink(outside, root / "zebra")
    with pytest.raises(DataError, match="zebra: resolves to .* outside the dataset root"):
        load_dataset(f"imagefolder:{root}")


# ---------------------------------------------------------------------------------------
# MNIST idx


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root, n_train=12, n_test=6, gz=False, size=28):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = np.arange(n) % 10
        data[prefix] = (images, labels)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            path = root / f"{prefix}-{kind}"
            if gz:
                with gzip.open(str(path) + ".gz", "wb") as fh:
                    fh.write(_idx(arr))
            else:
                path.write_bytes(_idx(arr))
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    data = _write_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset(f"mnist:{tmp_path / 'mnist'}")
    assert ds.official_split and ds.classes == tuple("0123456789") and ds.noun == "number"
    assert (len(ds.train), len(ds.test)) == (12, 6)
    im, label = ds.test[3]
    assert im.mode == "RGB" and im.size == (28, 28) and label == 3
    assert np.array_equal(_pixels(im)[..., 0], data["t10k"][0][3])
    assert np.array_equal(ds.labels("train"), data["train"][1])
    limited = load_dataset(f"mnist:{tmp_path / 'mnist'}", limit=5)
    assert (len(limited.train), len(limited.test)) == (5, 5)
    assert len(set(limited.labels("train").tolist())) == 5


def test_mnist_torchvision_layout_and_custom_classes(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw", n_train=4, n_test=2)
    names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    ds = load_dataset({"kind": "mnist", "root": str(tmp_path), "classes": names, "name": "fashion"})
    assert ds.classes == tuple(names) and ds.noun == "object" and ds.synonyms == {}


def test_mnist_errors(tmp_path):
    root = tmp_path / "m"
    _write_mnist(root)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte .*not found"):
        load_dataset(f"mnist:{root}")
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.arange(5) % 10))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: holds 6 images but t10k-labels-idx1-ubyte holds 5"):
        load_dataset(f"mnist:{root}")
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2, 3, 4, 12])))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 12 at index 5 is outside 0\.\.9"):
        load_dataset(f"mnist:{root}")
    good = (root / "train-images-idx3-ubyte").read_bytes()
    (root / "train-images-idx3-ubyte").write_bytes(good[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: idx body holds"):
        load_dataset(f"mnist:{root}")
    (root / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + good[4:])
    with pytest.raises(DataError, match="not an idx file"):
        load_dataset(f"mnist:{root}")
    (root / "train-images-idx3-ubyte").write_bytes(good[:2] + b"\x0d" + good[3:])
    with pytest.raises(DataError, match="element type 0x0d"):
        load_dataset(f"mnist:{root}")
    (root / "train-images-idx3-ubyte").unlink()
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not a valid gzip file"):
        load_dataset(f"mnist:{root}")


def test_mnist_file_symlinked_outside_root_is_refused(tmp_path):
    _write_mnist(tmp_path / "elsewhere")
    _assert_links_out_of_root_refused("mnist", tmp_path / "elsewhere", tmp_path / "m")


# ---------------------------------------------------------------------------------------
# CIFAR binary


def _cifar_records(labels: list[tuple[int, ...]], seed=0) -> tuple[bytes, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out, images = b"", []
    for lab in labels:
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        images.append(img)
        # the release stores the red plane, then green, then blue
        out += bytes(lab) + img.transpose(2, 0, 1).tobytes()
    return out, images


def _write_cifar10(folder, meta=True):
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(["data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"]):
        labels = [((i * 3 + j) % 10,) for j in range(4)]
        data, images = _cifar_records(labels, seed=i)
        (folder / name).write_bytes(data)
        written[name] = (labels, images)
    if meta:
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return written


def test_cifar10_binary(tmp_path):
    written = _write_cifar10(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset(f"cifar10:{tmp_path}")  # the parent of the extracted folder works too
    assert ds.classes[0] == "airplane" and ds.official_split and ds.noun == "object"
    assert "car" in ds.synonyms["automobile"]
    assert (len(ds.train), len(ds.test)) == (8, 4)
    labels, images = written["data_batch_2.bin"]
    im, label = ds.train[5]
    assert label == labels[1][0] and np.array_equal(_pixels(im), images[1])
    assert np.array_equal(_pixels(ds.test[0][0]), written["test_batch.bin"][1][0])
    assert load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-bin'}", limit=3).test.__len__() == 3


def test_cifar10_without_meta_uses_the_standard_names(tmp_path):
    _write_cifar10(tmp_path / "c", meta=False)
    assert load_dataset(f"cifar10:{tmp_path / 'c'}").classes[-1] == "truck"


def test_cifar10_errors(tmp_path):
    folder = tmp_path / "c"
    _write_cifar10(folder)
    good = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(good[:-1])
    with pytest.raises(DataError, match=r"test_batch\.bin: size 12291 bytes is not a positive multiple of the 3073"):
        load_dataset(f"cifar10:{folder}")
    (folder / "test_batch.bin").write_bytes(bytes([11]) + good[1:])
    with pytest.raises(DataError, match=r"test_batch\.bin: record 0: label byte 0 is 11"):
        load_dataset(f"cifar10:{folder}")
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="test_batch.bin not found"):
        load_dataset(f"cifar10:{folder}")
    (folder / "test_batch.bin").write_bytes(good)
    (folder / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"batches\.meta\.txt: lists 2 class names, expected 10"):
        load_dataset(f"cifar10:{folder}")


def _write_cifar100(folder):
    folder.mkdir(parents=True)
    train, train_images = _cifar_records([(k % 20, k) for k in range(0, 100, 9)], seed=5)
    test, _ = _cifar_records([(3, 99), (19, 0)], seed=6)
    (folder / "train.bin").write_bytes(train)
    (folder / "test.bin").write_bytes(test)
    fine = [f"fine_{k}" for k in range(99)] + ["willow_tree"]
    (folder / "fine_label_names.txt").write_text("\n".join(fine) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse_{k}" for k in range(20)) + "\n")
    return train_images


def test_cifar100_binary_fine_and_coarse(tmp_path):
    images = _write_cifar100(tmp_path / "cifar-100-binary")
    fine = load_dataset(f"cifar100:{tmp_path}")
    assert len(fine.classes) == 100 and fine.classes[-1] == "willow tree"
    assert fine.labels("test").tolist() == [99, 0]
    assert fine.labels("train").tolist() == list(range(0, 100, 9))
    assert np.array_equal(_pixels(fine.train[2][0]), images[2])
    coarse = load_dataset({"kind": "cifar100", "root": str(tmp_path), "label_level": "coarse"})
    assert coarse.name == "cifar100-coarse" and len(coarse.classes) == 20
    assert coarse.labels("test").tolist() == [3, 19]


def test_cifar100_errors(tmp_path):
    folder = tmp_path / "c"
    _write_cifar100(folder)
    (folder / "fine_label_names.txt").unlink()
    with pytest.raises(DataError, match=r"fine_label_names\.txt: class-name file not found"):
        load_dataset(f"cifar100:{folder}")
    _write_cifar10(tmp_path / "ten")
    os.replace(tmp_path / "ten" / "test_batch.bin", tmp_path / "ten" / "train.bin")
    with pytest.raises(DataError, match="CIFAR-100 binary file test.bin not found"):
        load_dataset(f"cifar100:{tmp_path / 'ten'}")


def test_cifar10_file_read_as_cifar100_says_so(tmp_path):
    _write_cifar100(tmp_path / "hundred")
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes((tmp_path / "hundred" / "train.bin").read_bytes())
    (folder / "test_batch.bin").write_bytes((tmp_path / "hundred" / "test.bin").read_bytes())
    with pytest.raises(DataError, match="looks like a CIFAR-100 file"):
        load_dataset(f"cifar10:{folder}")


# ---------------------------------------------------------------------------------------
# the pickled python release is refused, never unpickled


def _fake_pickle(path):
    path.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01." + bytes(64))


@pytest.mark.parametrize("layout", ["folder", "parent", "files"])
def test_pickled_cifar10_release_is_refused(tmp_path, layout):
    folder = tmp_path / "cifar-10-batches-py" if layout != "files" else tmp_path / "mine"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "test_batch", "batches.meta"]:
        _fake_pickle(folder / name)
    root = tmp_path if layout == "parent" else folder
    with pytest.raises(DataError, match="pickled CIFAR python release.*cifar-10-binary.tar.gz") as err:
        load_dataset(f"cifar10:{root}")
    assert str(folder) in str(err.value)


def test_pickled_cifar100_release_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ["train", "test", "meta"]:
        _fake_pickle(folder / name)
    with pytest.raises(DataError, match="pickled CIFAR python release.*cifar-100-binary"):
        load_dataset(f"cifar100:{tmp_path}")


def test_pickle_renamed_to_bin_is_refused(tmp_path):
    folder = tmp_path / "c"
    _write_cifar10(folder)
    _fake_pickle(folder / "data_batch_1.bin")
    with pytest.raises(DataError, match=r"data_batch_1\.bin: holds a pickle.*never unpickles"):
        load_dataset(f"cifar10:{folder}")


def test_archive_instead_of_folder(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(b"x")
    with pytest.raises(DataError, match="extract the archive first"):
        load_dataset(f"cifar10:{archive}")


def test_cifar_file_symlinked_outside_root_is_refused(tmp_path):
    _write_cifar10(tmp_path / "real")
    _assert_links_out_of_root_refused("cifar10", tmp_path / "real", tmp_path / "c")
