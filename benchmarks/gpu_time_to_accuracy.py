"""Time to accuracy on one CUDA GPU: tudui's recipes on Fashion-MNIST, wall time from the start of training.

Issue 17's GPU target: 94% test top-1 within 10 s of wall time from the start of training (data resident on the
GPU: tudui holds the uint8 training set in GPU memory and augments whole batches there), and the time to 95%.
Each run's clock starts as `tudui.train` is called, so reading the IDX files, the first cuDNN autotuning,
validation and checkpoint writes count; the CUDA context is created once before any clock (the process's start,
not training), and tudui.api is imported before it too. Test accuracy is taken at each epoch's end with the clock
paused; the runs never see it. A run in a fresh process pays more in its first epoch (CUDA's lazy loading, cuDNN's
autotuning): the first run here shows it, and benchmarks/README.md times whole `tudui train` commands beside.

Recipes, in this order (the four `best` variants for every seed, then b512 without a CUDA graph for every seed,
then one seed of the rest), until --budget-s seconds of this script have passed:
  best          --preset best as on the CPU (fast-res, 14 epochs, batch 128, AdamW lr 0.003, bf16; on CUDA each
                training step is replayed as a CUDA graph: --cuda-graph auto)
  best b256     the same with batch 256 and lr 0.0042 (lr x sqrt(2): Adam's usual rule for a doubled batch)
  best b512     the same with batch 512 and lr 0.006
  best b512 e18     best b512 for 18 epochs (cheaper steps leave room for more of them)
  best b512 eager   best b512 with --cuda-graph off: the step as kernels launched one by one, side by side
  max b256      --preset max for 40 epochs (its CPU run plans 39; fast-res-wide, crop-flip, erasing, EMA) at batch
                256 and lr 0.0042
  max           the same at the preset's batch 128
  default       `tudui train --data fashion-mnist` as it is (once)
  best b512 compile   --compile on top of best b512 (compilation counts in the wall time)
Which `best` variant the target is judged on is chosen by validation alone: the one whose median time for
*validation* top-1 to reach 94% is least; the verdict then reads that variant's test figures.

    python benchmarks/gpu_time_to_accuracy.py [--seeds 0 1 2] [--budget-s 420] [--out DIR] [--quick]
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import _common as C
import torch

from time_to_accuracy import TestEveryEpoch, first_time, fmt_s
from tudui.data.sources import load_named

TARGET = (0.940, 10.0)  # >= 94.0% test top-1 within 10 s from the start of training
BEST = {"preset": "best"}
RECIPES = {  # name -> TrainConfig options (with the seed added per run)
    "best": BEST,
    "best b256": BEST | {"batch_size": 256, "lr": 0.0042},
    "best b512": BEST | {"batch_size": 512, "lr": 0.006},
    "best b512 e18": BEST | {"batch_size": 512, "lr": 0.006, "epochs": 18},
    "best b512 eager": BEST | {"batch_size": 512, "lr": 0.006, "cuda_graph": "off"},
    "max b256": {"preset": "max", "epochs": 40, "batch_size": 256, "lr": 0.0042},
    "max": {"preset": "max", "epochs": 40},
    "default": {},
    "best b512 compile": BEST | {"batch_size": 512, "lr": 0.006, "compile": True},
}
# Seconds a run is expected to take before its recipe has run once here (H200 figures of benchmarks/README.md, with
# CUDA graphs; a guess for the unmeasured ones), so the budget check does not start a long run with a minute left.
EXPECTED_S = {"best": 15, "best b256": 8, "best b512": 6, "best b512 e18": 6, "best b512 eager": 9, "max b256": 30,
              "max": 60, "default": 5, "best b512 compile": 30}
# the variants the target may be judged on (chosen by validation)
CANDIDATES = ["best", "best b256", "best b512", "best b512 e18"]


class Record(TestEveryEpoch):
    """TestEveryEpoch that also keeps the run's own validation top-1 and training images/s per epoch."""

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        super().on_epoch_end(run, row, val)
        self.rows[-1] |= {"val": float(row["val_top1"]) if row["val_top1"] != "" else math.nan,
                          "img_s": row["images_per_s"], "train_s": row["epoch_time_s"]}


def schedule(seeds: list[int], quick: bool) -> list[tuple[str, int]]:
    """Run order, most telling first, so a budget cut drops the least needed runs (--quick: two runs)."""
    if quick:  # one graph candidate and its eager twin: every table and the ratio line are printed
        return [("best b512", seeds[0]), ("best b512 eager", seeds[0])]
    first = [(name, s) for s in seeds for name in CANDIDATES] + [("best b512 eager", s) for s in seeds]
    return first + [("max b256", seeds[0]), ("max", seeds[0]), ("default", seeds[0]), ("best b512 compile", seeds[0])]


