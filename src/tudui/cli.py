"""The `tudui` command: a table of subcommands, each parsing flags into one `api` function and printing its result.

Every user mistake raises TuduiError, printed as one line with exit code 2 (`--debug` shows the traceback
instead). `api` (and with it torch) is imported only once a command runs, so `tudui --help` stays quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import typing
from typing import Callable

from .core import __version__
from .core.config import LrFindOptions, TrainConfig
from .core.errors import TuduiError
from .core.options import (GROUPS, MISSING, BenchmarkOptions, CalibrateOptions, EvalOptions, ExplainOptions,
                           ExportOptions, ModelFileOptions, PredictOptions, ServeOptions, TuneOptions, flag_of,
                           on_command_line)


def _api():
    from . import api

    return api


# --- options: one flag per field of an options dataclass ---------------------------------------------------------------
def _arg_type(hint) -> type:
    """The argparse type for a field annotated `int`, `float | None`, `str | None`, ... (the non-None member)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return base if base in (int, float, str) else str


def add_options(p: argparse.ArgumentParser, cls) -> None:
    """One argument per field of `cls` (TrainConfig, EvalOptions, ...: core/options.py), listed under its field's
    group in --help. A flag not given is not passed on, so the dataclass's default is the only default (and a
    --config file's values can be overridden); the dataclass checks choices and ranges when it is built."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    used = {f.metadata.get("group") for f in fields}
    groups = {g: p.add_argument_group(title) for g, title in GROUPS.items() if g in used}
    for f in fields:
        meta = f.metadata
        # argparse %-formats help texts: a literal % (e.g. "~100%") must be doubled
        kw: dict = {"help": meta.get("help", "").replace("%", "%%")}
        if f.default not in (MISSING, None, [], False):
            kw["help"] += f" [default: {f.default}]"
        for key in ("nargs", "metavar", "const", "choices"):  # `--amp` alone means `--amp on` (const)
            if key in meta:
                kw[key] = meta[key]
        if meta.get("positional"):
            p.add_argument(f.name, **kw)
            continue
        hint = hints[f.name]
        if meta.get("store_true"):
            kw["action"] = "store_true"
        elif hint is bool or set(typing.get_args(hint)) == {bool, type(None)}:
            kw["action"] = argparse.BooleanOptionalAction
        elif (meta.get("type") or _arg_type(hint)) is not str:  # text needs no type: argparse's own default
            kw["type"] = meta.get("type") or _arg_type(hint)
        required = f.default is MISSING and f.default_factory is MISSING
        target = groups.get(meta.get("group"), p)
        target.add_argument(flag_of(f), *meta.get("aliases", ()), dest=f.name, default=argparse.SUPPRESS,
                            required=required, **kw)
        if "no_flag" in meta:  # `--no-amp`, as when the option was a switch
            target.add_argument("--no-" + flag_of(f)[2:], dest=f.name, action="store_const", const=meta["no_flag"],
                                default=argparse.SUPPRESS, help=f"the same as {flag_of(f)} {meta['no_flag']}")


def options_of(args: argparse.Namespace, cls) -> dict:
    """The values of `cls`'s fields given on the command line (the others keep the dataclass's defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


