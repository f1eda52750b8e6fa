"""Named datasets: real files found and read, small files in the original formats, the search order; a clear error
when absent."""
import gzip
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint
from tudui.core.errors import TuduiError
from tudui.data.sources import find, load_named


def test_fashion_mnist_real_files(fmnist):
    train, test = fmnist
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.counts().tolist() == [6000] * 10 and train.classes[9] == "Ankle boot"


def test_digits_has_fixed_train_test_split():
    train, test = load_named("digits", True), load_named("digits", False)
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (8, 8, 1)
    assert abs(len(test) - 0.2 * 1797) < 12


def test_digits_read_from_the_file_equal_scikit_learns_load_digits(monkeypatch):
    """tudui reads digits.csv.gz itself (no scikit-learn import); the arrays are load_digits' own, and where the file
    is not found, load_digits is what reads them."""
    from sklearn.datasets import load_digits

    from tudui.data import sources

    d = load_digits()
    sources._digits_arrays.cache_clear()  # read once per process: this test reads it both ways
    pixels, labels = sources._digits_arrays()
    np.testing.assert_array_equal(pixels, d.images)
    np.testing.assert_array_equal(labels, d.target)
    assert labels.dtype == np.int64
    assert sources._digits_arrays()[0] is pixels and not pixels.flags.writeable  # the next run gets the same arrays
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # the file not found: load_digits reads it
    sources._digits_arrays.cache_clear()
    try:
        again, _ = sources._digits_arrays()
    finally:
        sources._digits_arrays.cache_clear()
    np.testing.assert_array_equal(again, d.images)


