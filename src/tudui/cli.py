"""The `tudui` command: a table of subcommands, each parsing flags into one `api` function and printing its result.

Every user mistake raises TuduiError, printed as one line with exit code 2 (`--debug` shows the traceback
instead). `api` (and with it torch) is imported only once a command runs, so `tudui --help` stays quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from typing import Callable

from .core import __version__
from .core.config import TrainConfig
from .core.errors import TuduiError


def _api():
    from . import api

    return api


# --- flags several commands share --------------------------------------------------------------------------------------
TTA_HELP = ("flip test-time augmentation: average each image with its mirror (--no-tta: off) "
            "[default: as the model was trained, see `tudui train --tta`]")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps "
                   "[default: auto]")


def add_tta_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=TTA_HELP)


def add_model_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-file", default=None, metavar="PATH", help="the Python file of your own model (trained "
                   "with --model file.py:Name) to rebuild it from: where it is now if it has moved, or a file you "
                   "have read. A file the model names is run only if you trained with it here (or --trust-code)")
    p.add_argument("--trust-code", action="store_true", help="run the Python file the model names even though you "
                   "neither named it nor trained with it on this machine: only for a model from someone you trust")


def _arg_type(hint) -> type:
    """The argparse type for a field annotated `int`, `float | None`, `str | None`, ... (the non-None member)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return base if base in (int, float, str) else str


# --- train -------------------------------------------------------------------------------------------------------------
def _add_config_fields(p: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One flag per dataclass field; defaults are left to the dataclass so --config can be overridden."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        # argparse %-formats help texts: a literal % (e.g. "~100%") must be doubled
        kw: dict = {"help": meta.get("help", "").replace("%", "%%"), "default": argparse.SUPPRESS, "dest": f.name}
        hint = hints[f.name]
        if hint is bool or set(typing.get_args(hint)) == {bool, type(None)}:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            if "nargs" in meta:
                kw["nargs"] = meta["nargs"]
            if "const" in meta:  # `--amp` alone means `--amp on`
                kw["const"] = meta["const"]
            kw["type"] = meta.get("type") or _arg_type(hint)
            if "choices" in meta:
                kw["choices"] = meta["choices"]
        default = f.default if f.default is not dataclasses.MISSING else None
        if default not in (None, [], False):
            kw["help"] += f" [default: {default}]"
        p.add_argument(flag, **kw)
        if "no_flag" in meta:  # `--no-amp`, as when the option was a switch
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=meta["no_flag"],
                           default=argparse.SUPPRESS, help=f"the same as {flag} {meta['no_flag']}")
    p.add_argument("--config", dest="_config", metavar="YAML", help="read options from a YAML file (e.g. a run's "
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
    values = {k: v for k, v in vars(args).items() if k not in ("debug", "func", "command", "_argv", "_config",
                                                                "steps", "start", "end")}
    found, files = _api().lr_find(steps=args.steps, start=args.start, end=args.end,
                                  config_file=getattr(args, "_config", None), **values)
    print(f"suggested learning rate: {found.suggestion:.3g} ({found.rule}; {len(found.lrs)} steps from "
          f"{found.lrs[0]:.1g} to {found.lrs[-1]:.3g})")
    print("wrote " + ", ".join(map(str, files)))
    print(f"use it: tudui train ... --lr {found.suggestion:.3g}   (or --lr auto to run this test first)")
    return 0


def add_lr_find_args(p: argparse.ArgumentParser) -> None:
    _add_config_fields(p)
    p.add_argument("--steps", type=int, default=100, help="optimisation steps of the sweep [default: 100]")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate [default: 1e-7]")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate [default: 10]")


# --- eval --------------------------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    api = _api()
    from .core.config import workers_value

    r = api.evaluate(args.checkpoint, args.data, args.split, data_root=args.data_root, batch_size=args.batch_size,
                     device=args.device, workers=workers_value(args.workers), tta=args.tta, model_file=args.model_file,
                     cache=args.cache, trust_code=args.trust_code)
    files = api.write_eval_reports(r, args.out or os.path.dirname(r["checkpoint"]))
    if args.json:
        print(json.dumps(r, indent=1, ensure_ascii=False))
        print("wrote " + ", ".join(map(str, files)), file=sys.stderr)
        return 0
    print(f"{r['checkpoint']} on {', '.join(args.data)} [{args.split}]: {r['n']:,} images"
          + (" (flip TTA)" if r["tta"] else ""))
    print(f"loss {r['loss']:.4f}  top1 {r['top1']:.2%}  top5 {r['top5']:.2%}  macro-F1 {r['macro_f1']:.3f}\n")
    print(api.per_class_table(r["classes"], r) + "\n")
    print(api.confusion_table(r["classes"], r["confusion"]))
    print("\nwrote " + ", ".join(map(str, files)))
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a tudui checkpoint (.pt), a run directory, or an export (.onnx, "
                   ".torchscript, .safetensors)")
    p.add_argument("--data", nargs="+", required=True, help="dataset name, folder(s) or CSV, as for train")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split [default: test]")
    p.add_argument("--data-root", default=None, help="where named datasets are looked for first")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", default="auto", help="DataLoader processes for images decoded from their files: a "
                   "number or auto (the cores available, at most 8) [default: auto]")
    p.add_argument("--cache", default="auto", choices=["auto", "disk", "ram", "off"], help="where decoded images "
                   "come from, as for train: an image folder is read from the disk cache [default: auto]")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_tta_arg(p)
    add_model_file_arg(p)
    p.add_argument("--out", default=None, metavar="DIR", help="where the confusion-matrix PNG/CSV and per-class CSV "
                   "go [default: the checkpoint's folder]")