def first_val_time(rows: list[dict], acc: float) -> float:
    return next((r["time_s"] for r in rows if r["val"] >= acc), math.inf)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no run expected to end after this many seconds (its recipe's last run, else EXPECTED_S)")
    p.add_argument("--device", default=None, help="cuda (the default), or cpu for a --quick smoke test")
    p.add_argument("--out", default=None, help="a folder for runs.jsonl (one line per run, written as each ends)")
    args = p.parse_args()
    C.header("GPU time to accuracy, Fashion-MNIST", args.quick)
    # --quick checks the script, not the GPU: it runs on the CPU where there is no CUDA (make test, CI)
    device = torch.device(args.device or ("cpu" if args.quick and not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: this benchmark measures a GPU (--quick smoke-tests it on the CPU)")
        t0 = time.perf_counter()
        torch.zeros(1, device=device).add_(1)
        torch.cuda.synchronize()
        p_ = torch.cuda.get_device_properties(device)
        print(f"GPU: {p_.name}, {p_.total_memory / 2**30:.0f} GiB, {p_.multi_processor_count} SMs, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, bf16 "
              f"{torch.cuda.is_bf16_supported()}; CUDA context created in {time.perf_counter() - t0:.1f} s "
              "(before any clock)\n", flush=True)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    train = C.tudui.train  # tudui.api imported before any clock (a process's start, as the CUDA context)
    runs: dict[str, list[tuple[int, list[dict]]]] = {name: [] for name in RECIPES}
    with C.workdir(args, prefix="tudui-gpu-") as work:
        project, root = str(work), C.quick_data_root(work) if args.quick else None
        test_split = load_named("fashion-mnist", False, root)  # the benchmark's, read before any clock
        quick = {"epochs": 1, "data_root": root} | C.QUICK_EVAL if args.quick else {}
        start, last_s = time.perf_counter(), {}
        for name, seed in schedule(args.seeds, args.quick):
            left = args.budget_s - (time.perf_counter() - start)
            if last_s.get(name, EXPECTED_S[name]) > left and not args.quick:
                print(f"skipped {name} seed {seed}: {left:.0f} s of the budget left", flush=True)
                continue
            t = time.perf_counter()
            cb = Record(C.Clock(), test_split, f"{name} seed {seed}")
            try:
                train(data="fashion-mnist", project=project, name=f"{name}-{seed}".replace(" ", "-"),
                              device=str(device), callbacks=[cb], **(RECIPES[name] | quick | {"seed": seed}))
            except Exception as e:  # noqa: BLE001 - one failed recipe must not lose the others' figures
                print(f"FAILED {name} seed {seed}: {type(e).__name__}: {e}", flush=True)
                continue
            last_s[name] = time.perf_counter() - t
            runs[name].append((seed, cb.rows))
            if out:
                with open(out / "runs.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"recipe": name, "seed": seed, "options": RECIPES[name], "rows": cb.rows}) + "\n")

    print("\nper run: test top-1 at the end, wall time to 94% and 95% test, val top-1 at the end and time to 94% val, "
          "first epoch and median epoch (s, training only), training images/s")
    summary = []
    for name, per_seed in runs.items():
        for seed, rows in per_seed:
            train_s = [r["train_s"] for r in rows]
            summary.append([name, seed, len(rows), f"{rows[-1]['acc']:.2%}", fmt_s(first_time(rows, 0.94)),
                            fmt_s(first_time(rows, 0.95)), f"{rows[-1]['val']:.2%}",
                            fmt_s(None if math.isinf(v := first_val_time(rows, 0.94)) else v),
                            f"{train_s[0]:.2f}", f"{C.median(train_s[1:] or train_s):.2f}",
                            f"{C.median([r['img_s'] for r in rows[1:]] or [rows[0]['img_s']]):,.0f}",
                            f"{rows[-1]['time_s']:.1f} s"])
    print(C.table(["recipe", "seed", "epochs", "test", "to 94%", "to 95%", "val", "val to 94%", "epoch 1 s",
                   "epoch s", "img/s", "total"], summary))
    pairs = [(g, e) for (sg, g), (se, e) in zip(runs["best b512"], runs["best b512 eager"]) if sg == se]
    if pairs:
        ep = lambda rows: C.median([r["train_s"] for r in rows[1:]] or [rows[0]["train_s"]])  # noqa: E731
        print("\nCUDA graph against eager (best b512, same seeds): median training seconds an epoch "
              + ", ".join(f"{ep(g):.2f} vs {ep(e):.2f}" for g, e in pairs)
              + f"; eager / graph {C.median([ep(e) / ep(g) for g, e in pairs]):.2f}x")
    for name in ("best b256", "max", "max b256"):
        if runs[name]:
            seed, rows = runs[name][0]
            print(f"\n{name}, seed {seed}: wall time and test top-1 after each epoch")
            print(C.table(["epoch", "s", "test", "val"],
                          [[r["epoch"], f"{r['time_s']:.1f}", f"{r['acc']:.2%}", f"{r['val']:.2%}"] for r in rows]))

    scored = {n: C.median([first_val_time(rows, TARGET[0]) for _, rows in runs[n]]) for n in CANDIDATES if runs[n]}
    if not scored:
        return
    chosen = min(scored, key=scored.get)
    t94 = [first_time(rows, TARGET[0]) or math.inf for _, rows in runs[chosen]]
    t95 = [first_time(rows, 0.95) or math.inf for name in runs for _, rows in runs[name]]
    print(f"\ntargets (issue 17; {chosen!r} chosen by its median time to 94% validation top-1, "
          f"{', '.join(f'{n} ' + ('never' if math.isinf(v) else f'{v:.1f} s') for n, v in scored.items())})")
    print(C.table(["target", "measured", "verdict"], [
        [f"94% test top-1 within {TARGET[1]:g} s on the GPU ({chosen})",
         f"median {fmt_s(None if math.isinf(m := C.median(t94)) else m)} (seeds: "
         + ", ".join("never" if math.isinf(x) else f"{x:.1f} s" for x in t94) + ")",
         C.verdict(None if args.quick else m <= TARGET[1])],
        ["time to 95% test top-1 (report)", "fastest run: " + ("never" if math.isinf(min(t95)) else
                                                              f"{min(t95):.1f} s"), "n/a"]]))


if __name__ == "__main__":
    main()
