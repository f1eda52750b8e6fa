"""The tool a user would pick instead: Ultralytics' `yolo classify` against tudui's default, same folders, one run.

Fashion-MNIST is written once as PNG class folders the way an Ultralytics user lays out a dataset (train/ = the
60,000 training images, val/ = the 10,000 test images). Then, one after the other on this machine:
  - Ultralytics: `yolo classify train model=yolov8n-cls.yaml` (built from its YAML, no pretrained weights),
    imgsz=32, its default recipe otherwise, device=cpu, 10 epochs, YOLO_OFFLINE=1; run from a separate virtual
    environment (`--yolo`, made by `make bench`: Ultralytics is a benchmark tool, never a tudui dependency);
  - tudui: `tudui train --data FOLDER` with its defaults (it validates on val/, as Ultralytics does).
Each tool's wall time per epoch is when its results.csv gains that epoch's row, timed by this script from the
moment the command starts (start-up included, for both). Printed: per-epoch time and top-1 for both, and how
long each takes to reach the other's final accuracy.

    python benchmarks/peers.py --yolo .venv-peers/bin/yolo [--epochs 10] [--quick] [--workdir DIR]
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import _common as C

from tudui.data.export_images import export_images

TARGET_SOONER = 50.0  # issue 17: tudui reaches Ultralytics' 10-epoch accuracy >= 50x sooner
TARGET_POINTS = 5.0  # ... and ends at least 5 points higher


def write_folders(root: Path, quick: bool) -> Path:
    """root/train/<class>/*.png (60,000) and root/val/<class>/*.png (10,000), written once and reused."""
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        export_images("fashion-mnist", str(root / "train"), "train", C.QUICK_SUBSET if quick else None)
        export_images("fashion-mnist", str(root / "val"), "test", C.QUICK_TEST if quick else None)
        done.write_text("ok\n")
    return root


def watch(cmd: list[str], results: Callable, env: dict, cwd: Path, log: Path) -> list[dict]:
    """Run `cmd`; each time results() has a new row, note the seconds since start. Returns the rows + 'seconds'."""
    seen: list[dict] = []
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            rows = results()
            for row in rows[len(seen):]:
                seen.append(row | {"seconds": time.perf_counter() - t0})
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    for row in results()[len(seen):]:  # rows written in the last moments
        seen.append(row | {"seconds": time.perf_counter() - t0})
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed (exit {proc.returncode}); its output: {log}")
    return seen


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k.strip(): v.strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def first_time(rows: list[dict], key: str, acc: float) -> float | None:
    return next((r["seconds"] for r in rows if float(r[key]) >= acc), None)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--yolo", default=str(C.ROOT / ".venv-peers" / "bin" / "yolo"),
                   help="the `yolo` command of a separate environment with ultralytics installed")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", default=None,
                   help="where the PNG folders are written (kept for the next run) [WORKDIR/fashion-mnist-folders]")
    args = p.parse_args()
    if not Path(args.yolo).exists():
        sys.exit(f"{args.yolo} not found: make bench creates it (python -m venv .venv-peers && "
                 ".venv-peers/bin/pip install ultralytics)")
    args.yolo = str(Path(args.yolo).absolute())  # the tools run in a scratch folder: a relative path would miss
    epochs = 1 if args.quick else args.epochs
    C.header(f"peers: Ultralytics yolov8n-cls vs tudui default, Fashion-MNIST PNG folders, {epochs} epoch(s)",
             args.quick)
    env = os.environ | {"YOLO_OFFLINE": "1", "PYTHONPATH": str(C.ROOT / "src")}
    with C.workdir(args) as tmp:
        folders = Path(args.data) if args.data else tmp / "fashion-mnist-folders"
        data = write_folders(Path(str(folders) + ("-quick" if args.quick else "")).absolute(), args.quick)
        for scratch in ("yolo", "tudui", "decoded"):  # a kept --workdir: each run starts from nothing, cold cache
            shutil.rmtree(tmp / scratch, ignore_errors=True)
        yolo_dir = tmp / "yolo"
        yolo = watch([args.yolo, "classify", "train", f"data={data}", "model=yolov8n-cls.yaml", "pretrained=False",
                      "imgsz=32", f"epochs={epochs}", "device=cpu", "plots=False", f"project={yolo_dir}",
                      "name=train", "exist_ok=True"],
                     lambda: read_csv(yolo_dir / "train" / "results.csv"), env, tmp, tmp / "yolo.log")
        tudui_dir = tmp / "tudui"
        env["TUDUI_CACHE"] = str(tmp / "decoded")  # a cold decoded-image cache: tudui's first run on these folders
        tud = watch([sys.executable, "-m", "tudui", "train", "--data", str(data), "--project", str(tudui_dir),
                     "--name", "run", "--no-plots"] + (["--epochs", "1"] if args.quick else []),
                    lambda: read_csv(tudui_dir / "run" / "results.csv"), env, tmp, tmp / "tudui.log")
    y_acc = [100 * float(r["metrics/accuracy_top1"]) for r in yolo]
    t_acc = [100 * float(r["val_top1"]) for r in tud]
    n = max(len(yolo), len(tud))
    rows = []
    for i in range(n):
        y = f"{yolo[i]['seconds']:.1f} s, {y_acc[i]:.2f}%" if i < len(yolo) else ""
        t = f"{tud[i]['seconds']:.1f} s, {t_acc[i]:.2f}%" if i < len(tud) else ""
        rows.append([i + 1, y, t])
    print(C.table(["epoch", "Ultralytics yolov8n-cls (wall, val top-1)", "tudui default (wall, val top-1)"], rows,
                  ">>>"))
    y_final, t_final = y_acc[-1], t_acc[-1]
    t_reach = first_time(tud, "val_top1", y_final / 100)
    y_reach = first_time(yolo, "metrics/accuracy_top1", t_final / 100)
    sooner = yolo[-1]["seconds"] / t_reach if t_reach else None
    print(f"\nUltralytics ends at {y_final:.2f}% after {yolo[-1]['seconds']:.1f} s; tudui passes that at "
          + (f"{t_reach:.1f} s: {sooner:.1f}x sooner" if t_reach else "no epoch (never)"))
    print(f"tudui ends at {t_final:.2f}% after {tud[-1]['seconds']:.1f} s; Ultralytics reaches that "
          + (f"at {y_reach:.1f} s" if y_reach else "in none of its epochs"))
    print(C.table(["target", "measured", "verdict"], [
        [f"tudui reaches Ultralytics' final accuracy >= {TARGET_SOONER:g}x sooner",
         f"{sooner:.1f}x" if sooner else "never", C.verdict(None if args.quick else bool(sooner and sooner >= TARGET_SOONER))],
        [f"tudui ends >= {TARGET_POINTS:g} points higher", f"{t_final - y_final:+.2f} points",
         C.verdict(None if args.quick else t_final - y_final >= TARGET_POINTS)],
    ], "<<<"))
    given = "1 epoch" if args.quick else "its default epochs"
    print("given: both tools their own defaults; Ultralytics imgsz=32, no pretrained weights, device=cpu, "
          f"{epochs} epochs; tudui `tudui train --data FOLDER` ({given} and recipe, decoding the PNGs on its first "
          "run: empty $TUDUI_CACHE), same machine, one after the other")


if __name__ == "__main__":
    main()
