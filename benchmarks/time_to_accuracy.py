"""Time to accuracy on Fashion-MNIST: the course's routine against tudui's default `tudui.train`, in one run.

(a) the course's routine: a Dataset of PIL images -> ToTensor + Normalize -> DataLoader(batch 64, shuffle),
    the course's CIFAR-10 net adapted to 1x28x28, CrossEntropyLoss, SGD lr 0.01, 10 epochs;
(b) tudui's defaults: `tudui.train(data="fashion-mnist")`, once per seed (--seeds, default 0 1 2);
(c) optionally a longer recipe: `--long epochs=30` (any TrainConfig options, e.g. `--long preset=best`), per seed;
(d) optionally, with --course-preset, `tudui.train(preset="course")`: the course's routine through tudui, per seed.
The course runs once (seed 0): it is the baseline every ratio divides by. A target counts as met when the median
over tudui's seeds meets it; each seed's figures are printed beside the median.

Test accuracy is measured after every epoch with the clock paused: for tudui by a benchmark-only Callback;
the run itself never sees the test set (it picks its best epoch on its own validation split). Each clock starts
before the contestant reads its training data and stops at each epoch's end, so tudui's times include its data
loading, validation and checkpoint writes.

    .venv/bin/python benchmarks/time_to_accuracy.py [--quick] [--epochs 10] [--seeds 0 1 2] [--long KEY=VALUE ...]
"""
from __future__ import annotations


import _common as C
import numpy as np
import torch
import torch.nn as nn
import yaml
from torchvision import transforms as T

from tudui.data import make_loader
from tudui.data.sources import load_named
from tudui.engine.callbacks import Callback
from tudui.engine.evaluate import evaluate
from tudui.models import create_model

# Issue 17, as ratios against the course's run in the same benchmark run (so they hold on any machine):
TARGET_SPEEDUP = 25.0  # the default passes the course's final accuracy >= 25x sooner than the course reaches it
TARGET_DEFAULT = (0.930, 0.4)  # the default ends at >= 93.0% test top-1 within <= 0.4x the course's 10-epoch time
TARGET_LONG = (0.940, 1.5)  # --preset best reaches >= 94.0% within <= 1.5x the course's 10-epoch time
TARGET_COURSE_PRESET = 0.01  # --preset course ends within 1 point of the course's own final test accuracy
COURSE_PRESET = "tudui preset=course"


