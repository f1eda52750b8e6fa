"""Does `tudui lr-find` recommend a rate that trains as well as the default? Its suggestion against the default 3e-3.

For each dataset x model x seed: `tudui lr-find` on the run's own data and model (that seed), then two training runs
with the same seed and recipe (tudui's defaults: AdamW, one-cycle, N epochs), one at the suggested rate, one at the
default --lr 3e-3. "recommended" is what lr-find tells the user to use (and `--lr auto` uses): the suggestion, or the
default where lr-find says the default is already as good a choice. Test top-1 is read at the end of each run (its
best epoch, chosen on its validation split); test-time augmentation is off in both arms, to save time.
Datasets (all real, all local): scikit-learn's digits; a seeded 5,000-image Fashion-MNIST subset (tested on its 10,000
test images); a PNG class folder written from Fashion-MNIST (seeded random 2,000 train and 1,000 test images; 10% of
train held out).

    .venv/bin/python benchmarks/lr_find_rule.py [--quick] [--epochs N] [--seeds 0 1 2] [--workdir DIR]
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import _common as C
import numpy as np
from PIL import Image

from tudui import api  # noqa: E402  (_common put this checkout's src/ first)

DEFAULT_LR = 3e-3
COMMON = {"plots": False, "tensorboard": False, "tta": False, "exist_ok": True}


def png_folder(root: Path, train: int, test: int, per_class: bool = False) -> Path:
    """Fashion-MNIST as PNG class folders: train/ (`train` images) and test/ (`test` images), written once; a seeded
    random subset of each split, or with `per_class` the first train // 10 (test // 10) images of each class (so that
    a tiny folder still has every class in both splits)."""
    if not (root / ".complete").exists():
        for split, n, is_train in (("train", train, True), ("test", test, False)):
            if per_class:
                images, labels = C.load_fmnist(is_train)
                keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n // 10] for c in range(10)]))
                images, labels = images[keep], labels[keep]
            else:
                images, labels = C.load_fmnist(is_train, n, seed=0)
            for i, (im, y) in enumerate(zip(images, labels)):
                (root / split / f"class{y}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(im).save(root / split / f"class{y}" / f"{i:05d}.png")
        (root / ".complete").write_text("ok\n")
    return root


def datasets(workdir: Path, quick: bool) -> dict[str, dict]:
    if quick:  # literal small sizes: the script's path end to end in seconds (the PNG folder: 30 images, 1 epoch)
        return {"digits-300": {"data": "digits", "subset": 300},
                "fmnist-png-30": {"data": str(png_folder(workdir / "fmnist-png-quick", 20, 10, per_class=True))}}
    return {"digits": {"data": "digits"},
            "fmnist-png-2k": {"data": str(png_folder(workdir / "fmnist-png", 2000, 1000))},
            "fmnist-5k": {"data": "fashion-mnist", "subset": 5000}}


def top1(project: str, name: str, seed: int, lr: float, options: dict) -> float:
    r = C.tudui.train(project=project, name=name, seed=seed, lr=lr, **COMMON, **options)
    return 100 * r.test["top1"]


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], "smoke test: digits (300 images) and a 30-image PNG folder, model fast, "
                                          "1 seed, 1 epoch, a 10-step range test (the figures mean nothing)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each training run [3]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds [0 1 2]")
    p.add_argument("--models", nargs="+", default=["fast", "mnist-cnn"], help="models [fast mnist-cnn]")
    args = p.parse_args()
    C.header("lr-find's suggestion against the default --lr 3e-3 (one-cycle, test top-1)", args.quick)
    seeds = args.seeds[:1] if args.quick else args.seeds
    models = args.models[:1] if args.quick else args.models
    epochs, steps = (1, 10) if args.quick else (args.epochs, 100)
    print(f"{epochs} epochs per run, seeds {' '.join(map(str, seeds))}, range test of {steps} steps; the machine was "
          "shared, so times are not comparable\n", flush=True)
    rows, gaps = [], []
    with C.workdir(args) as workdir:
        project = str(workdir / "runs")
        for dname, data in datasets(workdir, args.quick).items():
            for model in models:
                options = {"model": model, "epochs": epochs, **data}
                sugg, keep, with_s, with_d, rec = [], [], [], [], []
                t0 = time.perf_counter()
                for seed in seeds:
                    found, _ = api.lr_find(project=project, name="lr-find", seed=seed, steps=steps,
                                           **COMMON, **options)
                    s = float(f"{found.suggestion:.3g}")
                    d = top1(project, "default", seed, DEFAULT_LR, options)
                    a = d if s == DEFAULT_LR else top1(project, "suggested", seed, s, options)
                    sugg.append(s), keep.append(found.keep_default), with_s.append(a), with_d.append(d)
                    rec.append(d if found.keep_default else a)
                    print(f"  {dname} {model} seed {seed}: suggestion {s:.3g} (steep {found.steep:.3g}, valley "
                          f"{found.valley:.3g}, minimum {found.minimum:.3g}; keep default: {found.keep_default}) "
                          f"-> {a:.2f}%, default -> {d:.2f}%", flush=True)
                gaps.append(statistics.mean(rec) - statistics.mean(with_d))
                rows.append([f"{dname} x {model}", " ".join(f"{v:.3g}" for v in sugg),
                             " ".join("yes" if k else "no" for k in keep),
                             " ".join(f"{v:.2f}" for v in with_s) + f" (mean {statistics.mean(with_s):.2f})",
                             " ".join(f"{v:.2f}" for v in with_d) + f" (mean {statistics.mean(with_d):.2f})",
                             f"{gaps[-1]:+.2f}", f"{time.perf_counter() - t0:.0f}"])
    print()
    print(C.table(["dataset x model", "suggested lr (per seed)", "keep default?", "top-1 % with suggestion",
                   "top-1 % with default 3e-3", "recommended - default (points)", "time s"], rows))
    print(f"\nrecommended vs default: the rate lr-find recommends (its suggestion, or the default where it says to "
          f"keep it) is {min(gaps):+.2f} to {max(gaps):+.2f} points of mean test top-1 from the default's "
          f"over {len(rows)} dataset x model pairs", flush=True)


if __name__ == "__main__":
    main()
