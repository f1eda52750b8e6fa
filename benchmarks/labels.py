"""Several labels per image, from real images: tudui's default multi-label run against the loop a learner would write.

Data: 56x56 mosaics of 2x2 real Fashion-MNIST items, each mosaic 1 to 4 distinct classes (a seeded draw: the number
of classes uniform in 1..4, the four cells covering every one of them, each cell a random item of its class), 20,000
built from the training items and 4,000 from the test items, written as PNG files with a CSV `image_id,labels`
(`Ankle boot|Bag`), as a user's multi-label data arrives.
  * tudui: `tudui train --data train.csv` with its defaults (the task, the model, the batch, the epochs: auto), then
    `tudui eval` on the test CSV at the thresholds chosen on tudui's validation split;
  * the loop: torchvision `resnet18` from scratch (1 input channel, 10 outputs), BCEWithLogits, Adam at 1e-3, a PIL
    Dataset through a DataLoader (batch 64), 10 epochs, sigmoid > 0.5; thresholds for it are chosen on the same 10%
    of its training mosaics tudui holds out (each class's best F1 there), so both are read at 0.5 and tuned.
mAP is scikit-learn's `average_precision_score(average="macro")`, macro-F1 its `f1_score(average="macro")`, both on
the test mosaics. Wall time covers training and the test pass (the mosaics are written once, before either).

    .venv/bin/python benchmarks/labels.py [--quick] [--workdir DIR]
"""
from __future__ import annotations

import time
from pathlib import Path

import _common as C
import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score

from tudui.data.sources import FASHION_CLASSES  # noqa: E402  (_common put this checkout's src/ first)
from tudui.engine.multilabel import best_thresholds  # noqa: E402

SIZES = {"train": 20_000, "test": 4_000}
QUICK_SIZES = {"train": 200, "test": 100}
LOOP_EPOCHS, LOOP_BATCH, LOOP_LR = 10, 64, 1e-3


def mosaics(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 56, 56) uint8 mosaics of 2x2 items and their (n, 10) multi-hot labels (1 to 4 classes each)."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    out, hot = np.zeros((n, 56, 56), np.uint8), np.zeros((n, 10), np.float32)
    for i in range(n):
        k = rng.integers(1, 5)
        classes = rng.choice(10, k, replace=False)
        cells = np.concatenate([classes, rng.choice(classes, 4 - k)])  # every class at least once
        rng.shuffle(cells)
        for j, c in enumerate(cells):
            r, q = divmod(j, 2)
            out[i, 28 * r:28 * r + 28, 28 * q:28 * q + 28] = images[rng.choice(by_class[c])]
        hot[i, classes] = 1
    return out, hot


def write_csv(root: Path, split: str, images: np.ndarray, hot: np.ndarray) -> Path:
    """The mosaics as PNG files under root/split/ and root/split.csv (`image_id,labels`, names joined by |)."""
    csv = root / f"{split}.csv"
    if not csv.is_file():
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = ["image_id,labels"]
        for i, (im, h) in enumerate(zip(images, hot)):
            Image.fromarray(im).save(root / split / f"{i:05d}.png")
            rows.append(f"{split}/{i:05d}.png," + "|".join(FASHION_CLASSES[c] for c in np.flatnonzero(h)))
        tmp = csv.with_suffix(".tmp")
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        tmp.rename(csv)  # the CSV last: its presence says every image is there
    return csv


class Mosaics(torch.utils.data.Dataset):
    """The learner's Dataset: one PIL image at a time through ToTensor, the multi-hot row as the target."""

    def __init__(self, images: np.ndarray, hot: np.ndarray) -> None:
        self.images, self.hot = images, hot
        self.to_tensor = torchvision.transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.hot)

    def __getitem__(self, i: int):
        return self.to_tensor(Image.fromarray(self.images[i])), torch.from_numpy(self.hot[i])


@torch.no_grad()
def loop_scores(model: nn.Module, images: np.ndarray, hot: np.ndarray) -> np.ndarray:
    model.eval()
    loader = torch.utils.data.DataLoader(Mosaics(images, hot), batch_size=256)
    return torch.cat([model(x).sigmoid() for x, _ in loader]).numpy()


