"""Your own Dataset: the image and label forms it may return, and the mistakes it may make."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import tudui
from tudui.core.errors import TuduiError
from tudui.data import load_splits
from tudui.data.images import decode_image
from tudui.data.user import splits_from_object, to_pil


class Items(torch.utils.data.Dataset):
    def __init__(self, items, classes=None):
        self.items = items
        if classes:
            self.classes = classes

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self):
        return len(self.items)


def digits_items(n=60):
    from sklearn.datasets import load_digits

    d = load_digits()
    return [((d.images[i] * 255 / 16).astype(np.uint8), int(d.target[i])) for i in range(n)]


def test_image_forms_decode_to_the_same_pixels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    want = decode_image(Image.fromarray(gray), 1, 8)
    forms = [gray, gray[:, :, None], torch.from_numpy(gray)[None], torch.from_numpy(gray)[None].float() / 255,
             Image.fromarray(gray)]
    for f in forms:
        assert np.array_equal(decode_image(to_pil(f, "x"), 1, 8), want), type(f)
    rgb = torch.rand(3, 5, 6)
    assert to_pil(rgb, "x").size == (6, 5) and to_pil(rgb, "x").mode == "RGB"


def test_string_labels_become_sorted_classes_and_int_labels_use_classes_attr():
    split = splits_from_object(Items([(np.zeros((4, 4), np.uint8), n) for n in ["bees", "ants", "bees"]]), "d")
    assert split["train"].classes == ["ants", "bees"] and split["train"].targets.tolist() == [1, 0, 1]
    given = splits_from_object(Items([(np.zeros((4, 4), np.uint8), "ants")]), "d", classes=["bees", "ants"])
    assert given["train"].targets.tolist() == [1]
    ints = splits_from_object(Items([(np.zeros((4, 4), np.uint8), k) for k in (0, 2)], classes=["a", "b", "c"]), "d")
    assert ints["train"].classes == ["a", "b", "c"]


def test_a_list_is_concatenated_and_a_dict_gives_splits():
    a = Items([(np.zeros((4, 4), np.uint8), "ants")] * 3)
    b = Items([(np.full((4, 4), 255, np.uint8), "bees")] * 2)
    assert len(splits_from_object([a, b], "d")["train"]) == 5
    train, val, test = load_splits([{"train": a + b, "val": b, "test": a}], val_split=0.1)
    assert (len(train), len(val), len(test)) == (5, 2, 3) and val.classes == train.classes == ["ants", "bees"]


@pytest.mark.parametrize("items, message", [
    ([("not an image", 0), ("x", 1)], "the image is a str; give a PIL image"),
    ([(torch.randn(1, 8, 8) * 3, 0), (torch.zeros(1, 8, 8), 1)], "float pixels range over"),
    ([(np.zeros((8, 8), np.uint8), 1.5), (np.zeros((8, 8), np.uint8), 0)], "has the label 1.5 (float)"),
    ([(np.zeros((8, 8), np.uint8),), (np.zeros((8, 8), np.uint8),)], "returns (image, label) pairs"),
    ([(np.zeros((8, 8), np.uint8), "a"), (np.zeros((8, 8), np.uint8), 1)], "mixes int and str labels"),
])
def test_unusable_items_are_one_clear_error(tmp_path, items, message):
    with pytest.raises(TuduiError) as e:
        tudui.train(data=Items(items * 4), model="mnist-cnn", img_size=8, epochs=1, project=str(tmp_path),
                    plots=False, tensorboard=False)
    assert message in str(e.value)


def test_library_trains_a_dataset_of_arrays_and_dict_splits(tmp_path):
    items = digits_items(300)
    ds = {"train": Items(items[:240]), "val": Items(items[240:])}
    r = tudui.train(data=ds, model="mnist-cnn", epochs=4, batch_size=32, project=str(tmp_path), plots=False,
                    tensorboard=False)
    assert r.spec.classes == [str(k) for k in range(10)] and r.val["n"] == 60
    assert r.val["top1"] > 0.5
    cfg = (r.run_dir / "config.yaml").read_text()
    assert "<dict object" in cfg or "<Items object" in cfg  # objects are described, not pickled, in config.yaml


def test_a_train_config_holding_objects_trains_them(tmp_path):
    """tudui.train(TrainConfig(data=[dataset], model=module)): the objects themselves reach the run, not the
    descriptions config.yaml writes for them."""
    x = torch.from_numpy(np.stack([im for im, _ in digits_items(200)]))[:, None]  # (200, 1, 8, 8) uint8
    y = torch.tensor([label for _, label in digits_items(200)])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = net[1].weight.detach().clone()
    for data in (torch.utils.data.TensorDataset(x, y), Items(digits_items(200))):
        cfg = tudui.TrainConfig(data=[data], model=net, epochs=1, batch_size=32, project=str(tmp_path), plots=False,
                                tensorboard=False)
        r = tudui.train(cfg)
        assert r.spec.channels == 1 and r.spec.img_size == 8 and r.val["n"] == 20
        assert isinstance(cfg.data[0], torch.utils.data.Dataset) and cfg.model is net  # the config is not changed
    assert not torch.equal(net[1].weight.detach(), before)  # the module given was the one trained


def test_subset_is_a_seeded_random_choice_as_its_help_says():
    """--subset N: N training images drawn at random with --seed (kept in their order), not the first N: the first 20
    of a dataset sorted by class would be one class."""
    from tudui.core.config import TrainConfig

    items = Items([(np.full((4, 4), i, np.uint8), "a" if i < 50 else "b") for i in range(100)])

    def chosen(seed):
        train, _, _ = load_splits([items], val_split=0, subset=20, seed=seed)
        return [p.index for p in train.paths]  # which items of the Dataset

    first = chosen(0)
    assert len(first) == 20 and first == sorted(first) and first != list(range(20))
    assert any(i < 50 for i in first) and any(i >= 50 for i in first)
    assert chosen(0) == first and chosen(1) != first
    words = next(f for f in dataclasses.fields(TrainConfig) if f.name == "subset").metadata["help"]
    assert "seeded random" in words and "--seed" in words and "first" not in words


def test_a_dataset_file_runs_whole(tmp_path):
    """`--data data.py:train_set` names an object the file's statements make (and may read settings such as
    `ROOT = os.environ.get(...)`): a Dataset file runs whole, unlike a model's file (core/toplevel.py)."""
    path = tmp_path / "data.py"
    path.write_text("import os\nimport numpy as np\nimport torch\n\nSIDE = int(os.environ.get('SIDE', '8'))\n\n\n"
                    "class Squares(torch.utils.data.Dataset):\n    def __getitem__(self, i):\n"
                    "        return np.full((SIDE, SIDE), 40 * i, np.uint8), i % 2\n\n    def __len__(self):\n"
                    "        return 6\n\n\ntrain_set = Squares()\n")
    train, _, _ = load_splits([f"{path}:train_set"], val_split=0)
    assert len(train) == 6 and train.classes == ["0", "1"]


