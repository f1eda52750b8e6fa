"""Labels as they are (issue 30): several labels per image, and long-tailed classes, each part its own table.

Part `multi`: several labels per image, from real images: tudui's default multi-label run against the loop a learner
would write.
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

Part `long-tail`: long-tailed Fashion-MNIST, each --balance mode on the same data.
The training set is made long-tailed as CIFAR-10-LT is: class i of Fashion-MNIST's training set keeps
6000 x RATIO^(-i/9) of its images (a seeded choice; RATIO 100: 6,000 t-shirts down to 60 ankle boots, 14,886 in all),
written as the four IDX files of a `--data-root`, so tudui reads it through its own named-dataset loader; the test set
is Fashion-MNIST's balanced 10,000 images. tudui holds out its usual stratified 10% of the long-tailed training images
for validation, and every choice (best.pt included) is made on that validation split only. Each seed draws its own
subset and seeds its runs. The runs, tudui's defaults otherwise:
  today          --balance none --best-by top1: tudui before it looked at class sizes
  none           --balance none (best.pt by validation balanced accuracy: --best-by auto over 10x)
  sampler        --balance sampler (inverse-frequency draws)
  loss           --balance loss (inverse-frequency class weights)
  logit-adjust   --balance logit-adjust (tau 1)
  auto           --balance auto: what tudui does by default (its choice is in the last column)
The figure is balanced accuracy on the test set (the mean recall of the 10 classes; on a balanced test set, top-1);
the target: auto >= 3 points over none (mean over the seeds).

    .venv/bin/python benchmarks/labels.py [--quick] [--parts multi long-tail] [--ratio 100] [--seeds 0 1 2]
        [--modes ...] [--head N] [--epochs N] [--mosaics TRAIN TEST] [--workdir DIR]

The default is both full parts (the long-tailed one: 6 modes x 3 seeds of ~15,000 images at tudui's default
length); the flags run a part of them (benchmarks/README.md says which part its figures are).
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

from tudui.core.config import load_yaml  # noqa: E402  (_common put this checkout's src/ first)
from tudui.data.sources import FASHION_CLASSES  # noqa: E402
from tudui.engine.multilabel import best_thresholds  # noqa: E402

MODES = {"today": {"balance": "none", "best_by": "top1"}, "none": {"balance": "none"},
         "sampler": {"balance": "sampler"}, "loss": {"balance": "loss"}, "logit-adjust": {"balance": "logit-adjust"},
         "auto": {}}
HEAD = 6000  # training images of class 0 (all of them); class i keeps HEAD x ratio^(-i/9)
QUICK = {"head": 200, "seeds": [0], "test": C.QUICK_TEST, "epochs": 1}  # 200 down to 2 images a class
TARGET_GAIN = 3.0  # points of test balanced accuracy, auto over none


def long_tailed_counts(head: int, ratio: float, classes: int = 10) -> list[int]:
    """Images kept of each class: head x ratio^(-i / (classes - 1)), rounded down (CIFAR-10-LT's profile)."""
    return [int(head * ratio ** (-i / (classes - 1))) for i in range(classes)]


def long_tailed_root(work: Path, head: int, ratio: float, seed: int, test: int | None) -> tuple[str, list[int]]:
    """A `data_root` whose fashion-mnist/ holds the long-tailed training set (a seeded choice of each class's images)
    and the test set (all 10,000, or a seeded `test`-image subset), as IDX files; written once. Returns (the root,
    the training images per class)."""
    counts = long_tailed_counts(head, ratio)
    root = work / (f"long-tailed-{head}-{ratio:g}-{seed}" + ("" if test is None else f"-test{test}"))
    folder = root / "fashion-mnist"
    if not (folder / "t10k-labels-idx1-ubyte").is_file():  # the last file written: the set is complete
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = C.load_fmnist(True)
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(counts)]))
        test_images, test_labels = C.load_fmnist(False, test, seed)
        for prefix, x, y in (("train", images[keep], labels[keep]), ("t10k", test_images, test_labels)):
            (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
                bytes([0, 0, 8, 3]) + np.array([len(x), 28, 28], ">u4").tobytes() + x.tobytes())
            (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
                bytes([0, 0, 8, 1]) + np.array([len(y)], ">u4").tobytes() + y.astype(np.uint8).tobytes())
    return str(root), counts