# --- train -------------------------------------------------------------------------------------------------------------
def add_train_args(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s --data DATA [DATA ...] [options]   (or --config YAML, or --resume RUN)"  # 80 flags: see below
    add_options(p, TrainConfig)
    run = next(g for g in p._action_groups if g.title == GROUPS["run"])
    run.add_argument("--config", dest="_config", metavar="YAML", help="read options from a YAML file (e.g. a run's "
                     "config.yaml); flags given on the command line override it")


def cmd_train(args: argparse.Namespace) -> int:
    api = _api()
    values = vars(args).copy()
    config_file = values.pop("_config", None)
    argv = values.pop("_argv", [])
    for k in ("debug", "func", "command"):
        values.pop(k, None)
    try:
        api.train(config_file=config_file, argv=argv, **values)
    except api.RunFinished as e:
        print(api.shown(e))
    except (api.TrainingInterrupted, api.LaunchFailed) as e:
        print(e, file=sys.stderr)
        return e.exit_code
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    found, files = _api().lr_find(config_file=getattr(args, "_config", None),
                                  **options_of(args, TrainConfig), **options_of(args, LrFindOptions))
    lo, hi = found.band
    print(f"suggested learning rate: {found.suggestion:.3g} ({found.rule}; steep {found.steep:.3g}, valley "
          f"{found.valley:.3g}, minimum {found.minimum:.3g}; {len(found.lrs)} steps from {found.lrs[0]:.1g} to "
          f"{found.lrs[-1]:.3g})")
    print("wrote " + ", ".join(map(str, files)))
    if found.keep_default:
        print(f"keep --lr {found.default:g}: it is already as good a choice (rates {lo:.3g} to {hi:.3g} suit a "
              f"one-cycle peak here, and one range test cannot tell {found.default:g} from {found.suggestion:.3g})"
              + ("; --lr auto keeps it too" if found.default == TrainConfig.lr else ""))
    else:
        print(f"use it: tudui train ... --lr {found.suggestion:.3g}   (or --lr auto to run this test first)")
    return 0


def add_lr_find_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p)
    add_options(p, LrFindOptions)


# --- tune --------------------------------------------------------------------------------------------------------------
def add_tune_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p)
    p.usage = ("%(prog)s --data DATA [DATA ...] --trials N [--space default|YAML] [--study NAME] [train options]   "
               "(or --study NAME --report)")
    add_options(p, TuneOptions)
    next(a for a in p._actions if a.dest == "data").required = False  # --report reads a study: no data


def cmd_tune(args: argparse.Namespace) -> int:
    from .core.console import shown, table

    r = _api().tune(config_file=getattr(args, "_config", None), argv=args._argv, **options_of(args, TrainConfig),
                    **options_of(args, TuneOptions))
    if r.worker:
        print(f"tune worker {os.getpid()}: done with study {shown(r.study)}")
        return 0
    names = list(dict.fromkeys(k for t in r.trials for k in t.params))
    figure = "{:.3f}" if r.metric.endswith("F1") else "{:.2%}"  # macro-F1 as a fraction, as `tudui eval` shows it
    rows = [[t.number, *(_value(t.params.get(k)) for k in names), "" if t.value is None else figure.format(t.value),
             t.epochs or "", "" if t.seconds is None else f"{t.seconds:.1f}", t.state] for t in r.trials]
    print(f"\nstudy {shown(r.study)} ({shown(r.storage)}): {len(r.trials)} trials")
    print(table(["trial", *names, r.metric, "epochs", "seconds", "state"], rows, ">" * (len(names) + 4) + "<"))
    if r.best is None:
        print("no trial has finished yet")
        return 0
    print(f"best: trial {r.best.number}, {r.metric} {figure.format(r.best.value)} ({shown(r.best.run_dir)})")
    if r.best_config is not None:
        print(f"re-run it: tudui train --config {shown(r.best_config)}")
    if r.pictures:
        print("wrote " + ", ".join(shown(p) for p in r.pictures))
    for note in r.notes:
        print(f"note: no {note}")
    return 0


def _value(v) -> str:
    return "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