def test_a_one_class_dataset_is_told_about_its_labels_not_about_subfolders():
    with pytest.raises(TuduiError) as e:
        load_splits([Items([(np.zeros((4, 4), np.uint8), 1)] * 6)], val_split=0)
    assert str(e.value).endswith("has only one class (1); a classifier needs at least two: every item your Dataset "
                                 "returns has the same label; its (image, label) pairs need two or more")


def test_a_dataset_class_is_made_when_it_needs_no_arguments_and_otherwise_told_how_to_pass_them(tmp_path):
    """`--data mydata.py:MyData` naming a class whose constructor needs arguments was told 'MyData has no length'."""
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "class MyData(torch.utils.data.Dataset):\n"
        "    def __init__(self, root, train=True, *, size):\n        self.n = size\n"
        "    def __len__(self):\n        return self.n\n"
        "    def __getitem__(self, i):\n        return torch.zeros(1, 4, 4), i % 2\n"
        "class Ready(MyData):\n"
        "    def __init__(self):\n        super().__init__('.', size=8)\n", encoding="utf-8")
    ref = f"{tmp_path / 'mydata.py'}:MyData"
    with pytest.raises(TuduiError) as e:
        load_splits([ref])
    call = "MyData(root=..., size=...)"
    assert str(e.value) == (f"MyData is a Dataset class whose constructor needs arguments (root, size); --data "
                            f"FILE.py:NAME takes a dataset object or a function of no arguments: add `train_data = "
                            f"{call}` to {tmp_path / 'mydata.py'} and pass --data {tmp_path / 'mydata.py'}:train_data "
                            f"(or, in Python, tudui.train(data={call}, ...))")
    train, val, _ = load_splits([f"{tmp_path / 'mydata.py'}:Ready"], val_split=0.25)
    assert len(train) + len(val) == 8 and train.classes == ["0", "1"]
