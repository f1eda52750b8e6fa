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

import torch
import torch.nn as nn

from .core.config import LrFindOptions, TrainConfig, save_yaml
from .core.options import EvalOptions, ExportOptions, PredictOptions, ServeOptions, TuneOptions
from .core.console import shown
from .core.device import auto_workers, under_torchrun, world
from .core.errors import TuduiError
from .core.files import write_text
from .data import eval_layout, load_decoded, load_eval_split, make_loader
from .data.check import check_data, format_report
from .data.export_images import export_images
from .engine.callbacks import Callback
from .engine.configure import resolve_config
from .engine.evaluate import evaluate as evaluate_model
from .engine.launcher import launch
from .engine.resume import RunFinished
from .engine.signals import GracefulStop, TrainingInterrupted, sigterm_as_interrupt
from .engine.distributed import session as distributed_session
from .engine.lr_find import LRFinding, lr_range_test
from .engine.optim import create_optimizer
from .engine.run import RunResult
from .engine.setup import refuse_lr_auto, setup
from .engine.trainer import fit
from .inference.convert import convert
from .inference.export import ExportResult, export_model
from .inference.formats import load_model, runtime_device
from .inference.predictor import Prediction, Predictor, expand_paths
from .models import ModelInfo, count_parameters, create_model, get_model_info, list_models, register_model
from .models.user import parse_model_args
from .models.summary import ModelSummary, parse_input, summarize_model
from .reporting.console import ConsoleCallback
from .reporting.info import environment, format_environment
from .reporting.plots import PlotsCallback, plot_lr_find, write_eval_reports
from .reporting.loggers import MLflowCallback, mlflow_available
from .reporting.runs import RunRow, compare_runs, list_runs
from .reporting.tables import confusion_table, per_class_table
from .reporting.tensorboard import TensorBoardCallback
from .reporting.tensorboard_server import start_board, stop_board
from .tuning.study import TuneResult, report_study, run_study

__all__ = ["TrainConfig", "TuduiError", "RunResult", "RunFinished", "TrainingInterrupted", "LaunchFailed",
           "resolve_config", "default_callbacks", "train", "tune", "TuneResult", "runs", "compare_runs", "lr_find", "evaluate", "predict", "Predictor", "Prediction", "export",
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

    options: TrainConfig's (fixed for every trial) and TuneOptions' trials, space, study, storage, pruner,
    startup_trials, jobs (worker processes: the command line `argv` started JOBS-1 more times), report (no trial:
    the table, best.yaml and pictures of an existing study). seed_sampler: the TPE sampler's seed; enqueue: parameter sets tried first."""
    study = TuneOptions.build({k: options.pop(k) for k in TUNE_KEYS if k in options})
    if study.report:
        return report_study(options.get("project", TrainConfig.project), study.study, study.storage)
    if options.get("nproc", 1) != 1:
        raise TuduiError("tudui tune runs each trial in this process; drop --nproc (start more `tudui tune --study "
                         "NAME` processes to run trials side by side)")
    with GracefulStop() as stop:  # Ctrl-C / SIGTERM: stop after the step (the trial is recorded as failed)
        return run_study(options, config_file=config_file, space=study.space, trials=study.trials, study=study.study,
                         storage=study.storage, pruner=study.pruner, startup_trials=study.startup_trials,
                         seed=seed_sampler, enqueue=enqueue, jobs=study.jobs, argv=argv,
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
    without it such a file is refused with a TuduiError naming it). cache: where the decoded images come from
    (`tudui train --cache`): an image folder is read from the disk cache a training run on it wrote.
    """
    o = EvalOptions.build({"checkpoint": str(checkpoint), "data": data, "split": split, **options})
    dev = runtime_device(o.checkpoint, o.device)
    loaded = load_model(o.checkpoint, "cpu", o.model_file, o.trust_code)
    model, spec, cfg = loaded.model, loaded.spec.with_tta(o.tta), loaded.meta.get("training", {})
    chosen, split = load_eval_split(o.data, o.split, o.data_root, cfg.get("val_split", 0.1), cfg.get("seed", 0))
    chosen = chosen.reindex(spec.classes)  # the model's class order
    chosen, in_memory, _ = load_decoded(chosen, eval_layout(spec), cache=o.cache)  # spec.decode's pixels
    loader = make_loader(chosen, spec, o.batch_size, False, dev, workers=auto_workers(o.workers), in_memory=in_memory)
    result = evaluate_model(model.to(dev), loader, spec, dev, nn.CrossEntropyLoss())
    return result | {"classes": spec.classes, "split": split, "checkpoint": loaded.path, "tta": spec.flip_tta}


@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def predict(model: str | Path, sources: list[str] | str, **options) -> tuple[Predictor, list[Prediction]]:
    """Top-k predictions for image files and folders (searched recursively); an unreadable file gets `error`.
    options: core/options.PredictOptions' fields (`tudui predict --help`): topk, batch_size, save_input (a folder
    for the images as the model saw them), device, tta, model_file, trust_code (as for `evaluate`)."""
    o = PredictOptions.build({"model": str(model), "sources": sources, **options})
    files = expand_paths(o.sources)
    predictor = Predictor.from_path(o.model, device=o.device, tta=o.tta, model_file=o.model_file,
                                    trust_code=o.trust_code)
    return predictor, predictor.predict(files, topk=o.topk, batch_size=o.batch_size, save_input=o.save_input)


# --- export, serve ---------------------------------------------------------------------------------------------------
@sigterm_as_interrupt()  # `kill` stops it as Ctrl-C does: no temporary file outlives the process
def export(checkpoint: str | Path, format: str = ExportOptions.format, out: str | Path | None = None,
           **options) -> ExportResult:
    """ONNX, TorchScript or safetensors, written only when it gives PyTorch's answers (inference/export.py);
    options: core/options.ExportOptions' fields (`tudui export --help`): dynamic_batch, opset, model_file and
    trust_code (as for `evaluate`)."""
    o = ExportOptions.build({"checkpoint": str(checkpoint), "format": format,
                             "out": None if out is None else str(out), **options})
    return export_model(o.checkpoint, o.format, o.out, dynamic_batch=o.dynamic_batch, opset=o.opset,
                        model_file=o.model_file, trust_code=o.trust_code)


def serve(model: str | Path, **options) -> None:
    """The model over HTTP with a page to try it, until interrupted (inference/server.py). options:
    core/options.ServeOptions' fields (`tudui serve --help`): host, port, max_upload_mb, max_decode_mb, topk,
    max_batch, max_wait_ms, read_timeout_s, docs, device, tta, model_file, trust_code (as for `evaluate`),
    log_level; they are checked before anything is loaded."""
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