# --- runs --------------------------------------------------------------------------------------------------------------
def add_runs_args(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s [DIR] [--sort KEY] [--json]   or   %(prog)s compare RUN RUN [RUN ...] [--out PNG]"
    p.add_argument("paths", nargs="*", metavar="DIR", help="the folder that holds the runs [default: runs]; after "
                   "`compare`, two or more run folders")
    p.add_argument("--sort", default="date", choices=["date", "run", "val", "test", "time", "epochs"],
                   help="order of the table (val, test, time, epochs: highest first) [default: date]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", default="compare.png", metavar="PNG", help="`compare`: where the picture of the runs' "
                   "curves goes [default: compare.png]")


def _pct(v) -> str:
    return "" if v is None else f"{v:.2%}"


def cmd_runs(args: argparse.Namespace) -> int:
    from .core.console import shown, table

    api = _api()
    if args.paths[:1] == ["compare"]:
        rows, keys, png = api.compare_runs(args.paths[1:], args.out)
        if args.json:
            print(json.dumps({"runs": [r.path for r in rows], "differs": {k: [r.options.get(k) for r in rows]
                                                                           for k in keys}, "picture": str(png)},
                             indent=1, ensure_ascii=False, default=str))
            return 0
        print(table(["option", *(r.path for r in rows)], [[k, *(_value(r.options.get(k)) for r in rows)]
                                                          for k in keys], "<" * (len(rows) + 1))
                    if keys else "no option differs")
        print(table(["run", "epochs", "val top1", "test top1", "state"],
                    [[r.path, r.epochs, _pct(r.val), _pct(r.test), r.state] for r in rows], "<>>><"))
        print(f"wrote {shown(png)}")
        return 0
    if len(args.paths) > 1:
        raise TuduiError("tudui runs takes one folder (tudui runs compare RUN RUN ... compares runs)")
    rows = api.runs(args.paths[0] if args.paths else "runs", args.sort)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1, ensure_ascii=False, default=str))
        return 0
    if not rows:
        print(f"no runs under {shown(args.paths[0] if args.paths else 'runs')}")
        return 0
    print(table(["run", "date", "data", "model", "options that differ", "epochs", "val top1", "test top1", "train s",
                 "state"],
                [[r.run, r.date, r.data, r.model, " ".join(f"{k}={_value(v)}" for k, v in r.differs.items()),
                  f"{r.epochs}/{r.planned}" if r.planned is not None else r.epochs, _pct(r.val), _pct(r.test),
                  f"{r.seconds:.1f}", r.state] for r in rows], "<<<<<>>>><"))
    return 0


# --- eval --------------------------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    api = _api()
    r = api.evaluate(**options_of(args, EvalOptions))
    files = api.write_eval_reports(r, args.out or os.path.dirname(r["checkpoint"]))
    r.pop("cam_mistakes", None)  # images and maps, drawn above
    r.pop("scores", None)  # a multi-label model's probabilities per image: its precision-recall curves above
    r.pop("risk_coverage", None)  # a point per distinct score: drawn above
    if args.json:
        print(json.dumps(r, indent=1, ensure_ascii=False))
        print("wrote " + ", ".join(map(str, files)), file=sys.stderr)
        return 0
    print(f"{r['checkpoint']} on {', '.join(args.data)} [{r['split']}]: {r['n']:,} images"
          + (" (flip TTA)" if r["tta"] else ""))
    absent = [r["classes"][i] for i in r["absent"]]
    calibrated = f" (calibrated {r['calibrated_loss']:.4f})" if "calibrated_loss" in r else ""
    if "map" in r:  # a multi-label model, at the thresholds saved with it
        print(f"loss {r['loss']:.4f}{calibrated}  mAP {r['map']:.2%}  macro-F1 {r['macro_f1']:.3f}  micro-F1 {r['micro_f1']:.3f}  "
              f"exact match {r['exact_match']:.2%} (at each class's threshold)"
              + (f"; no images of {len(absent)}: {', '.join(absent[:10])}" if absent else "") + "\n")
        print(api.per_class_table(r["classes"], r))
        print("\nwrote " + ", ".join(map(str, files)))
        return 0
    top5 = f"  top5 {r['top5']:.2%}" if len(r["classes"]) > 5 else ""  # 100% by definition with 5 classes or fewer
    print(f"loss {r['loss']:.4f}{calibrated}  top1 {r['top1']:.2%}{top5}  balanced accuracy "
          f"{r['balanced_accuracy']:.2%}  "
          f"macro-F1 {r['macro_f1']:.3f}"
          + (f" (over the {len(r['classes']) - len(absent)} classes present; no images of {len(absent)}: "
             f"{', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''})" if absent else "") + "\n")
    if "rejection" in r:
        j = r["rejection"]
        print(f"unknown below {j['score']} {j['threshold']:.4g}: {j['rejected']:.1%} rejected, top1 "
              f"{j['accepted_top1']:.2%} on the {j['n'] - round(j['rejected'] * j['n']):,} accepted images\n")
    print(api.per_class_table(r["classes"], r) + "\n")
    print(api.confusion_table(r["classes"], r["confusion"]))
    print("\nwrote " + ", ".join(map(str, files)))
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_options(p, EvalOptions)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="where the confusion-matrix PNG/CSV and per-class CSV "
                   "go [default: the checkpoint's folder]")


