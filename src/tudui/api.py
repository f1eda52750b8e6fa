"""The use-cases: one function per job, shared by the CLI and the library.

`tudui train ...` and `tudui.train(...)` are the same call (`train` below), and so are eval, predict,
export, serve, convert and summary: the CLI only parses flags into these functions' arguments and prints
what they return. Everything that decides *how* a job runs lives here or below, never in cli.py:
the config resolution (a YAML file, a preset, the run's own config on `resume=`), the default callbacks
(the console lines, TensorBoard, pictures, Ctrl-C), the `--nproc` launch, loading any model file for evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .core.checkpoint import load_checkpoint, save_checkpoint
from .core.config import LrFindOptions, TrainConfig, save_yaml
from .core.options import (BenchmarkOptions, CalibrateOptions, EvalOptions, ExplainOptions, ExportOptions, PredictOptions,
                           ServeOptions, TuneOptions)
from .core.console import shown
from .core.device import auto_workers, under_torchrun, world
from .core.errors import TuduiError
from .core.files import write_text
from .data import DataSpec, eval_layout, load_decoded, load_eval_split, make_loader, normalize
from .data.check import check_data, format_report
from .data.export_images import export_images
from .data.labels import LabelReading
from .data.split import as_multi_hot
from .engine.callbacks import Callback
from .engine import cam
from .engine import rejection
from .engine.calibration import calibrate as fit_calibration
from .engine.configure import resolve_config
from .engine.evaluate import evaluate as evaluate_model, kept_logits
from .engine.metrics import TopMistakes
from .engine.launcher import launch
from .engine.resume import RunFinished
from .engine.signals import GracefulStop, TrainingInterrupted, sigterm_as_interrupt
from .engine.distributed import session as distributed_session
from .engine.lr_find import LRFinding, lr_range_test
from .engine.multilabel import evaluate_multilabel, summarize
from .engine.optim import create_optimizer
from .engine.run import RunResult
from .engine.setup import refuse_lr_auto, setup
from .engine.trainer import fit
from .inference.convert import convert
from .inference.benchmark import BenchmarkResult, benchmark as benchmark_formats, format_table as benchmark_table
from .inference.export import ExportResult, export_model
from .inference.formats import load_model, runtime_device, suffix_format
from .inference.predictor import Prediction, Predictor, expand_paths, temperature_of
from .models import ModelInfo, count_parameters, create_model, get_model_info, list_models, register_model
from .models.user import parse_model_args
from .models.summary import ModelSummary, parse_input, summarize_model
from .reporting.cams import overlay, plot_cam_grid, save_png
from .reporting.console import ConsoleCallback
from .reporting.info import environment, format_environment
from .reporting.plots import PlotsCallback, plot_lr_find, plot_reliability, write_eval_reports
from .reporting.loggers import MLflowCallback, WandbCallback, mlflow_available, wandb_available
from .reporting.runs import RunRow, compare_runs, list_runs
from .reporting.studies import draw_study
from .reporting.tables import confusion_table, per_class_table
from .reporting.tensorboard import TensorBoardCallback
from .reporting.tensorboard_server import start_board, stop_board
from .tuning.study import TuneResult, report_study, run_study

__all__ = ["TrainConfig", "TuduiError", "RunResult", "RunFinished", "TrainingInterrupted", "LaunchFailed",
           "resolve_config", "default_callbacks", "train", "tune", "TuneResult", "runs", "compare_runs", "lr_find", "evaluate", "calibrate", "predict", "explain", "Predictor", "Prediction", "export", "benchmark",
           "serve", "convert", "summary", "model_rows", "create_model", "list_models", "register_model",
           "check_data", "format_report", "export_images", "environment", "format_environment", "start_board",
           "stop_board", "write_eval_reports", "per_class_table", "confusion_table"]


class LaunchFailed(TuduiError):
    """The `nproc`-process job ended with a non-zero exit code (torchrun has printed why)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- train -----------------------------------------------------------------------------------------------------------
