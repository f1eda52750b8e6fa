"""Pictures: the confusion matrix draws the numbers it is given, grids pick the right images, PNGs open."""
import numpy as np
import torch
from PIL import Image

from tudui.reporting.plots import (confident_mistakes, plot_batch, plot_confusion, plot_curves, plot_mistakes,
                                   read_confusion_csv, read_results, write_confusion_csv)


def _open(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_confusion_is_row_normalised_and_legible_with_100_classes(tmp_path):
    cm = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    drawn = plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png", "val")
    assert np.allclose(drawn, [[0.8, 0.2, 0], [0, 0, 0], [0.25, 0.25, 0.5]])  # an empty row stays 0, not NaN
    w, h = _open(tmp_path / "cm.png")
    assert 400 < w < 1500 and 400 < h < 1500

    rng = np.random.default_rng(0)
    big = rng.integers(0, 5, (100, 100)) + np.diag(rng.integers(50, 100, 100))
    names = [f"class_{i:03d}" for i in range(100)]
    drawn = plot_confusion(big, names, tmp_path / "cm100.png")
    assert np.allclose(drawn.sum(1), 1) and np.allclose(drawn, big / big.sum(1, keepdims=True))
    w, h = _open(tmp_path / "cm100.png")
    assert w >= 1500 and h >= 1500  # grows with the class count: ~18 px per row at 100 classes

    write_confusion_csv(big, names, tmp_path / "cm.csv")
    assert read_confusion_csv(tmp_path / "cm.csv") == (names, big.tolist())


def test_confident_mistakes_keeps_the_most_confident_wrong(tmp_path):
    x = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 4, 4)  # image i is filled with value i
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.45, 0.55]])
    y = torch.tensor([0, 0, 1, 1, 1, 0])  # wrong: 1 (0.8), 2 (0.6), 4 (0.95), 5 (0.55)
    got = confident_mistakes([(x[:3], probs[:3], y[:3]), (x[3:], probs[3:], y[3:])], k=3)
    assert [round(c, 2) for c, *_ in got] == [0.95, 0.8, 0.6]
    assert [int(img[0, 0, 0]) for _, img, _, _ in got] == [4, 1, 2]
    assert [(t, p) for _, _, t, p in got] == [(1, 0), (0, 1), (1, 0)]
    plot_mistakes(got, ["cat", "dog"], tmp_path / "m.png")
    assert min(_open(tmp_path / "m.png")) > 100


def test_curves_and_batch(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,train_loss,val_loss,val_top1,val_top5,lr,epoch_time_s,images_per_s\n"
                   "1,2.0,1.5,0.5,0.9,0.1,1,100\n2,1.0,,,,0.05,1,100\n")
    rows = read_results(csv)
    assert rows[1]["train_loss"] == 1.0 and np.isnan(rows[1]["val_loss"])  # no validation -> a gap, not a crash
    plot_curves(rows, tmp_path / "curves.png")
    w, h = _open(tmp_path / "curves.png")
    assert w > 2 * h > 400
    plot_batch(torch.rand(10, 3, 8, 8), torch.arange(10) % 2, ["cat", "dog"], tmp_path / "b.png")
    assert min(_open(tmp_path / "b.png")) > 100