# --- calibrate ---------------------------------------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    r = _api().calibrate(**options_of(args, CalibrateOptions))
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k not in ("val", "test")}
                         | {"ece_before": r["val"]["ece_before"], "ece_after": r["val"]["ece_after"],
                            "nll_before": r["val"]["nll_before"], "nll_after": r["val"]["nll_after"],
                            "n": r["val"]["n"]}, indent=1, ensure_ascii=False))
        return 0
    v = r["val"]
    if r.get("multi_label"):  # one temperature per class; ECE over every (image, class) pair
        ts = sorted(r["temperature"])
        print(f"temperatures of {len(ts)} classes, median {ts[len(ts) // 2]:.4g} ({ts[0]:.4g} to {ts[-1]:.4g}), "
              f"fitted on {v['n']:,} images [{r['split']}]: expected calibration error over image-class pairs "
              f"{v['ece_before']:.4f} -> {v['ece_after']:.4f} ({r['bins']} bins), binary negative log-likelihood "
              f"{v['nll_before']:.4f} -> {v['nll_after']:.4f}")
        print(f"wrote the temperatures and the thresholds of the calibrated probabilities into {r['checkpoint']} "
              f"(predict, eval, serve and new exports apply them), and {r['picture']}")
        return 0
    print(f"temperature {r['temperature']:.4g}, fitted on {v['n']:,} images [{r['split']}]: expected calibration "
          f"error {v['ece_before']:.4f} -> {v['ece_after']:.4f} ({r['bins']} bins), negative log-likelihood "
          f"{v['nll_before']:.4f} -> {v['nll_after']:.4f}")
    print(f"wrote the temperature into {r['checkpoint']} (predict, eval, serve and new exports apply it), "
          f"and {r['picture']}")
    return 0


def add_calibrate_args(p: argparse.ArgumentParser) -> None:
    add_options(p, CalibrateOptions)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


# --- predict -----------------------------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from .core.console import shown, table

    predictor, preds = _api().predict(**options_of(args, PredictOptions))
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=1, ensure_ascii=False))
    else:
        topk = getattr(args, "topk", PredictOptions.topk)
        rows = [[str(p.source), p.error and f"error: {p.error}" or ("unknown: " if p.unknown else "") +
                 "  ".join(f"{c} {prob:.1%}" for c, prob in p.topk)] for p in preds]
        head = ["image", f"top-{min(topk, len(predictor.classes))} (class probability)"]
        if predictor.thresholds is not None:  # multi-label: the classes over their thresholds first
            rows = [[r[0], "" if p.error else "  ".join(f"{c} {prob:.1%}" for c, prob in p.labels) or "(none)", r[1]]
                    for r, p in zip(rows, preds)]
            head.insert(1, "labels (over each class's threshold)")
        print(table(head, rows, "<" * len(head)))
    bad = sum(p.error is not None for p in preds)
    folder = getattr(args, "save_input", None)  # absent from the namespace when not given
    if folder and not args.json:
        print(f"wrote {len(preds) - bad} image(s) as the model saw them to {shown(folder)}")
    if bad:
        print(f"warning: {bad} of {len(preds)} image(s) could not be read", file=sys.stderr)
    return 1 if bad == len(preds) else 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
    add_options(p, PredictOptions)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


# --- explain -----------------------------------------------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    from .core.console import shown, table

    r = _api().explain(**options_of(args, ExplainOptions))
    bad = sum(e.error is not None for e in r.images)
    if args.json:
        print(json.dumps(r.to_dict(), indent=1, ensure_ascii=False))
    else:
        box = getattr(args, "box", None) is not None
        rows = [[str(e.source)] + ([f"error: {e.error}", ""] + [""] * box if e.error else
                                   [f"{e.class_name} {e.probability:.1%}", f"{e.peak[0]},{e.peak[1]}"]
                                   + ([f"{e.box_share:.1%}"] if box else []))
                for e in r.images]
        print(f"{r.method} {r.origin}")
        print(table(["image", "class", "peak x,y"] + (["in box"] if box else []), rows, "<<>" + (">" if box else "")))
        if r.sanity is not None:
            print("\nsanity check: the maps against those of the model with its weights randomised from the top down "
                  "(Spearman; near 0: the maps depend on what the model learnt)")
            print(table(["randomised down to", "rank correlation"],
                        [[n, "n/a (flat maps)" if rho != rho else f"{rho:+.2f}"] for n, rho in r.sanity], "<>"))
        print(f"wrote {len(r.images) - bad} map(s) and the grid {shown(r.grid)} to {shown(r.out)}")
    flat = sum(e.map is not None and not e.map.any() for e in r.images)
    if flat:
        print(f"warning: {flat} map(s) are flat: {r.method} found no positive evidence "
              f"{r.origin}; try another --method (layercam) or --layer", file=sys.stderr)
    if bad:
        print(f"warning: {bad} of {len(r.images)} image(s) could not be read", file=sys.stderr)
    return 0


