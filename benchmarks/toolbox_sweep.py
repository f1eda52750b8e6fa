"""The training toolbox on the default recipe: what each switch does to Fashion-MNIST accuracy, several seeds.

Each variant is the default `tudui train --data fashion-mnist` (its model, epochs and recipe) with one switch added. The
hold-out split (10% of the training set) is what a user would choose by; the test figure is reported once, for
the record. Accuracies at a fixed number of epochs do not depend on how busy the machine is; the seconds do.

    python benchmarks/toolbox_sweep.py [--seeds 0 1 2] [--variants baseline ema ...] [--quick]
"""
from __future__ import annotations

import statistics
import time

import _common as C

import tudui

VARIANTS = {
    "baseline": {},
    "randaugment": {"augment": "randaugment"},
    "trivialaugment": {"augment": "trivialaugment"},
    "erase 0.25": {"erase": 0.25},
    "mixup 0.2": {"mixup": 0.2},
    "cutmix 1.0": {"cutmix": 1.0},
    "ema": {"ema": True, "ema_tau": 200},
    "lr auto": {"lr": "auto"},
}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    if args.quick:  # a smoke test of the script: three variants, one seed
        args.variants = [v for v in args.variants if v in ("baseline", "trivialaugment", "mixup 0.2")]
    C.header("toolbox sweep: one switch at a time on the default recipe", args.quick)
    rows, base_val = [], None
    with C.workdir(args) as work:
        tmp = str(work)
        for name in args.variants:
            vals, tests, secs = [], [], []
            for seed in args.seeds[:1] if args.quick else args.seeds:
                opts = dict(data="fashion-mnist", seed=seed, plots=False, tensorboard=False, project=tmp,
                            name=f"{name.replace(' ', '_')}_{seed}") | VARIANTS[name]
                if args.quick:
                    opts |= {"epochs": 1, "data_root": C.quick_data_root(work)}
                t0 = time.perf_counter()
                r = tudui.train(**opts)
                secs.append(time.perf_counter() - t0)
                vals.append(100 * r.val["top1"])
                tests.append(100 * r.test["top1"])
                print(f"  {name} seed {seed}: val {vals[-1]:.2f}%  test {tests[-1]:.2f}%  {secs[-1]:.0f} s", flush=True)
            mean = statistics.mean(vals)
            base_val = mean if name == "baseline" else base_val
            sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
            rows.append([name, f"{mean:.2f} ± {sd(vals):.2f}", "" if base_val is None else f"{mean - base_val:+.2f}",
                         f"{statistics.mean(tests):.2f} ± {sd(tests):.2f}", f"{statistics.mean(secs):.0f}",
                         len(vals)])
    print()
    print(C.table(["variant", "val top-1 % (mean ± sd)", "vs baseline", "test top-1 %", "s per run", "seeds"], rows,
                  "<>>>>>"))


if __name__ == "__main__":
    main()