def test_missing_dataset_lists_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("tudui.data.sources.SYSTEM_DIRS", [str(tmp_path / "none")])
    monkeypatch.setattr("tudui.data.sources.CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("TUDUI_DATA", raising=False)
    with pytest.raises(TuduiError, match="(?s)not found.*Looked in.*--download"):
        load_named("cifar10", True, data_root=str(tmp_path))


# --- small files in the original formats (what torchvision downloads), read by tudui and by torchvision -------------
def write_idx(folder: Path, train: bool, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    """The MNIST IDX files: big-endian magic (0x0803 images / 0x0801 labels), dimensions, then uint8 values."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if train else "t10k"
    for name, arr, magic in ((f"{prefix}-images-idx3-ubyte", images, 0x0803),
                             (f"{prefix}-labels-idx1-ubyte", labels, 0x0801)):
        dims = b"".join(struct.pack(">I", d) for d in arr.shape)
        raw = struct.pack(">I", magic) + dims + arr.astype(np.uint8).tobytes()
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def fake_mnist(folder: Path, n_train: int, n_test: int = 5, gz: bool = False, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train), \
        rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)
    write_idx(folder, True, arrays[0], arrays[1], gz)
    write_idx(folder, False, arrays[2], arrays[3], gz)
    return arrays


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def fake_cifar10(folder: Path, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """cifar-10-batches-py/: data_batch_1..5 and test_batch hold {'data': (N, 3072) uint8 (R, G, B planes of 32x32,
    row-major), 'labels': [...]}; batches.meta holds {'label_names': [...]}. Returns the train split's
    (images (N, 32, 32, 3) uint8, labels, class names)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"class {i} 类" for i in range(10)]
    images = rng.integers(0, 256, (6 * per_batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * per_batch)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(files):
        part = slice(i * per_batch, (i + 1) * per_batch)
        _pickle(folder / name, {"batch_label": name, "labels": labels[part].tolist(),
                                "data": images[part].transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                                "filenames": [f"{j}.png" for j in range(per_batch)]})
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return images[:5 * per_batch], labels[:5 * per_batch], names


def fake_cifar100(folder: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """cifar-100-python/: train and test hold {'data', 'fine_labels', 'coarse_labels'}; meta holds
    {'fine_label_names', ...}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"fine{i}" for i in range(100)]
    for split in ("train", "test"):
        images, labels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n)
        _pickle(folder / split, {"data": images.transpose(0, 3, 1, 2).reshape(n, 3072), "fine_labels": labels.tolist(),
                                 "coarse_labels": (labels // 5).tolist(), "filenames": [f"{j}.png" for j in range(n)]})
        if split == "train":
            train = images, labels
    _pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    return train[0], train[1], names


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """No dataset in the cache, system folders or $TUDUI_DATA unless a test puts one there."""
    monkeypatch.setattr("tudui.data.sources.SYSTEM_DIRS", [str(tmp_path / "system")])
    monkeypatch.setattr("tudui.data.sources.CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("TUDUI_DATA", raising=False)
    return tmp_path


@pytest.mark.parametrize("layout, gz", [("mnist", False), ("MNIST/raw", False), ("mnist", True)])
def test_mnist_reader_matches_torchvision(no_system_data, layout, gz):
    import torchvision

    root = no_system_data / "root"
    x, y, tx, ty = fake_mnist(root / layout, 12, 5, gz=gz)
    train, test = load_named("mnist", True, str(root)), load_named("mnist", False, str(root))
    assert train.images.shape == (12, 28, 28, 1) and train.images.dtype == np.uint8 and test.images.shape[0] == 5
    assert np.array_equal(train.images[..., 0], x) and np.array_equal(train.targets, y)
    assert np.array_equal(test.images[..., 0], tx) and np.array_equal(test.targets, ty)
    assert train.classes == [str(i) for i in range(10)]
    if not gz:  # torchvision reads the same (uncompressed) files from its own layout to the same arrays
        (root / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        for f in (root / layout).iterdir():
            if not (root / "MNIST" / "raw" / f.name).exists():
                (root / "MNIST" / "raw" / f.name).write_bytes(f.read_bytes())
        tv = torchvision.datasets.MNIST(str(root), train=True, download=False)
        assert np.array_equal(tv.data.numpy(), train.images[..., 0]) and tv.targets.tolist() == train.targets.tolist()


def test_fashion_mnist_names_and_a_truncated_file(no_system_data):
    root = no_system_data / "root"
    fake_mnist(root / "FashionMNIST" / "raw", 6)
    assert load_named("fashion-mnist", True, str(root)).classes[0] == "T-shirt/top"
    raw = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(TuduiError, match="truncated.*obtain the dataset again"):
        load_named("fashion-mnist", True, str(root))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_are_read_once_per_process_until_they_change(no_system_data, gz):
    """A second run in the same process gets the arrays the first read (read-only, so neither can change them for
    the other); a file written again (a later modification time), even with the same size, is read again."""
    folder = no_system_data / "root" / "fashion-mnist"
    fake_mnist(folder, 6, gz=gz, seed=0)
    first = load_named("fashion-mnist", True, str(folder.parent))
    second = load_named("fashion-mnist", True, str(folder.parent))
    assert np.shares_memory(first.images, second.images) and not first.images.flags.writeable
    images, labels = fake_mnist(folder, 6, gz=gz, seed=1)[:2]  # the same sizes, other values
    for f in folder.iterdir():  # written later, as a replaced file is (within a clock tick here: said explicitly)
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    third = load_named("fashion-mnist", True, str(folder.parent))
    assert np.array_equal(third.images[..., 0], images) and third.targets.tolist() == labels.tolist()


def test_cifar_readers_match_torchvision(no_system_data, monkeypatch):
    import torchvision
    import torchvision.datasets.cifar as tv_cifar

    root = no_system_data / "root"
    x, y, names = fake_cifar10(root / "cifar-10-batches-py")
    train, test = load_named("cifar10", True, str(root)), load_named("cifar10", False, str(root))
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    assert np.array_equal(train.images, x) and train.targets.tolist() == y.tolist() and train.classes == names
    # torchvision reads the same files (its MD5 checks, which only real downloads pass, switched off) identically.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    tv = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
    assert np.array_equal(tv.data, train.images) and tv.targets == train.targets.tolist() and tv.classes == names

    x100, y100, names100 = fake_cifar100(root / "cifar-100-python")
    c100 = load_named("cifar100", True, str(root))
    assert np.array_equal(c100.images, x100) and c100.targets.tolist() == y100.tolist() and c100.classes == names100
    tv100 = torchvision.datasets.CIFAR100(str(root), train=True, download=False)
    assert np.array_equal(tv100.data, c100.images) and tv100.targets == c100.targets.tolist()


def test_search_order_data_root_then_env_then_cache_then_system(no_system_data, monkeypatch, capsys):
    """Four copies of mnist that differ in size: the first place in the documented order wins."""
    base = no_system_data
    places = {"root": base / "root" / "mnist", "env": base / "env" / "MNIST" / "raw",
              "cache": base / "cache" / "mnist", "system": base / "system" / "mnist"}
    for n, folder in enumerate(places.values()):
        fake_mnist(folder, 10 + n, gz=n % 2 == 1)
    monkeypatch.setenv("TUDUI_DATA", str(base / "env"))
    assert len(load_named("mnist", True, str(base / "root"))) == 10
    assert len(load_named("mnist", True)) == 11 and find("mnist") == places["env"].resolve()
    assert tudui_main(["info", "--json"]) == 0  # `tudui info` says where each dataset was found
    assert json.loads(capsys.readouterr().out)["datasets"]["mnist"] == str(places["env"].resolve())
    monkeypatch.delenv("TUDUI_DATA")
    assert len(load_named("mnist", True)) == 12
    shutil.rmtree(base / "cache")
    assert len(load_named("mnist", True)) == 13 and find("mnist") == places["system"].resolve()


def test_train_on_cifar10_files(no_system_data, tmp_path):
    fake_cifar10(no_system_data / "root" / "cifar-10-batches-py", per_batch=16)
    assert tudui_main(["train", "--data", "cifar10", "--data-root", str(no_system_data / "root"), "--model",
                       "cifar-net", "--epochs", "1", "--batch-size", "16", "--val-split", "0.2", "--no-plots",
                       "--no-tensorboard", "--project", str(tmp_path / "runs"), "--name", "c10"]) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / "c10" / "best.pt")
    assert ckpt["data"]["classes"][1] == "class 1 类" and ckpt["data"]["channels"] == 3
    assert ckpt["data"]["img_size"] == 32 and ckpt["data"]["hflip"] is True
    metrics = json.loads((tmp_path / "runs" / "c10" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16  # test_batch
    assert 14 <= metrics["val"]["n"] <= 16  # ~20% of the 80 training images, rounded per class (stratified)