def add_explain_args(p: argparse.ArgumentParser) -> None:
    add_options(p, ExplainOptions)
    p.add_argument("--json", action="store_true", help="print JSON (each map's peak and --box share) instead of a table")


# --- export / serve ----------------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    r = _api().export(**options_of(args, ExportOptions))
    print(f"wrote {', '.join(map(str, r.files))}" + (f" (opset {r.opset})" if r.opset else ""))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    api = _api()
    result = api.benchmark(**options_of(args, BenchmarkOptions))
    print(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) if args.json else api.benchmark_table(result))
    return 0


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    add_options(p, BenchmarkOptions)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def cmd_serve(args: argparse.Namespace) -> int:
    _api().serve(**options_of(args, ServeOptions))
    return 0


# --- models ------------------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .core.console import table

    if args.timm is not None:
        found = _api().timm_models(args.timm)
        if not found:
            raise TuduiError(f"no timm model matches '{args.timm}'; try a shorter pattern (e.g. --timm resnet)")
        print(table(["model", "params (1000 classes)", "pretrained weights"],
                    [["timm:" + n, f"{p:,}" if p >= 0 else "?", "yes" if w else "no"] for n, p, w in found], "<><"))
        print(f"{len(found)} timm models; train one with --model timm:NAME (--weights DEFAULT for its pretrained "
              "weights)")
        return 0
    rows = [[info.name, info.family, f"{n:,}", info.min_size, info.description]
            for info, n in _api().model_rows(args.num_classes)]
    print(table(["model", "family", f"params ({args.num_classes} classes, RGB)", "min input", "description"],
                rows, "<<><<"))
    return 0


# --- data --------------------------------------------------------------------------------------------------------------
def cmd_data_export(args: argparse.Namespace) -> int:
    files = _api().export_images(args.name, args.out, args.split, args.limit, args.format, args.data_root, args.seed)
    print(f"wrote {len(files)} images to {args.out}/<class>/"
          + (f", and the class each folder holds to {os.path.join(args.out, 'classes.json')}" if files else ""))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    api = _api()
    report = api.check_data(args.paths, args.csv_columns)
    print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) if args.json else api.format_report(report))
    return 1 if report.errors else 0


def add_data_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="{export,check}", required=True)
    c = sub.add_parser("check", help="report unreadable/duplicate images, class balance, modes and sizes "
                       "(exit 1 on errors)")
    c.add_argument("paths", nargs="+", metavar="PATH", help="dataset folder(s) (train/ val/ test/ or one split) or CSV")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--csv-columns", nargs="+", default=None, metavar="COLUMN", help="a CSV's path column and label "
                   "column(s) by their header names, as for train")
    c.set_defaults(func=cmd_data_check)
    e = sub.add_parser("export", help="write a named dataset's images as class folders of PNG/JPEG files")
    e.add_argument("name", help="a named dataset (`tudui info` lists them)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--limit", type=int, default=None, help="a random sample of this many images")
    e.add_argument("--format", default="png", choices=["png", "jpg"])
    e.add_argument("--data-root", default=None)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_data_export)