# --- predict -----------------------------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from .core.console import table

    predictor, preds = _api().predict(args.checkpoint, args.sources, topk=args.topk, batch_size=args.batch_size,
                                      device=args.device, tta=args.tta, model_file=args.model_file,
                                      trust_code=args.trust_code)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=1, ensure_ascii=False))
    else:
        rows = [[str(p.source), p.error and f"error: {p.error}" or
                 "  ".join(f"{c} {prob:.1%}" for c, prob in p.topk)] for p in preds]
        print(table(["image", f"top-{min(args.topk, len(predictor.classes))} (class probability)"], rows, "<<"))
    bad = sum(p.error is not None for p in preds)
    if bad:
        print(f"warning: {bad} of {len(preds)} image(s) could not be read", file=sys.stderr)
    return 1 if bad == len(preds) else 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a tudui checkpoint (.pt), a run directory, or an export (.onnx, "
                   ".torchscript, .safetensors)")
    p.add_argument("sources", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image [default: 5]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_arg(p)
    add_tta_arg(p)
    add_model_file_arg(p)


# --- export / serve ----------------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    r = _api().export(args.checkpoint, args.format, args.out, dynamic_batch=args.dynamic_batch, opset=args.opset,
                      model_file=args.model_file, trust_code=args.trust_code)
    print(f"wrote {', '.join(map(str, r.files))}" + (f" (opset {r.opset})" if r.opset else ""))
    return 0


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a tudui checkpoint (.pt) or a run directory")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"],
                   help="onnx (onnxruntime, metadata in metadata_props), torchscript (.torchscript), or safetensors "
                        "weights + a .safetensors.json sidecar [default: onnx]")
    p.add_argument("--out", default=None, help="output file [default: the checkpoint's name with the format's suffix]")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size (default: fixed at 1)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version [default: the exporter's]")
    add_model_file_arg(p)


def cmd_serve(args: argparse.Namespace) -> int:
    _api().serve(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, topk=args.topk,
                 device=args.device, tta=args.tta, model_file=args.model_file, trust_code=args.trust_code,
                 max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, read_timeout_s=args.read_timeout,
                 docs=args.docs, max_decode_mb=args.max_decode_mb)
    return 0


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a checkpoint (.pt), run directory, .onnx, .torchscript or .safetensors")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 makes the model reachable "
                   "from other machines [default: 127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port) [default: 8000]")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MiB [default: 10]")
    p.add_argument("--topk", type=int, default=5, help="classes returned per image (?topk=N overrides) [default: 5]")
    add_device_arg(p)
    add_tta_arg(p)
    add_model_file_arg(p)
    # Literal defaults (the same as inference/server.py's), so `tudui --help` needs no web packages imported.
    p.add_argument("--max-batch", type=int, default=32, help="concurrent requests answered by one forward pass at "
                   "most; 1: one request per pass [default: 32]")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch may wait for requests still being "
                   "decoded, in ms (a lone request never waits) [default: 2]")
    p.add_argument("--read-timeout", type=float, default=30.0, help="seconds a request's whole body may take to "
                   "arrive; slower uploads get 408 [default: 30]")
    p.add_argument("--max-decode-mb", type=float, default=1024.0, help="MiB the images being decoded at once (one "
                   "per CPU core) may hold together; an image needing more alone gets 413 [default: 1024]")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                   help="serve the API's Swagger UI at /docs, its files from this server [default: on]")


# --- models ------------------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .core.console import table

    rows = [[info.name, info.family, f"{n:,}", info.min_size, info.description]
            for info, n in _api().model_rows(args.num_classes)]
    print(table(["model", "family", f"params ({args.num_classes} classes, RGB)", "min input", "description"],
                rows, "<<><<"))
    return 0


# --- data --------------------------------------------------------------------------------------------------------------
def cmd_data_export(args: argparse.Namespace) -> int:
    files = _api().export_images(args.name, args.out, args.split, args.limit, args.format, args.data_root, args.seed)
    print(f"wrote {len(files)} images to {args.out}/<class>/")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    api = _api()
    report = api.check_data(args.paths)
    print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) if args.json else api.format_report(report))
    return 1 if report.errors else 0


def add_data_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="{export,check}", required=True)
    c = sub.add_parser("check", help="report unreadable/duplicate images, class balance, modes and sizes "
                       "(exit 1 on errors)")
    c.add_argument("paths", nargs="+", metavar="PATH", help="dataset folder(s) (train/ val/ test/ or one split) or CSV")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
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
                              model_args=args.model_args, model_file=args.model_file, trust_code=args.trust_code)
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
    add_model_file_arg(p)


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
    "train": ("train a classifier (writes runs/<name>/)", _add_config_fields, cmd_train),
    "lr-find": ("learning-rate range test on your data and model: a plot and a suggested --lr", add_lr_find_args,
                cmd_lr_find),
    "eval": ("evaluate a checkpoint on a labelled split", add_eval_args, cmd_eval),
    "predict": ("classify image files or folders", add_predict_args, cmd_predict),
    "export": ("export a checkpoint to ONNX, TorchScript or safetensors, with a parity check", add_export_args,
               cmd_export),
    "serve": ("serve a model over HTTP with a page to try it", add_serve_args, cmd_serve),
    "models": ("list the registered models", lambda p: p.add_argument("--num-classes", type=int, default=10),
               cmd_models),
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` re-runs it under torchrun
    debug = getattr(args, "debug", False)
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # A file name that is not UTF-8 (a str holding surrogates) is printed escaped, not as a traceback; stderr
        # does this already, and a C/POSIX locale's stdout passes the raw bytes through (surrogateescape)
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        # SIGTERM (`kill`, a scheduler's stop) ends every command as Ctrl-C does: cleanly, temp files removed
        with _api().sigterm_as_interrupt():
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


if __name__ == "__main__":
    sys.exit(main())