def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The reporting callbacks a config asks for (--tensorboard, --plots, --logger)."""
    callbacks: list[Callback] = []
    if cfg.tensorboard:
        callbacks.append(TensorBoardCallback(log_every=cfg.log_every))
    if cfg.plots:
        callbacks.append(PlotsCallback())
    if cfg.logger == "mlflow":  # after the pictures: they go to MLflow as artefacts
        mlflow_available()
        callbacks.append(MLflowCallback(cfg.project))
    elif cfg.logger == "wandb":  # after the pictures, too
        wandb_available()
        callbacks.append(WandbCallback(cfg.project))
    return callbacks


def train(cfg: TrainConfig | None = None, callbacks: list[Callback] | None = None, *,
          config_file: str | Path | None = None, argv: list[str] | None = None, **options) -> RunResult | None:
    """Train a classifier; returns the RunResult (run directory, best/last checkpoints, metrics).

        tudui.train(data="fashion-mnist", epochs=5)         # options are TrainConfig fields (`tudui train --help`)
        tudui.train(resume="runs/exp", epochs=12)           # continue a run exactly, in its own directory
        tudui.train(config_file="runs/exp/config.yaml", seed=1)

    Ctrl-C (SIGINT) or SIGTERM stops after the current step and raises TrainingInterrupted, which says how to
    resume. With nproc > 1 (outside torchrun) the job is re-run in nproc processes under torchrun and None is
    returned (rank 0 prints where the run went); `argv` is the command line to re-run (the CLI passes its own).
    """
    if cfg is not None:  # its values as they are: to_dict() would turn a Dataset or nn.Module into a description
        given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        options = ({"resume": cfg.resume} if cfg.resume else given) | options
    cfg = resolve_config(options, config_file)
    # before torchrun starts, or before this rank joins its job: the processes it will have
    refuse_lr_auto(cfg, world().size if under_torchrun() else cfg.nproc)
    if cfg.nproc != 1 and not under_torchrun():
        _launch(cfg, argv)
        return None
    with GracefulStop() as stop:  # Ctrl-C / SIGTERM: stop after the step, say how to resume
        # the console first: its lines come before what the others print at the same moment
        return fit(cfg, [ConsoleCallback(), *default_callbacks(cfg), stop, *(callbacks or [])])


def _launch(cfg: TrainConfig, argv: list[str] | None) -> None:
    with tempfile.TemporaryDirectory(prefix="tudui-launch-") as tmp:
        if argv is None:  # a library call: the ranks read the resolved config from a file
            if cfg.resume:
                argv = ["train", "--resume", cfg.resume, "--epochs", str(cfg.epochs)]
            else:
                save_yaml(cfg.to_dict() | {"nproc": 1}, Path(tmp) / "config.yaml")
                argv = ["train", "--config", str(Path(tmp) / "config.yaml")] + \
                    (["--name", cfg.name] if cfg.name else [])
        code = launch(argv, cfg.nproc)
    if code != 0:
        raise LaunchFailed(f"the {cfg.nproc}-process training job ended with exit code {code}", code)


TUNE_KEYS = [f.name for f in dataclasses.fields(TuneOptions)]


def tune(*, config_file: str | Path | None = None, seed_sampler: int | None = None, enqueue: list[dict] | None = None,
         argv: list[str] | None = None, **options) -> TuneResult:
    """An Optuna study over training options (tuning/study.py): each trial a run in PROJECT/tune/STUDY/trial-K,
    trained as `train` would with the same console lines, TensorBoard and pictures; returns every trial and the
    best, whose config is written to the study folder's best.yaml.

        tudui.tune(data="digits", trials=20, epochs=4)                  # --space default
        tudui.tune(data="digits", trials=10, space="space.yaml", study="lr")

    options: TrainConfig's (fixed for every trial) and TuneOptions' trials, space, study, storage, pruner, sampler,
    startup_trials, jobs (worker processes: the command line `argv` started JOBS-1 more times), report (no trial:
    the table, best.yaml and pictures of an existing study). seed_sampler: the TPE sampler's seed; enqueue: parameter sets tried first."""
    study = TuneOptions.build({k: options.pop(k) for k in TUNE_KEYS if k in options})
    if study.report:
        return report_study(options.get("project", TrainConfig.project), study.study, study.storage,
                            draw=draw_study)
    if options.get("nproc", 1) != 1:
        raise TuduiError("tudui tune runs each trial in this process; drop --nproc (start more `tudui tune --study "
                         "NAME` processes to run trials side by side)")
    with GracefulStop() as stop:  # Ctrl-C / SIGTERM: stop after the step (the trial is recorded as failed)
        return run_study(options, config_file=config_file, space=study.space, trials=study.trials, study=study.study,
                         storage=study.storage, pruner=study.pruner, sampler=study.sampler,
                         startup_trials=study.startup_trials,
                         seed=seed_sampler, enqueue=enqueue, jobs=study.jobs, argv=argv, draw=draw_study,
                         callbacks=lambda cfg: [ConsoleCallback(), *default_callbacks(cfg), stop])


