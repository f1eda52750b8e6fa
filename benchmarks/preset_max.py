"""`--preset max` on Fashion-MNIST: test top-1 after each epoch and the wall time from the start of training.

Issue 17's target for it is absolute, not a ratio: >= 95.0% test top-1 within one hour on a 2-core CPU (the public
Fashion-MNIST table lists ResNet18 at 94.9%). The preset plans its own epochs to end inside a 55-minute budget
(`--time 55`), so the hour holds on any machine; what a slower machine loses is epochs, hence accuracy. Test accuracy
is measured at each epoch's end with the clock paused (time_to_accuracy.TestEveryEpoch); the run never sees it.

    .venv/bin/python benchmarks/preset_max.py [--quick] [KEY=VALUE ...]   (TrainConfig options on top of the preset)
"""
from __future__ import annotations


import _common as C

from time_to_accuracy import TestEveryEpoch, parse_options
from tudui.data.sources import load_named

TARGET = (0.950, 3600.0)  # >= 95.0% test top-1 within one hour of wall time


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("options", nargs="*", metavar="KEY=VALUE", help="TrainConfig options on top of the preset")
    args = p.parse_args()
    C.header("preset max, Fashion-MNIST", args.quick)
    with C.workdir(args, prefix="tudui-bench-") as work:
        root = C.quick_data_root(work) if args.quick else None
        # read before the clock starts: the benchmark's test split, not the run's
        test_split = load_named("fashion-mnist", False, root)
        options = {"preset": "max"} | parse_options(args.options) | (
            {"time": None, "epochs": 1, "data_root": root} | C.QUICK_EVAL if args.quick else {})
        clock = C.Clock()
        cb = TestEveryEpoch(clock, test_split, "tudui preset=max")
        C.tudui.train(data="fashion-mnist", project=str(work), name="max", callbacks=[cb], **options)
    rows = cb.rows
    print("\nwall time from the start of training to each epoch's end, and test accuracy then")
    print(C.table(["epoch", "s", "test acc"], [[r["epoch"], f"{r['time_s']:.1f}", f"{r['acc']:.2%}"] for r in rows]))
    best = max(r["acc"] for r in rows)
    reached = next((r["time_s"] for r in rows if r["acc"] >= TARGET[0]), None)
    final, total = rows[-1]["acc"], rows[-1]["time_s"]
    print("\ntargets (issue 17)")
    print(C.table(["target", "measured", "verdict"], [[
        f"--preset max reaches >= {TARGET[0]:.1%} within {TARGET[1] / 60:.0f} minutes",
        (f"{reached / 60:.1f} min" if reached else f"not reached (final {final:.2%}, best epoch {best:.2%})")
        + f"; ends at {final:.2%} after {total / 60:.1f} min",
        C.verdict(None if args.quick else reached is not None and reached <= TARGET[1])]]))


if __name__ == "__main__":
    main()
