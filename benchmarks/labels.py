"""Labels as they are: long-tailed Fashion-MNIST, each --balance mode on the same data.

The training set is made long-tailed as CIFAR-10-LT is: class i of Fashion-MNIST's training set keeps
6000 x RATIO^(-i/9) of its images (a seeded choice; RATIO 100: 6,000 t-shirts down to 60 ankle boots, 14,899 in all),
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

    .venv/bin/python benchmarks/labels.py [--quick] [--ratio 100] [--seeds 0 1 2] [--modes ...] [--epochs N]
        [--workdir DIR]

The default is the full table (6 modes x 3 seeds of ~15,000 images at tudui's default length); the flags run a part
of it (benchmarks/README.md says which part its figures are).
"""
from __future__ import annotations

import time
from pathlib import Path

import _common as C
import numpy as np

from tudui.core.config import load_yaml

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


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], quick_help="smoke test: 200 images of class 0 down to 2 of class 9, "
                 f"{C.QUICK_TEST} test images, 1 epoch, 1 seed (the figures mean nothing)")
    p.add_argument("--ratio", type=float, default=100.0, help="largest class / smallest class [100]")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (each draws its own subset) [0 1 2]")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="runs [all]")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run [tudui's auto]")
    args = p.parse_args()
    plan = {"head": HEAD, "seeds": args.seeds, "test": None, "epochs": args.epochs} | (QUICK if args.quick else {})
    counts = long_tailed_counts(plan["head"], args.ratio)
    C.header(f"long-tailed Fashion-MNIST (ratio {args.ratio:g}): each --balance mode", args.quick)
    print(f"training images per class {counts} ({sum(counts):,}; tudui holds out 10% of each for validation), test "
          f"{plan['test'] or 10_000:,} balanced, seeds {plan['seeds']}, epochs {plan['epochs'] or 'auto'}\n", flush=True)
    got: dict[str, list[tuple[float, float, float, str]]] = {m: [] for m in args.modes}
    with C.workdir(args) as work:
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
    verdicts = []
    if "auto" in got and "none" in got:
        gain = np.mean([r[0] for r in got["auto"]]) - np.mean([r[0] for r in got["none"]])
        verdicts.append([f"--balance auto >= {TARGET_GAIN:g} points of balanced accuracy over none",
                         f"{gain:+.2f} points", C.verdict(None if args.quick else gain >= TARGET_GAIN)])
    if verdicts:
        print("\ntargets (means over the seeds)")
        print(C.table(["target", "measured", "verdict"], verdicts))


if __name__ == "__main__":
    main()