LR_FIND_KEYS = [f.name for f in dataclasses.fields(LrFindOptions)]


def lr_find(*, config_file: str | Path | None = None, **options) -> tuple[LRFinding, list[Path]]:
    """Learning-rate range test on a run's data and model; writes lr_find.csv and lr_find.png into a run directory
    (default runs/lr-find) and returns (finding, files). options: TrainConfig's, and LrFindOptions' steps, start
    and end (the sweep's length and its first and last rates)."""
    sweep = LrFindOptions.build({k: options.pop(k) for k in LR_FIND_KEYS if k in options})
    options = {"name": "lr-find", "tensorboard": False, "plots": False} | options
    cfg = resolve_config(options, config_file)
    if cfg.lr == "auto":
        cfg.lr = TrainConfig.lr  # the optimiser's recipe only; the test sets every rate itself
    with distributed_session(cfg.device):
        run = setup(cfg)
        with contextlib.closing(run):  # its directory stays locked until these files are written
            found = lr_range_test(run.model, run.train_loader, lambda x, y: (run.prepare(x, False), y),
                                  run.criterion, lambda: create_optimizer(cfg, run.model), run.device, cfg.amp,
                                  sweep.start, sweep.end, sweep.steps, default=float(cfg.lr))
            csv_path = run.run_dir / "lr_find.csv"
            write_text(csv_path, "lr,loss,smoothed_loss\n" + "".join(f"{a:.6g},{b:.6g},{c:.6g}\n" for a, b, c in
                                                                    zip(found.lrs, found.raw, found.losses)))
            png = plot_lr_find(found.lrs, found.losses, found.raw, found.suggestion, found.rule,
                               run.run_dir / "lr_find.png")
    return found, [csv_path, png]


# --- runs ------------------------------------------------------------------------------------------------------------
def runs(folder: str | Path = "runs", sort: str = "date") -> list[RunRow]:
    """Every run under `folder` (reporting/runs.py): date, data, model, the options that differ between the runs,
    epochs, best.pt's validation top-1, the test top-1, training seconds, and whether it finished; sorted by `sort`
    (date, run, val, test, time, epochs)."""
    return list_runs(folder, sort)


# --- evaluate, predict -----------------------------------------------------------------------------------------------
def _labelled_split(o, loaded, spec: DataSpec, dev, instead: str) -> tuple[str, object]:
    """(the split's name, a loader of it) for `tudui eval` and `tudui calibrate`: options `o`'s data and split, with
    the held-out split of the checkpoint's training run (`loaded`), in the model's class order, decoded as `spec`'s
    evaluation sees them. Data with several labels per image for a single-label model: a TuduiError ending in
    `instead` (what to do)."""
    cfg = loaded.meta.get("training", {})
    chosen, split = load_eval_split(o.data, o.split, o.data_root, cfg.get("val_split", 0.1), cfg.get("seed", 0),
                                    LabelReading.of(o.csv_columns))
    if chosen.multi and not spec.multi_label:
        raise TuduiError(f"{', '.join(map(str, o.data))} has images of several (or no) labels and "
                         f"{loaded.path} is a single-label model; {instead}")
    chosen = (as_multi_hot(chosen) if spec.multi_label else chosen).reindex(spec.classes)  # the model's class order
    chosen, in_memory, _ = load_decoded(chosen, eval_layout(spec), cache=o.cache)  # spec.decode's pixels
    return split, make_loader(chosen, spec, o.batch_size, False, dev, workers=auto_workers(o.workers),
                              in_memory=in_memory)