# --- convert -----------------------------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    ckpt = _api().convert(args.file, args.out, model=args.model, trust=args.trust, classes=args.classes,
                          num_classes=args.num_classes, img_size=args.img_size, channels=args.channels,
                          mean=args.mean, std=args.std, hflip=args.hflip, model_args=args.model_args)
    d = ckpt["data"]
    print(f"wrote {args.out}: {args.model}, {len(d['classes'])} classes, {d['channels']}x{d['img_size']}x{d['img_size']}, "
          f"mean {d['mean']} std {d['std']}")
    return 0


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a whole-model pickle (torch.save(model)), a state_dict file or .safetensors")
    p.add_argument("--out", required=True, help="the tudui checkpoint to write (.pt)")
    p.add_argument("--trust", action="store_true", help="allow unpickling FILE, which can run code it contains: "
                   "only for files from a source you trust")
    p.add_argument("--model", required=True, help="the architecture the weights belong to: a registered name (tudui "
                   "models) or your own path/to/file.py:Name; a whole-model pickle whose class cannot be imported "
                   "is mapped onto it tensor by tensor, in order")
    p.add_argument("--model-args", nargs="+", default=None, metavar="KEY=VALUE", help="constructor arguments of "
                   "--model (as for tudui train)")
    p.add_argument("--classes", nargs="+", default=None, help="class names in the model's output order")
    p.add_argument("--num-classes", type=int, default=None, help="instead of --classes: names 0..N-1")
    p.add_argument("--img-size", type=int, default=None, help="input size in pixels [default: the model's]")
    p.add_argument("--channels", type=int, default=None, help="input channels [default: from the first conv]")
    p.add_argument("--mean", nargs="+", type=float, default=None, help="per-channel mean [default: 0, i.e. ToTensor]")
    p.add_argument("--std", nargs="+", type=float, default=None, help="per-channel std [default: 1]")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="whether horizontal flips keep the label (used if the checkpoint is fine-tuned)")


# --- summary, info, board ----------------------------------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    s, shape = _api().summary(args.model, args.input, num_classes=args.num_classes, build_size=args.build_size,
                              model_args=args.model_args, **options_of(args, ModelFileOptions))
    print(json.dumps(s.to_dict(), indent=1, ensure_ascii=False) if args.json else
          f"{args.model}, input {'x'.join(map(str, shape))}\n" + s.table())
    return 0


def add_summary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model name (see `tudui models`), your own path/to/file.py:Name, "
                   "or a checkpoint (.pt / run directory)")
    p.add_argument("--input", default=None, metavar="CxHxW", help="one input's shape, e.g. 1x28x28 "
                   "[default: 3xSxS at the model's default size S, or a checkpoint's own]")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--build-size", type=int, default=None, metavar="S", help="build the model for SxS inputs, then "
                   "feed --input (see what a net built for 32x32 does with 28x28) [default: --input's side if square]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--model-args", nargs="+", default=None, metavar="KEY=VALUE", help="constructor arguments of "
                   "the model (as for tudui train)")
    add_options(p, ModelFileOptions)


def cmd_info(args: argparse.Namespace) -> int:
    api = _api()
    env = api.environment(args.data_root)
    print(json.dumps(env, indent=1, ensure_ascii=False) if args.json else api.format_environment(env))
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    import signal

    api = _api()
    proc, url = api.start_board(args.run_dirs or ["runs"], args.port)
    print(f"TensorBoard: {url}  (Ctrl-C stops it)", flush=True)
    # `kill` (SIGTERM) must stop TensorBoard too, not leave it orphaned: turn it into an exit that runs `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return proc.wait()
    finally:
        api.stop_board(proc)


def add_board_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories or a folder of them [default: runs]")
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 [default: a free one]")


