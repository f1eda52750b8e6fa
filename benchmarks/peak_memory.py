"""Peak resident memory of a Fashion-MNIST training run, measured as the child process's own peak (VmHWM).

Two children run one after the other:
  - floor: a Python that only imports torch and torchvision (what any PyTorch training pays);
  - tudui: `tudui train --data fashion-mnist --epochs 1` from this checkout.

    .venv/bin/python benchmarks/peak_memory.py [--quick] [--epochs 1]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import _common as C

TARGET_MIB = 2048  # issue 4: peak resident memory of a Fashion-MNIST training run <= 2 GiB


def peak_rss(cmd: list[str], work: Path) -> tuple[float, float]:
    """(peak resident MiB, wall s) of a child `python ARGS` (cmd[0] is this Python); its output goes through to ours."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(C.ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    mib, code = C.peak_rss_mib(cmd[1:], env=env, hwm_dir=work)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}")
    return mib, time.perf_counter() - t0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="epochs of the measured training run [1]")
    args = p.parse_args()
    C.header("peak resident memory of a Fashion-MNIST training run", args.quick)

    with C.workdir(args, prefix="tudui-bench-") as work:
        project = str(work)
        train = [sys.executable, "-m", "tudui", "train", "--data", "fashion-mnist", "--epochs", str(args.epochs),
                 "--project", project, "--name", "mem"] + (["--data-root", C.quick_data_root(work)] if args.quick else [])
        floor = [sys.executable, "-c", "import torch, torchvision"]
        label = f"tudui train --data fashion-mnist --epochs {args.epochs}" + \
            (f" (--quick: a {C.QUICK_SUBSET:,}-image copy)" if args.quick else "")
        results = {"floor: import torch, torchvision": peak_rss(floor, work), label: peak_rss(train, work)}

    floor_mib = results[next(iter(results))][0]
    rows = [[k, f"{mib:,.0f}", f"{mib / floor_mib:.1f}x", f"{wall:.1f}"] for k, (mib, wall) in results.items()]
    print("\npeak resident memory (VmHWM of the child process)")
    print(C.table(["process", "peak MiB", "/ floor", "wall s"], rows))
    mib = list(results.values())[-1][0]
    print("\ntargets (issue 4)")
    print(C.table(["target", "measured", "verdict"],
                  [["peak resident memory <= 2 GiB", f"{mib:,.0f} MiB", C.verdict(mib <= TARGET_MIB)]]))


if __name__ == "__main__":
    main()
