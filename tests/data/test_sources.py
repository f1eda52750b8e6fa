"""Named datasets: real files found and read; a clear error when absent."""
import pytest

from tudui.data.sources import load_named
from tudui.core.errors import TuduiError


def test_fashion_mnist_real_files(fmnist):
    train, test = fmnist
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.counts().tolist() == [6000] * 10 and train.classes[9] == "Ankle boot"


def test_digits_has_fixed_train_test_split():
    train, test = load_named("digits", True), load_named("digits", False)
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (8, 8, 1)
    assert abs(len(test) - 0.2 * 1797) < 12


def test_missing_dataset_lists_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("tudui.data.sources.SYSTEM_DIRS", [str(tmp_path / "none")])
    monkeypatch.setattr("tudui.data.sources.CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("TUDUI_DATA", raising=False)
    with pytest.raises(TuduiError, match="(?s)not found.*Looked in.*--download"):
        load_named("cifar10", True, data_root=str(tmp_path))