# --- the table ---------------------------------------------------------------------------------------------------------
COMMANDS: dict[str, tuple[str, Callable, Callable | None]] = {
    "train": ("train a classifier (writes runs/<name>/)", add_train_args, cmd_train),
    "lr-find": ("learning-rate range test on your data and model: a plot and a suggested --lr", add_lr_find_args,
                cmd_lr_find),
    "tune": ("search training options with Optuna: each trial a run in runs/tune/STUDY/", add_tune_args, cmd_tune),
    "runs": ("list the runs under a folder (runs compare RUN RUN: their differing options and curves)",
             add_runs_args, cmd_runs),
    "eval": ("evaluate a checkpoint on a labelled split", add_eval_args, cmd_eval),
    "calibrate": ("fit a checkpoint's calibration temperature (one per class for a multi-label model) on labelled "
                  "images (for checkpoints trained before tudui calibrated)", add_calibrate_args, cmd_calibrate),
    "predict": ("classify image files or folders", add_predict_args, cmd_predict),
    "explain": ("class-activation maps: where in each image the evidence for a class lies", add_explain_args,
                cmd_explain),
    "export": ("export a checkpoint to ONNX, TorchScript, safetensors or OpenVINO (fp32 or int8), checked on the "
               "validation split",
               lambda p: add_options(p, ExportOptions), cmd_export),
    "benchmark": ("every export format of a run side by side (size, validation top-1, latency, throughput, memory) "
                  "and which to ship", add_benchmark_args, cmd_benchmark),
    "serve": ("serve a model over HTTP with a page to try it", lambda p: add_options(p, ServeOptions), cmd_serve),
    "models": ("list the registered models (--timm PATTERN: timm's)", lambda p: (
        p.add_argument("--num-classes", type=int, default=10),
        p.add_argument("--timm", metavar="PATTERN", default=None,
                       help="list timm's architectures matching PATTERN (wildcards, or a part of the name) with "
                            "their parameters and whether pretrained weights are known; needs timm")), cmd_models),
    "data": ("dataset utilities", add_data_args, None),
    "convert": ("turn a trusted pickled model or plain weights into a tudui checkpoint", add_convert_args, cmd_convert),
    "summary": ("per-layer output shapes, parameters and size arithmetic of a model", add_summary_args, cmd_summary),
    "info": ("versions, GPUs, CPU threads and where the built-in datasets are",
             lambda p: (p.add_argument("--data-root", default=None), p.add_argument("--json", action="store_true")),
             cmd_info),
    "board": ("start TensorBoard on 127.0.0.1 for run directories", add_board_args, cmd_board),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tudui", description="Train, evaluate and use image classifiers.")
    parser.add_argument("--version", action="version", version=f"tudui {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_args, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        add_args(p)
        if func is not None:
            p.set_defaults(func=func)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was given: `tudui data check ...` -> the parser of `data check`."""
    p = parser
    for dest in ("command", "data_command"):
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, dest, None)
        if sub is None or name not in sub.choices:
            break
        p = sub.choices[name]
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown flag is reported by its command's parser (its usage line, not the top
    level's) with the nearest flag that command has: `tudui train --epochz 1` -> 'did you mean --epochs?'."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    p = _command_parser(parser, args)
    flags = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
    guesses = [difflib.get_close_matches(x.split("=")[0], flags, n=1, cutoff=0.6) for x in extra if x.startswith("-")]
    hint = "; ".join(dict.fromkeys(f"did you mean {g[0]}?" for g in guesses if g))
    p.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; {hint}" if hint else ""))
    raise AssertionError("unreachable")  # p.error exits


def main(argv: list[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` re-runs it under torchrun
    debug = getattr(args, "debug", False)
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # A file name that is not UTF-8 (a str holding surrogates) is printed escaped, not as a traceback; stderr
        # does this already, and a C/POSIX locale's stdout passes the raw bytes through (surrogateescape)
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        # SIGTERM (`kill`, a scheduler's stop) ends every command as Ctrl-C does: cleanly, temp files removed
        with _api().sigterm_as_interrupt(), on_command_line():  # errors name flags, not keywords
            return args.func(args)
    except TuduiError as e:
        if debug:
            raise
        from .core.console import shown  # names and paths in it are the user's: no escape codes, no forged lines

        print(f"error: {shown(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)  # 130 for Ctrl-C, 143 for SIGTERM
    except BrokenPipeError:
        # Whatever read the output stopped reading (`tudui models | head -1`): end quietly with a shell's status for
        # a tool ended by SIGPIPE (Python ignores the signal, so the write raised instead). Standard output now
        # goes to /dev/null, or the interpreter's last flush would raise it again.
        try:
            stdout = sys.stdout.fileno()
        except (OSError, ValueError, AttributeError):  # not a real file (output captured in a notebook or test)
            stdout = None
        if stdout is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout)
            os.close(devnull)  # fd 1 now holds its own copy
        return 128 + 13  # 13: SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