@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def evaluate(checkpoint: str | Path, data: list[str] | str, split: str = EvalOptions.split, **options) -> dict:
    """Loss, top-1/top-5, per-class precision/recall/F1 and confusion matrix of a model file on `split`.

    Any model file tudui writes (checkpoint or run directory, .onnx, .torchscript, .safetensors), with the
    preprocessing it was trained with. split: 'auto' (test where the data has a test split, 'all' for a folder or
    CSV with no train/val/test folders), 'test', 'val' (re-creates the training run's hold-out, same --val-split
    and --seed, when the data has no val folder), 'train', or 'all' (every image, nothing held out). options: core/options.EvalOptions' fields (`tudui eval --help`):
    data_root, batch_size, workers, device, cache, tta (flip test-time augmentation on/off; None: as trained),
    model_file (where your own model's Python file is now, if it moved since training, or a file you have read),
    trust_code (run the Python file a checkpoint names even if you neither named it nor trained with its contents
    on this machine; only for a model from someone you trust; the same for predict, export, serve and summary:
    without it such a file is refused with a TuduiError naming it); reject_below, reject ('auto'), coverage, score:
    also report what answering unknown below that threshold does (result["rejection"]: the share rejected, top-1 on
    the accepted images); result["risk_coverage"]: for a single-label model, top-1 on the accepted images against the
    share accepted at every threshold of `score` (engine/rejection.risk_coverage; drawn by write_eval_reports as
    eval_<split>_risk_coverage.png); cam: a tudui explain method, for result["cam_mistakes"] (the most confidently
    wrong images with their maps, drawn by write_eval_reports; a multi-label model's result["scores"] holds every
    image's probabilities and targets, (N, K) arrays "probs" and "targets", its precision-recall curves). cache:
    where the decoded images come from
    (`tudui train --cache`): an image folder is read from the disk cache a training run on it wrote.
    """
    o = EvalOptions.build({"checkpoint": str(checkpoint), "data": data, "split": split, **options})
    dev = runtime_device(o.checkpoint, o.device)
    loaded = load_model(o.checkpoint, "cpu", o.model_file, o.trust_code)
    model, spec = loaded.model, loaded.spec.with_tta(o.tta)
    split, loader = _labelled_split(o, loaded, spec, dev, "evaluate a model trained on multi-label data")
    temperature = temperature_of(loaded.meta)  # calibrated probabilities: the loss is that of the divided logits
    if spec.multi_label:  # at the thresholds the model was saved with (chosen on its validation split), each class's
        kept: dict = {}  # probability the sigmoid of its logit divided by its temperature (when calibrated)
        result = evaluate_multilabel(model.to(dev), loader, spec, dev, tune=False, keep=kept,
                                     temperature=temperature if "temperature" in loaded.meta else None)
        return result | {"classes": spec.classes, "split": split, "checkpoint": loaded.path, "tta": spec.flip_tta,
                         "scores": {"probs": kept["probs"], "targets": kept["targets"]}, "temperature": temperature}
    limit = rejection.threshold(loaded.meta, o.reject, o.reject_below, o.coverage, o.score)
    mistakes = TopMistakes() if o.cam else None
    # loss: of the logits as trained (results.csv's val_loss); calibrated_loss: of the logits / the temperature
    kept: list = []  # every batch's (logits, targets), from the same pass
    result = evaluate_model(model.to(dev), loader, spec, dev, nn.CrossEntropyLoss(), mistakes=mistakes,
                            temperature=temperature, kept=kept)
    if mistakes is not None and mistakes.items:  # --cam: each mistake's map for the class it was taken for
        result["cam_mistakes"] = {"method": o.cam, "items": cam.mistake_maps(model, mistakes.items, spec, o.cam, dev)}
    logits, targets = kept_logits(kept, spec.num_classes)  # (N, K), (N,)
    # accuracy on the accepted images against the share accepted, at every threshold of the score (--score)
    result["risk_coverage"] = rejection.risk_coverage(logits, targets, o.score, temperature)
    if limit is not None:  # "unknown": what rejecting below the threshold does to this split
        result["rejection"] = rejection.rejection_report(logits, targets, limit, o.score, temperature)
    return result | {"classes": spec.classes, "split": split, "checkpoint": loaded.path, "tta": spec.flip_tta,
                     "temperature": temperature}


