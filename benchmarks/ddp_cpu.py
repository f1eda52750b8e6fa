"""1 process vs N processes (DDP, gloo) on this machine's CPU: time per epoch and throughput, side by side.

    python benchmarks/ddp_cpu.py [--data fashion-mnist] [--subset 12000] [--epochs 2] [--nproc 2] [--quick]
                                 [--workdir DIR]

Each configuration is a real `tudui train` run (in --workdir, by default a temporary folder); the figures come
from its results.csv (epoch_time_s = the slowest rank's time, images_per_s = images of all ranks / that time).
The first epoch includes warm-up, so the last epoch is reported.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

SRC = C.ROOT / "src"


def run(nproc: int, args: argparse.Namespace, project: Path) -> dict:
    name = f"p{nproc}"
    cmd = [sys.executable, "-m", "tudui", "train", "--data", args.data, "--model", args.model, "--epochs",
           str(args.epochs), "--batch-size", str(args.batch_size), "--device", "cpu", "--project", str(project),
           "--name", name, "--nproc", str(nproc)]
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    if nproc == 1 and not args.quick:  # torchrun gives each of N>1 processes one thread; one process gets all the
        env.pop("OMP_NUM_THREADS", None)  # cores (--quick: the smoke test's setting, whose figures mean nothing)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    rows = list(csv.DictReader(open(project / name / "results.csv")))
    last = rows[-1]
    return {"epoch_s": float(last["epoch_time_s"]), "img_s": float(last["images_per_s"]),
            "top1": float(last["val_top1"]), "wall_s": wall}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0],
                 f"smoke test: 1 epoch on {C.QUICK_SUBSET:,} images (the figures mean nothing)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None, help="where the named dataset's files are [tudui's search]")
    p.add_argument("--subset", type=int, default=12000, help="training images (0: all)")
    p.add_argument("--model", default="fast")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.subset, args.epochs = C.QUICK_SUBSET, 1
        print("[--quick smoke test: figures are not measurements]")
    cores = os.cpu_count()
    with C.workdir(args) as work:
        if args.quick and args.data == "fashion-mnist":
            args.data_root = C.quick_data_root(work)
        one, many = run(1, args, work), run(args.nproc, args, work)
    n = args.nproc
    print(f"{args.data} ({args.subset or 'all'} train images), model {args.model}, batch {args.batch_size} per process, "
          f"{cores} CPU cores, last of {args.epochs} epochs")
    print(f"{'':28}{'1 process':>12}{f'{n} processes':>14}")
    print(f"{'global batch':28}{args.batch_size:>12}{args.batch_size * n:>14}")
    print(f"{'time per epoch (s)':28}{one['epoch_s']:>12.2f}{many['epoch_s']:>14.2f}")
    print(f"{'throughput (images/s)':28}{one['img_s']:>12.0f}{many['img_s']:>14.0f}")
    print(f"{'val top-1 after the run':28}{one['top1']:>12.2%}{many['top1']:>14.2%}")
    print(f"{'wall time incl. start-up (s)':28}{one['wall_s']:>12.1f}{many['wall_s']:>14.1f}")
    print(f"\nratio {many['img_s'] / one['img_s']:.2f}x. Both columns use the same {cores} cores: 1 process runs "
          f"intra-op threads on all of them, {n} processes run one thread each (torchrun's default) plus a gradient "
          "all-reduce per step. The ratio says which arrangement uses these cores better (and how busy the machine "
          "was), not how DDP scales: that needs one GPU per process or more machines.")


if __name__ == "__main__":
    main()