def learner_loop(train: tuple, val: tuple, test: tuple, epochs: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(test probabilities, thresholds chosen on `val`, seconds) of the hand-written loop."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    loader = torch.utils.data.DataLoader(Mosaics(*train), batch_size=LOOP_BATCH, shuffle=True)
    loss_fn, opt = nn.BCEWithLogitsLoss(), torch.optim.Adam(model.parameters(), lr=LOOP_LR)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    scores = loop_scores(model, *test)
    seconds = time.perf_counter() - t0
    th = best_thresholds(torch.from_numpy(loop_scores(model, *val)), torch.from_numpy(val[1])).numpy()
    return scores, th, seconds


def figures(scores: np.ndarray, hot: np.ndarray, th: np.ndarray) -> dict[str, float]:
    present = hot.sum(0) > 0
    return {"map": 100 * average_precision_score(hot[:, present], scores[:, present], average="macro"),
            "f1_05": 100 * f1_score(hot, scores >= 0.5, average="macro", zero_division=0),
            "f1_tuned": 100 * f1_score(hot, scores >= th[None, :], average="macro", zero_division=0)}


def multi_label(args, work: Path) -> list[list[str]]:
    """The multi-label comparison; prints its table and returns the targets' rows."""
    sizes = QUICK_SIZES if args.quick else SIZES
    data = {}
    for split, is_train in (("train", True), ("test", False)):
        images, labels = C.load_fmnist(is_train)
        data[split] = mosaics(images, labels, sizes[split], seed=is_train)
    root = work / f"mosaics-{sizes['train']}"
    csvs = {s: write_csv(root, s, *data[s]) for s in data}

    t0 = time.perf_counter()
    run = C.tudui.train(data=[str(csvs["train"])], project=str(work / "runs"), name="tudui", exist_ok=True,
                        plots=False, tensorboard=False, **({"epochs": 1} if args.quick else {}))
    predictor = C.tudui.Predictor.from_path(run.best, device="cpu")
    files = [str(root / "test" / f"{i:05d}.png") for i in range(sizes["test"])]
    x = torch.cat([predictor.preprocess(files[i:i + 512]) for i in range(0, len(files), 512)])
    scores = torch.cat([predictor.probabilities(x[i:i + 512]) for i in range(0, len(x), 512)]).numpy()
    tudui_s = time.perf_counter() - t0
    ours = figures(scores, data["test"][1], np.array(predictor.thresholds))

    # the loop holds out the same share tudui does (10%, seeded) to choose its thresholds
    n = len(data["train"][1])
    held = np.random.default_rng(0).permutation(n)[: n // 10]
    keep = np.setdiff1d(np.arange(n), held)
    train = tuple(a[keep] for a in data["train"])
    val = tuple(a[held] for a in data["train"])
    loop_probs, loop_th, loop_s = learner_loop(train, val, data["test"], 1 if args.quick else LOOP_EPOCHS)
    loop = figures(loop_probs, data["test"][1], loop_th)

    epochs = len(run.history)
    rows = [[f"tudui default ({run.model}, {epochs} epochs)",
             f"{ours['map']:.1f}%", f"{ours['f1_05']:.1f}%", f"{ours['f1_tuned']:.1f}%", f"{tudui_s:.0f}"],
            [f"learner's loop (resnet18, BCE, Adam, {1 if args.quick else LOOP_EPOCHS} epochs)",
             f"{loop['map']:.1f}%", f"{loop['f1_05']:.1f}%", f"{loop['f1_tuned']:.1f}%", f"{loop_s:.0f}"]]
    print(f"Multi-label mosaics: {sizes['train']:,} training, {sizes['test']:,} test (2x2 Fashion-MNIST items, "
          "1 to 4 classes each)")
    print(C.table(["run", "test mAP", "macro-F1 at 0.5", "macro-F1 tuned", "wall s"], rows))
    print()
    ratio = tudui_s / max(loop_s, 1e-9)
    return [["tudui mAP >= the loop's", f"{ours['map']:.1f}% vs {loop['map']:.1f}%",
             C.verdict(ours["map"] >= loop["map"])],
            ["... in <= 0.5x its time", f"{ratio:.2f}x", C.verdict(ratio <= 0.5)],
            ["tuned thresholds raise tudui's macro-F1 over 0.5",
             f"{ours['f1_tuned'] - ours['f1_05']:+.1f} points", C.verdict(ours["f1_tuned"] > ours["f1_05"])]]


def main() -> None:
    args = C.parser(__doc__.splitlines()[0], "smoke test: 200 training and 100 test mosaics, 1 epoch each "
                                             "(the figures mean nothing)").parse_args()
    C.header("Several labels per image (benchmarks/labels.py)", args.quick)
    with C.workdir(args, "tudui-labels-") as work:
        rows = multi_label(args, work)
    print(C.table(["target", "measured", "verdict"], rows))


if __name__ == "__main__":
    main()
