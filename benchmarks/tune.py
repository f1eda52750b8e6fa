"""What does `tudui tune` buy on Fashion-MNIST? TPE with pruning against random search, then the best config retrained.

Two studies with the same budget (N trials of at most E epochs each, `--space default`: learning rate, weight decay,
label smoothing, batch size, augmentation, EMA and the model among tudui's nets): `tudui tune` as shipped (Optuna's
TPE sampler, the median pruner) and Optuna's RandomSampler with no pruning. Both judge a trial by its best.pt's
validation top-1 (the 10% of the training images tudui holds out); the test split never chooses (and is evaluated
without test-time augmentation in the trials, to save time). Reported: the best
validation top-1 each found, after how many trials, the trials pruned and the wall time of each study. Then the TPE
study's best config (its best.yaml) is retrained for today's default epochs (10 on Fashion-MNIST) and its test top-1
set beside `tudui train --data fashion-mnist` with every option at its default (same seed; with --subset both
retrained runs train on that subset too).

    .venv/bin/python benchmarks/tune.py [--quick] [--trials 40] [--epochs 4] [--subset N] [--workdir DIR]
"""
from __future__ import annotations

import time

import _common as C

from tudui import api  # noqa: E402  (_common put this checkout's src/ first)

QUIET = {"plots": False, "tensorboard": False}
TRIAL = {"tta": False}  # a trial's test figure chooses nothing: its flipped second pass would only cost time


def study(project: str, name: str, trials: int, sampler: str, pruner: str, options: dict) -> tuple[object, float]:
    t0 = time.perf_counter()
    r = api.tune(project=project, study=name, trials=trials, sampler=sampler, pruner=pruner, seed_sampler=0,
                 space="default", **QUIET, **TRIAL, **options)
    return r, time.perf_counter() - t0


def row(label: str, r, seconds: float) -> list[str]:
    done = [t for t in r.trials if t.state.startswith("complete") and t.value is not None]
    pruned = sum(t.state == "pruned" for t in r.trials)
    epochs = sum(t.epochs or 0 for t in r.trials)
    best = r.best
    found = next(k for k, t in enumerate(r.trials, 1) if t.number == best.number)
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    return [label, f"{100 * best.value:.2f}%", str(found), f"{len(done)}/{pruned}", str(epochs),
            f"{seconds:.0f}", shown]


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], f"smoke test: 2 trials of 1 epoch on a {C.QUICK_SUBSET}-image subset, the "
                                          "retrained runs 1 epoch (the figures mean nothing)")
    p.add_argument("--trials", type=int, default=40, help="trials in each study [40]")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each trial at most [4]")
    p.add_argument("--subset", type=int, default=None, help="training images of each trial [all 54,000 left after "
                                                            "the validation hold-out]")
    p.add_argument("--retrain-epochs", default="auto", help="epochs of the two retrained runs, both on the --subset "
                                                            "if one is given [auto: 10 on all of Fashion-MNIST]")
    args = p.parse_args()
    C.header("tudui tune (TPE + median pruning) against random search, Fashion-MNIST", args.quick)
    trials, epochs = (2, 1) if args.quick else (args.trials, args.epochs)
    retrain = 1 if args.quick else args.retrain_epochs
    with C.workdir(args) as work:
        data = {"data": "fashion-mnist", **({"data_root": C.quick_data_root(work)} if args.quick else {})}
        options = data | {"epochs": epochs} | ({"subset": args.subset} if args.subset else {})
        print(f"budget: {trials} trials of at most {epochs} epoch(s) each, --space default"
              + (f", {args.subset:,} training images per trial" if args.subset else "")
              + "; the machine may be shared, so seconds are not comparable across machines\n", flush=True)
        project = str(work / "runs")
        tpe, tpe_s = study(project, "tpe", trials, "tpe", "median", options)
        rnd, rnd_s = study(project, "random", trials, "random", "none", options)
        print()
        print(C.table(["search", "best val top-1", "found at trial", "complete/pruned", "epochs trained", "wall s",
                       "best values"],
                      [row("tudui tune (TPE, median pruner)", tpe, tpe_s),
                       row("random search (no pruning)", rnd, rnd_s)]) + "\n", flush=True)
        t0 = time.perf_counter()  # `tudui train --config runs/tune/tpe/best.yaml --epochs auto`
        tuned = api.train(config_file=tpe.best_config, epochs=retrain, name="tuned", exist_ok=True, tta=True, **QUIET)
        tuned_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        default = api.train(**data, **({"subset": args.subset} if args.subset else {}), epochs=retrain,
                            name="default", exist_ok=True, project=project, **QUIET)
        default_s = time.perf_counter() - t0
    print()
    gain = 100 * (tuned.test["top1"] - default.test["top1"])
    print(C.table(["retrained", "epochs", "val top-1", "test top-1", "wall s"], [
        ["tudui tune's best config", str(len(tuned.history)), f"{100 * tuned.val['top1']:.2f}%",
         f"{100 * tuned.test['top1']:.2f}%", f"{tuned_s:.0f}"],
        ["today's default", str(len(default.history)), f"{100 * default.val['top1']:.2f}%",
         f"{100 * default.test['top1']:.2f}%", f"{default_s:.0f}"]]))
    print(f"\nwhat tuning bought: {gain:+.2f} points of test top-1 over today's default; TPE's best validation "
          f"top-1 {100 * (tpe.best.value - rnd.best.value):+.2f} points from random search's, in "
          f"{tpe_s / rnd_s:.2f}x its wall time", flush=True)


if __name__ == "__main__":
    main()