@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def calibrate(checkpoint: str | Path, data: list[str] | str, split: str = CalibrateOptions.split,
              **options) -> dict:
    """Fit a checkpoint's calibration temperature on `split` (engine/calibration.py) and write it into the
    checkpoint, so predict, eval, serve and new exports divide its logits by it; reliability.png beside it.
    For a checkpoint trained before tudui calibrated, or to calibrate on other data. options: core/options.
    CalibrateOptions' fields (`tudui calibrate --help`). Returns {"temperature", "bins", "val": {"n", "ece_before",
    "ece_after", "nll_before", "nll_after", ...}, "checkpoint", "split", "picture"}. A multi-label model gets one
    temperature per class ("temperature" is their list, "multi_label" True) and its thresholds chosen again on the
    calibrated probabilities of the same images ("thresholds"; a model trained with --threshold T keeps T), which
    are written into the checkpoint with them."""
    o = CalibrateOptions.build({"checkpoint": str(checkpoint), "data": data, "split": split, **options})
    if suffix_format(o.checkpoint) != "checkpoint":
        raise TuduiError(f"tudui calibrate writes the temperature into a tudui checkpoint (.pt) or run directory; "
                         f"{shown(o.checkpoint)} is an export: calibrate its checkpoint, then export it again")
    dev = runtime_device(o.checkpoint, o.device)
    loaded = load_model(o.checkpoint, "cpu", o.model_file, o.trust_code)
    model, spec = loaded.model, loaded.spec
    split, loader = _labelled_split(o, loaded, spec, dev, "calibrate it on single-label data")
    found = fit_calibration(model.to(dev), loader, spec, dev)
    ckpt = load_checkpoint(loaded.path)
    path = Path(ckpt.pop("path"))
    ckpt["temperature"] = found["temperature"]
    if spec.multi_label:  # the thresholds of the calibrated probabilities (engine/multilabel.py), on the same images
        fixed = (ckpt.get("config") or {}).get("threshold")
        found["thresholds"] = summarize(*found.pop("logits"), spec, fixed, temperature=found["temperature"])[
            "thresholds"]
        ckpt["data"]["thresholds"] = found["thresholds"]
    else:
        ckpt["rejection"] = found["rejection"]
    save_checkpoint(ckpt, path)
    picture = plot_reliability(found, path.parent / "reliability.png")
    return found | {"checkpoint": str(path), "split": split, "picture": str(picture)}


@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def predict(model: str | Path, sources: list[str] | str, **options) -> tuple[Predictor, list[Prediction]]:
    """Top-k predictions for image files and folders (searched recursively); an unreadable file gets `error`.
    options: core/options.PredictOptions' fields (`tudui predict --help`): topk, batch_size, save_input (a folder
    for the images as the model saw them), device, tta, model_file, trust_code (as for `evaluate`); reject_below,
    reject ('auto'), coverage, score ('msp' or 'energy'): answer unknown below a threshold (Predictor.reject)."""
    o = PredictOptions.build({"model": str(model), "sources": sources, **options})
    files = expand_paths(o.sources)
    predictor = Predictor.from_path(o.model, device=o.device, tta=o.tta, model_file=o.model_file,
                                    trust_code=o.trust_code)
    predictor.reject(o.reject_below, o.reject, o.coverage, o.score)
    return predictor, predictor.predict(files, topk=o.topk, batch_size=o.batch_size, save_input=o.save_input)