# --- (a) the course's routine --------------------------------------------------------------------------------------
def run_course(epochs: int, limit: int | None, test: tuple, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    clock = C.Clock()  # starts before the training data is read, as tudui's does
    images, targets = C.load_fmnist(True, limit, seed)
    mean, std = float(images.mean() / 255), float(images.std() / 255)  # measured, like tudui's spec
    tf = T.Compose([T.ToTensor(), T.Normalize((mean,), (std,))])
    train_loader = torch.utils.data.DataLoader(C.PILDataset(images, targets, tf), batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(C.PILDataset(*test, tf), batch_size=64)
    model = create_model("cifar-net", 10, 1, 28)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rows = []
    for epoch in range(epochs):
        C.course_epoch(model, train_loader, loss_fn, optimizer)
        t = clock.now()
        clock.pause()  # the per-epoch test is measurement, not training
        rows.append({"epoch": epoch + 1, "time_s": t, "acc": C.course_accuracy(model, test_loader)})
        print(f"course epoch {epoch + 1}/{epochs}: {t:.1f} s, test {rows[-1]['acc']:.2%}", flush=True)
        clock.resume()
    return rows


# --- (b), (c) tudui --------------------------------------------------------------------------------------------------
class TestEveryEpoch(Callback):
    """Benchmark-only: test accuracy at each epoch's end, clock paused; the run's choices never see it."""

    def __init__(self, clock: C.Clock, test_split, label: str) -> None:
        self.clock, self.test_split, self.label = clock, test_split, label
        self.loader, self.rows = None, []

    def on_fit_start(self, run) -> None:
        self.clock.pause()
        self.loader = make_loader(self.test_split, run.spec, 1024, False, device=run.device)
        self.clock.resume()

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        C.sync(run.device)
        t = self.clock.now()
        self.clock.pause()
        # the weights the run validates and saves: its EMA with --ema (as in --preset max), else the model
        acc = evaluate(run.eval_model, self.loader, run.spec, run.device, amp=run.cfg.amp)["top1"]
        self.rows.append({"epoch": row["epoch"], "time_s": t, "acc": acc})
        print(f"{self.label} epoch {row['epoch']}: {t:.1f} s, test {acc:.2%}", flush=True)
        self.clock.resume()


def run_tudui(label: str, options: dict, test_split, project: str) -> list[dict]:
    clock = C.Clock()  # starts as tudui.train is called: its data loading and set-up count
    cb = TestEveryEpoch(clock, test_split, label)
    C.tudui.train(data="fashion-mnist", project=project, name=label, exist_ok=True, callbacks=[cb], **options)
    return cb.rows


# --- report ----------------------------------------------------------------------------------------------------------
def first_time(rows: list[dict], acc: float) -> float | None:
    """Wall time at the end of the first epoch whose test accuracy is >= acc (None when never)."""
    return next((r["time_s"] for r in rows if r["acc"] >= acc), None)


def fmt_s(t: float | None) -> str:
    return "not reached" if t is None else f"{t:.1f} s"


def parse_options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--long takes KEY=VALUE pairs (TrainConfig options), got {p!r}")
        k, v = p.split("=", 1)
        out[k.replace("-", "_")] = yaml.safe_load(v)  # numbers, booleans and lists as YAML reads them
    return out


def per_epoch_table(runs: dict[str, list[dict]]) -> str:
    names = list(runs)
    rows = []
    for e in range(max(len(r) for r in runs.values())):
        row = [e + 1]
        for name in names:
            r = runs[name][e] if e < len(runs[name]) else None
            row += [f"{r['time_s']:.1f}" if r else "", f"{r['acc']:.2%}" if r else ""]
        rows.append(row)
    return C.table(["epoch"] + [h for name in names for h in (f"{name}: s", f"{name}: test acc")], rows)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="epochs of the course's routine [10]")
    p.add_argument("--long", nargs="+", metavar="KEY=VALUE", default=None,
                   help="also run tudui with these TrainConfig options (a longer recipe), e.g. epochs=30")
    p.add_argument("--course-preset", action="store_true",
                   help="also run tudui --preset course (the course's routine through tudui) per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="tudui's runs are repeated with each seed; targets count when the median seed meets them")
    args = p.parse_args()
    C.header("time to accuracy, Fashion-MNIST", args.quick)
    seeds = args.seeds[:1] if args.quick else args.seeds

    limit = C.QUICK_SUBSET if args.quick else None
    long_name = ("tudui " + " ".join(args.long) + (" (quick: 1 epoch)" if args.quick else "")) if args.long else None
    with C.workdir(args, prefix="tudui-bench-") as work:
        project, root = str(work), C.quick_data_root(work) if args.quick else None
        # The test set is read before any clock starts: it is the benchmark's, not the runs'.
        test_split = load_named("fashion-mnist", False, root)
        test = (np.ascontiguousarray(test_split.images[..., 0]), test_split.targets)  # (N, 28, 28) uint8 for PIL
        quick = {"epochs": 1, "data_root": root} if args.quick else {}
        course = run_course(1 if args.quick else args.epochs, limit, test)  # the baseline: one run, seed 0
        recipes = {"tudui default": quick} | ({long_name: parse_options(args.long) | quick} if args.long else {})
        if args.course_preset:
            recipes[COURSE_PRESET] = {"preset": "course"} | quick
        runs: dict[str, list[list[dict]]] = {name: [] for name in recipes}  # recipe -> one row list per seed
        for seed in seeds:
            for name, options in recipes.items():
                label = f"{name} seed {seed}"
                runs[name].append(run_tudui(label.replace(" ", "-"), options | {"seed": seed}, test_split, project))

    print(f"\nwall time from the start of training to each epoch's end, and test accuracy then (tudui: seed {seeds[0]})")
    print(per_epoch_table({"course": course} | {name: rows[0] for name, rows in runs.items()}))

    course_final = course[-1]["acc"]
    course_t = first_time(course, course_final)
    course_total = course[-1]["time_s"]  # the course's 10-epoch wall time
    summary = [["course", "0", len(course), f"{course_final:.2%}", fmt_s(course_t), "1.0x",
                fmt_s(first_time(course, 0.93)), fmt_s(first_time(course, 0.94))]]
    stats: dict[str, dict[str, list]] = {}
    for name, per_seed in runs.items():
        st = stats[name] = {"speedup": [], "final": [], "total": [], "t94": []}
        for seed, rows in zip(seeds, per_seed):
            t = first_time(rows, course_final)
            speedup = course_t / t if t else 0.0
            t94 = first_time(rows, TARGET_LONG[0])
            st["speedup"].append(speedup)
            st["final"].append(rows[-1]["acc"])
            st["total"].append(rows[-1]["time_s"] / course_total)
            st["t94"].append(t94 / course_total if t94 else float("inf"))
            summary.append([name, seed, len(rows), f"{rows[-1]['acc']:.2%}", fmt_s(t),
                            f"{speedup:.1f}x" if speedup else "n/a", fmt_s(first_time(rows, 0.93)), fmt_s(t94)])
    print(f"\ntime to the course's final accuracy ({course_final:.2%}), speed-up against the course, "
          "time to 93% and 94%, per seed")
    print(C.table(["run", "seed", "epochs", "final acc", f"to {course_final:.2%}", "speed-up", "to 93%", "to 94%"],
                  summary))

    def spread(xs: list[float], fmt: str) -> str:
        return f"median {fmt.format(C.median(xs))} (seeds: {', '.join(fmt.format(x) for x in xs)})"

    d = stats["tudui default"]
    speedup, d_acc, d_time = C.median(d["speedup"]), C.median(d["final"]), C.median(d["total"])
    targets = [[f"tudui default reaches the course's accuracy >= {TARGET_SPEEDUP:g}x sooner",
                spread(d["speedup"], "{:.1f}x"), C.verdict(None if args.quick else speedup >= TARGET_SPEEDUP)],
               [f"tudui default ends >= {TARGET_DEFAULT[0]:.1%}",
                spread([100 * a for a in d["final"]], "{:.2f}%"),
                C.verdict(None if args.quick else d_acc >= TARGET_DEFAULT[0])],
               [f"... within <= {TARGET_DEFAULT[1]:g}x the course's 10-epoch time",
                spread(d["total"], "{:.2f}x"), C.verdict(None if args.quick else d_time <= TARGET_DEFAULT[1])]]
    if args.long:
        t94 = stats[long_name]["t94"]
        targets.append([f"longer recipe reaches {TARGET_LONG[0]:.1%} within <= {TARGET_LONG[1]:g}x the course's time",
                        spread(t94, "{:.2f}x").replace("infx", "never"),
                        C.verdict(None if args.quick else C.median(t94) <= TARGET_LONG[1])])
    if args.course_preset:
        finals = stats[COURSE_PRESET]["final"]
        gap = abs(C.median(finals) - course_final)
        targets.append([f"--preset course ends within {100 * TARGET_COURSE_PRESET:g} point of the course's "
                        f"{course_final:.2%}", spread([100 * a for a in finals], "{:.2f}%"),
                        C.verdict(None if args.quick else gap <= TARGET_COURSE_PRESET)])
    print("\ntargets (issue 17; the median over tudui's seeds, each against the course's run above)")
    print(C.table(["target", "measured", "verdict"], targets))


if __name__ == "__main__":
    main()