def run(root: str, seed: int, project: str, options: dict) -> tuple[float, float, float, str]:
    """(test balanced accuracy %, test top-1 %, seconds, what the run chose) of one tudui run."""
    t0 = time.perf_counter()
    r = C.tudui.train(data=["fashion-mnist"], data_root=root, seed=seed, project=project, name="run", exist_ok=True,
                      plots=False, tensorboard=False, **options)
    cfg = load_yaml(r.run_dir / "config.yaml")
    return (100 * r.test["balanced_accuracy"], 100 * r.test["top1"], time.perf_counter() - t0,
            f"{cfg['balance']}, best by {cfg['best_by']}")


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
        C.course_epoch(model, loader, loss_fn, opt)  # the hand-written loop, as time_to_accuracy.py's course runs it
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
    sizes = QUICK_SIZES if args.quick else \
        (dict(zip(("train", "test"), args.mosaics)) if args.mosaics else SIZES)
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
    # tudui's columns follow its classes (the CSV's names, sorted); the test rows' follow Fashion-MNIST's label order
    column = [predictor.classes.index(name) for name in FASHION_CLASSES]
    ours = figures(scores[:, column], data["test"][1], np.array(predictor.thresholds)[column])

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


def long_tailed(args, work: Path) -> list[list[str]]:
    """The long-tailed comparison; prints its table and returns the targets' rows."""
    plan = {"head": args.head, "seeds": args.seeds, "test": None, "epochs": args.epochs} | (QUICK if args.quick else {})
    counts = long_tailed_counts(plan["head"], args.ratio)
    print(f"Long-tailed Fashion-MNIST (ratio {args.ratio:g}): training images per class {counts} ({sum(counts):,}; "
          f"tudui holds out 10% of each for validation), test {plan['test'] or 10_000:,} balanced, seeds "
          f"{plan['seeds']}, epochs {plan['epochs'] or 'auto'}\n", flush=True)
    got: dict[str, list[tuple[float, float, float, str]]] = {m: [] for m in args.modes}
    for seed in plan["seeds"]:
        root, _ = long_tailed_root(work, plan["head"], args.ratio, seed, plan["test"])
        for mode in args.modes:
            options = MODES[mode] | ({"epochs": plan["epochs"]} if plan["epochs"] else {})
            got[mode].append(run(root, seed, str(work / "runs"), options))
            print(f"seed {seed} {mode}: test balanced accuracy {got[mode][-1][0]:.2f}%, top-1 "
                  f"{got[mode][-1][1]:.2f}%", flush=True)
    rows = []
    for mode, results in got.items():
        rows.append([mode, " ".join(f"{b:.2f}" for b, _, _, _ in results), f"{np.mean([r[0] for r in results]):.2f}",
                     f"{np.mean([r[1] for r in results]):.2f}", f"{C.median([r[2] for r in results]):.1f}",
                     "; ".join(dict.fromkeys(r[3] for r in results))])
    print(f"\ntest balanced accuracy % per seed {plan['seeds']} and its mean, test top-1 % mean, median seconds per "
          "run, and what each run chose")
    print(C.table(["mode", "balanced acc per seed", "mean", "top-1 mean", "s per run", "balance, best.pt"], rows))
    print()
    verdicts = []
    if "auto" in got and "none" in got:
        gain = np.mean([r[0] for r in got["auto"]]) - np.mean([r[0] for r in got["none"]])
        verdicts.append([f"--balance auto >= {TARGET_GAIN:g} points of balanced accuracy over none",
                         f"{gain:+.2f} points", C.verdict(None if args.quick else gain >= TARGET_GAIN)])
    return verdicts


PARTS = {"multi": multi_label, "long-tail": long_tailed}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], "smoke test: 200 training and 100 test mosaics, 1 epoch; 200 images of "
                 f"class 0 down to 2 of class 9, {C.QUICK_TEST} test images, 1 epoch, 1 seed (the figures mean nothing)")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="which comparisons [both]")
    p.add_argument("--ratio", type=float, default=100.0, help="long-tail: largest class / smallest class [100]")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="long-tail: seeds (each draws its own subset) [0 1 2]")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="long-tail: runs [all]")
    p.add_argument("--head", type=int, default=HEAD, help=f"long-tail: training images of class 0 [{HEAD}]")
    p.add_argument("--epochs", type=int, default=None, help="long-tail: epochs of every run [tudui's auto]")
    p.add_argument("--mosaics", nargs=2, type=int, metavar=("TRAIN", "TEST"), default=None,
                   help=f"multi: training and test mosaics [{SIZES['train']} {SIZES['test']}]")
    args = p.parse_args()
    C.header("Labels as they are: several labels per image, long-tailed classes (benchmarks/labels.py)", args.quick)
    rows = []
    with C.workdir(args, "tudui-labels-") as work:
        for part in args.parts:
            rows += PARTS[part](args, work)
    print("targets (means over the seeds)")
    print(C.table(["target", "measured", "verdict"], rows))


if __name__ == "__main__":
    main()