# --- explain ---------------------------------------------------------------------------------------------------------
@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def explain(model: str | Path, sources: list[str] | str, **options) -> cam.Explained:
    """Class-activation maps (engine/cam.py): per image, where the model's evidence for a class lies, drawn over
    the image as the model saw it (after the same crop as predict) into `out` as <name>.png, with cams.png, a grid
    of them all. options: core/options.ExplainOptions' fields (`tudui explain --help`): method, layer, class_name
    (default: each image's top class; for a multi-label model each label it predicts, one map and one entry each,
    most probable first, the top class where it predicts none), box (x0, y0, x1, y1 in the image's pixels: each map's share inside it),
    out, sanity (cascading randomisation of the weights, Spearman correlations), batch_size, device, model_file,
    trust_code (as for `evaluate`). Needs a checkpoint or run directory: exports carry no gradients to hook."""
    from .data.images import BadImage, seen_region

    o = ExplainOptions.build({"model": str(model), "sources": sources, **options})
    files = expand_paths(o.sources)
    dev = runtime_device(o.model, o.device)
    loaded = load_model(o.model, dev, o.model_file, o.trust_code)
    if loaded.format not in ("checkpoint", "safetensors"):
        raise TuduiError(f"tudui explain needs the PyTorch model (a checkpoint .pt or a run directory); "
                         f"{shown(o.model)} is {loaded.format}, which carries no gradients to read maps from")
    net, spec, temperature = loaded.model.to(dev).eval(), loaded.spec, temperature_of(loaded.meta)
    if o.class_name is not None and o.class_name not in spec.classes:
        raise TuduiError(f"--class {o.class_name!r} is not one of this model's classes: "
                         f"{', '.join(spec.classes[:20])}{', ...' if len(spec.classes) > 20 else ''}")
    out = Path(o.out).expanduser() if o.out else Path(loaded.path).parent / "explain"
    if out.exists() and not out.is_dir():
        raise TuduiError(f"--out {shown(o.out)} is a file; name a folder for the pictures")
    results = [[cam.Explanation(str(f))] for f in files]  # per image: one entry per class mapped
    pixels = {}
    for i, f in enumerate(files):
        try:
            pixels[i] = spec.decode(f)
        except BadImage as e:
            results[i][0].error = e.reason
    if not pixels:
        raise TuduiError(f"none of the {len(files)} image(s) could be read")
    predictor = Predictor(net, spec, dev, meta=loaded.meta)  # its probabilities: the calibrated ones
    to_batch = predictor.batch
    layer = cam.choose_layer(net, to_batch([next(iter(pixels.values()))]), o.layer, o.method)  # None: occlusion
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = {"cams.png"}
    pictures, titles, xs, targets = [], [], [], []
    rows = list(pixels)
    for start in range(0, len(rows), o.batch_size):
        chunk = rows[start:start + o.batch_size]
        x = to_batch([pixels[i] for i in chunk])
        with torch.no_grad():  # the calibrated probabilities predict reports (its flip TTA aside: maps are of one pass)
            logits = net(x).float().cpu()
            # a multi-label model's labels: those predict gives (with its flip TTA, where the model has it)
            probs = predictor.probabilities(x) if spec.multi_label else (logits / temperature).softmax(1)
        if o.class_name is not None:
            wanted = [[spec.classes.index(o.class_name)] for _ in chunk]
        elif spec.multi_label:  # each predicted label (over its class's threshold), most probable first; none: the top
            above = predictor.labels_above(probs)
            wanted = [[spec.classes.index(c) for c, _ in labels] or [int(p.argmax())] for labels, p in zip(above, probs)]
        else:
            wanted = [[int(c)] for c in probs.argmax(1)]
        pairs = [(k, c) for k, cs in enumerate(wanted) for c in cs]  # (row of the chunk, class): one map each
        maps = cam.class_maps(net, x[[k for k, _ in pairs]], [c for _, c in pairs], o.method, layer, o.batch_size)
        for (k, c), m in zip(pairs, maps):
            i, p = chunk[k], probs[k]
            if results[i][-1].class_name is not None:  # a second label of a multi-label image: an entry of its own
                results[i].append(cam.Explanation(str(files[i])))
            e = results[i][-1]
            image, region = seen_region(files[i], spec.img_size, spec.crop_pct)
            size, scale = cam.region_of(image.size, region)
            shown_map = cam.resample(m, size)
            px, py = cam.peak(shown_map)
            e.class_name, e.probability, e.map = spec.classes[c], float(p[c]), m
            e.peak = (int(region[0] + (px + 0.5) / scale), int(region[1] + (py + 0.5) / scale))
            if o.box is not None:
                e.box_share = cam.box_share(shown_map, tuple((v - region[k % 2]) * scale for k, v in enumerate(o.box)))
            pic = overlay(image, region, shown_map)
            e.png = str(save_png(pic, out / cam_name(files[i], taken)))
            pictures.append(pic)
            titles.append(f"{Path(files[i]).name}\n{e.class_name} {e.probability:.0%}")
        if o.sanity:
            xs.append(x[[k for k, _ in pairs]].cpu())
            targets.extend(c for _, c in pairs)
    name = layer.name if layer is not None else None
    grid = plot_cam_grid(pictures, titles, out / "cams.png", f"{o.method} {cam.read_from(name)}")
    sanity = cam.sanity_check(net, torch.cat(xs), targets, o.method, name) if o.sanity else None
    return cam.Explained([e for entries in results for e in entries], o.method, name, str(out), str(grid), sanity)


def cam_name(source: str, taken: set[str]) -> str:
    """'photo-cam.png' for photo.jpg ('photo-cam-2.png' for a second photo.*): never the name of an input."""
    stem, n = Path(source).stem + "-cam", 1
    name = f"{stem}.png"
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


# --- export, serve ---------------------------------------------------------------------------------------------------
@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def export(checkpoint: str | Path, format: str = ExportOptions.format, out: str | Path | None = None,
           **options) -> ExportResult:
    """ONNX (fp32 or int8), TorchScript, safetensors or OpenVINO (fp32 or int8), written only when it gives PyTorch's
    answers and its validation top-1 is within max_drop points of PyTorch's (inference/export.py); options:
    core/options.ExportOptions' fields (`tudui export --help`): dynamic_batch, opset, int8, calib, max_drop, force,
    data, model_file and trust_code (as for `evaluate`)."""
    o = ExportOptions.build({"checkpoint": str(checkpoint), "format": format,
                             "out": None if out is None else str(out), **options})
    return export_model(o.checkpoint, o.format, o.out, dynamic_batch=o.dynamic_batch, opset=o.opset,
                        model_file=o.model_file, trust_code=o.trust_code, int8=o.int8, calib=o.calib,
                        max_drop=o.max_drop, force=o.force, data=o.data)


@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: the temporary exports are removed
def benchmark(checkpoint: str | Path, **options) -> BenchmarkResult:
    """Every export format of a run side by side (inference/benchmark.py): file size, validation top-1, batch-1
    latency, batch-64 throughput and peak memory per format, the machine they were measured on, and which format to
    ship. options: core/options.BenchmarkOptions' fields (`tudui benchmark --help`): data, formats, latency_runs,
    throughput_batches, calib, max_drop."""
    o = BenchmarkOptions.build({"checkpoint": str(checkpoint), **options})
    return benchmark_formats(o.checkpoint, o.data, o.formats, latency_runs=o.latency_runs,
                             throughput_batches=o.throughput_batches, calib=o.calib, max_drop=o.max_drop)


def serve(model: str | Path, **options) -> None:
    """The model over HTTP with a page to try it, until interrupted (inference/server.py). options:
    core/options.ServeOptions' fields (`tudui serve --help`): host, port, max_upload_mb, max_decode_mb, topk,
    max_batch, max_wait_ms, read_timeout_s, docs, device, tta, model_file, trust_code (as for `evaluate`),
    log_level, reject_below, reject, coverage, score (as for `predict`); they are checked before anything is
    loaded."""
    o = ServeOptions.build({"model": str(model), **options})
    from .inference.server import serve as run_server  # FastAPI/uvicorn are an optional extra: imported on use

    run_server(o)


# --- models ----------------------------------------------------------------------------------------------------------
def model_rows(num_classes: int = 10) -> list[tuple[ModelInfo, int]]:
    """(registered model, parameter count for `num_classes` classes and RGB input) for `tudui models`."""
    rows = []
    for info in list_models():
        with torch.device("meta"):  # shapes only: no memory, no initialisation time
            n = count_parameters(create_model(info.name, num_classes, 3, max(info.min_size, 32)))
        rows.append((info, n))
    return rows


def timm_models(pattern: str) -> list[tuple[str, int, bool]]:
    """(timm name, parameters at 1000 classes, whether pretrained weights are known) for `tudui models --timm PATTERN`."""
    from .models.timm_models import list_timm

    return list_timm(pattern)


def summary(model: str | Path, input: str | None = None, *, num_classes: int = 10, build_size: int | None = None,
            model_args: list[str] | dict | None = None,
            model_file: str | Path | None = None,
            trust_code: bool = False) -> tuple[ModelSummary, tuple[int, int, int]]:
    """(per-layer summary, input shape) of a registered model, your own `file.py:Name`, or a checkpoint's own
    (model_file, trust_code: as for `evaluate`)."""
    path = Path(model)
    if path.suffix == ".pt" or path.is_dir():  # a checkpoint: its own architecture and input size
        loaded = load_model(path, "cpu", model_file, trust_code)
        s = loaded.spec
        shape = parse_input(input) if input else (s.channels, s.img_size, s.img_size)
        return summarize_model(loaded.model, shape), shape
    info = get_model_info(str(model))
    shape = parse_input(input or f"3x{info.default_size}x{info.default_size}")
    build = build_size or (shape[1] if shape[1] == shape[2] and shape[1] >= info.min_size else info.default_size)
    if build < info.min_size:
        raise TuduiError(f"--build-size must be at least {info.min_size} for {model}, got {build}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        net = create_model(str(model), num_classes, shape[0], build, **parse_model_args(model_args))
    return summarize_model(net, shape), shape
