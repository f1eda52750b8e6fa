"""Typed options of every command, each field written once: its default, CLI flag, help, choices and range.

    @dataclass
    class PredictOptions(Options):
        batch_size: int = option(64, "images per forward pass", min=1)

gives `tudui predict --batch-size N` (cli.py builds every command's flags from these fields), the `batch_size=64`
keyword of `tudui.predict(...)` (api.py builds the dataclass from its keywords) and the check that N >= 1, which runs
when the options are built: before any model or data is read, however the command was called. TrainConfig
(core/config.py) is built the same way.

Field metadata (all optional): `flag` (default: `--` + the name with dashes), `positional` (a positional argument),
`group` (the section of `--help` it is listed in), `choices`, `min`/`max` (inclusive bounds), `gt`/`lt` (exclusive
bounds), `what` (what the value is, in brackets after the range error) or `kind` (what the value is, named
first: '--time is a budget in minutes and must be positive'), `cli=False` (a library keyword only), `store_true` (a
switch with no --no- form), and argparse's own `nargs`, `type`, `const`, `metavar`; `no_flag` adds `--no-NAME`
meaning that value; `aliases` other spellings of the flag (`--select-by` for `--best-by`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import TuduiError
from .modes import CAM_METHODS, REJECT_SCORES, SERVE_RUNTIMES, describe_modes

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field carrying its CLI flag, help text, choices and range (see the module docstring).

    No default (MISSING): a required keyword of the library call and a required argument on the command line.
    """
    meta = {"help": help, **meta}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line name of a field: `img_size` -> `--img-size` (a positional's own name)."""
    if f.metadata.get("positional"):
        return f.name
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# Whether the call being served came from the command line (cli.main sets it) or from Python (`tudui.train(...)`,
# the default): an error that says which option to change names it as the caller writes it
_COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("tudui_command_line", default=False)


@contextlib.contextmanager
def on_command_line():
    """Within it, `option_text` names options as flags (cli.main runs every command inside it)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def on_cli() -> bool:
    """Whether the call being served came from the command line (else from Python)."""
    return _COMMAND_LINE.get()


def option_text(name: str, value: Any = None) -> str:
    """An option as the caller gives it: `option_text("img_size", 32)` is '--img-size 32' on the command line and
    'img_size=32' in a library call; without a value, '--img-size' or 'img_size='."""
    if on_cli():
        flag = "--" + name.replace("_", "-")
        return flag if value is None else f"{flag} {value}"
    return f"{name}=" if value is None else f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"


def bounds_text(meta: dict) -> str | None:
    """'in [0, 1]', 'in (0, 1]', 'at least 1', 'positive', ... for a field's range; None without one."""
    lo, lo_open = (meta["gt"], True) if "gt" in meta else (meta.get("min"), False)
    hi, hi_open = (meta["lt"], True) if "lt" in meta else (meta.get("max"), False)
    if lo is None and hi is None:
        return None
    if hi is None:
        return ("positive" if lo == 0 else f"greater than {lo}") if lo_open else f"at least {lo}"
    if lo is None:
        return f"below {hi}" if hi_open else f"at most {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def in_bounds(value: Any, meta: dict) -> bool:
    """Whether a number lies within the field's range (min/max inclusive, gt/lt exclusive)."""
    return not (("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"])
                or ("gt" in meta and value <= meta["gt"]) or ("lt" in meta and value >= meta["lt"]))


def field_meta(cls, name: str) -> dict:
    """The metadata (help, range, ...) of the field `name` of an options dataclass."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


def range_message(name: str, value: Any, meta: dict) -> str:
    """'--topk must be at least 1 (classes per image), got 0': the one wording of a value outside a field's range,
    whether it came as a flag, a keyword or (the server's `?topk=`) a query parameter."""
    what = f" ({meta['what']})" if "what" in meta else ""
    kind = f" is {meta['kind']} and" if "kind" in meta else ""
    return f"{name}{kind} must be {bounds_text(meta)}{what}, got {value}"


class Options:
    """Base of the option dataclasses: building one checks every field's choices and range (`validate`)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """A value outside its field's choices or range is a one-line TuduiError naming the flag, before any work."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            choices = meta.get("choices")
            if choices and value not in choices:
                raise TuduiError(f"{flag_of(f)} takes one of {', '.join(map(str, choices))}, got {value!r}")
            bound = bounds_text(meta)
            if bound is None or isinstance(value, str):  # 'auto' and other words: their own parser checks them
                continue
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if not in_bounds(v, meta):
                    raise TuduiError(range_message(flag_of(f), v, meta))

    @classmethod
    def refuse_unknown(cls, values: dict, what: str, hint: str | None = None) -> None:
        """A key of `values` that is no field of `cls` is a one-line TuduiError: '{what} KEYS; {hint}' (by default
        the valid names)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TuduiError(f"{what} {', '.join(unknown)}; {hint or 'valid: ' + ', '.join(sorted(known))}")

    @classmethod
    def build(cls, values: dict) -> "Options":
        """The options from keyword values, an unknown keyword being a one-line error naming the valid ones."""
        cls.refuse_unknown(values, "unknown option(s)")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise TuduiError(f"missing option(s): {', '.join(missing)}")
        return cls(**values)


def whole_or_auto(flag: str, what: str = "a whole number"):
    """A parser for a count that may be 'auto' (--workers, --batch-size, --epochs): an int or the text 'auto', from
    the command line (text) or the library (int, float or str); a fractional or other value is one error line."""
    def parse(value) -> int | str:
        if isinstance(value, str) and value.lower() == "auto":
            return "auto"
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise TuduiError(f"{flag} takes {what} or auto, got {value!r}") from None
        if isinstance(value, float) and value != n:
            raise TuduiError(f"{flag} takes {what} or auto, got {value!r}")
        return n
    return parse


def workers_value(value) -> int | str:
    """--workers: a number of DataLoader processes, or 'auto' (the cores available, at most 8)."""
    n = whole_or_auto("--workers", "a number of processes")(value)
    if n != "auto" and n < 0:
        raise TuduiError(f"--workers must be 0 or more (0: decode in the training process), got {n}")
    return n


# The sections of `--help`, in the order it lists them (timm's grouping): a field's `group` names one.
GROUPS = {"data": "data", "model": "model", "optimisation": "optimisation", "augmentation": "augmentation",
          "run": "run and output", "device": "device and scale", "lr-find": "learning-rate range test",
          "unknown": "unknown: rejecting images unlike the training data", "tune": "the study (tudui tune)"}


# --- fields several commands share ---------------------------------------------------------------------------------
MODEL_PATH_HELP = ("a tudui checkpoint (.pt), a run directory, or an export (.onnx, .torchscript, .safetensors, OpenVINO "
                   ".xml)")
CACHE_MODES = ["auto", "disk", "ram", "off"]
EVAL_BATCH_SIZE = 512  # images per evaluation batch (no gradients: larger batches cost little memory)


def device_option() -> Any:
    return option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps", group="device")


def tta_option() -> Any:
    return option(None, "flip test-time augmentation: average each image with its mirror (--no-tta: off) "
                        "[default: as the model was trained, see `tudui train --tta`]", group="model")


def model_file_option() -> Any:
    return option(None, "the Python file of your own model (trained with --model file.py:Name) to rebuild it from: "
                        "where it is now if it has moved, or a file you have read. A file the model names is run "
                        "only if you trained with it here (or --trust-code)", metavar="PATH", group="model")


def trust_code_option() -> Any:
    return option(False, "run the Python file the model names even though you neither named it nor trained with it "
                         "on this machine: only for a model from someone you trust", store_true=True, group="model")


def reject_below_option() -> Any:
    return option(None, "answer unknown for an image whose --score is below P (a top probability in [0, 1] for msp), "
                        "still listing its scores", metavar="P", group="unknown")


def reject_option() -> Any:
    return option(None, "auto: the threshold that keeps --coverage of the validation images, stored with the model",
                  choices=["auto"], group="unknown")


def coverage_option() -> Any:
    return option(0.95, "with --reject auto: the share of validation images kept", gt=0, max=1, what="a share",
                  group="unknown")


def score_option() -> Any:
    return option("msp", f"what unknown is decided on: {describe_modes(REJECT_SCORES)}", choices=list(REJECT_SCORES),
                  group="unknown")


@dataclass
class ModelFileOptions(Options):
    """How a model file that names your own Python file is rebuilt (eval, predict, export, serve, summary)."""

    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()


# --- eval, predict, export, serve ----------------------------------------------------------------------------------
@dataclass
class EvalOptions(Options):
    """`tudui eval` / `tudui.evaluate(...)`: a model file's metrics on a labelled split."""

    checkpoint: str = option(MISSING, MODEL_PATH_HELP, positional=True)
    data: list = option(MISSING, "dataset name, folder(s) or CSV, as for train", nargs="+", group="data")
    split: str = option("auto", "which images: test, val (a val/ folder, else the training run's hold-out), train, "
                                "all (every image), or auto: test where the data has one, else all",
                        choices=["auto", "test", "val", "train", "all"], group="data")
    data_root: str | None = option(None, "where named datasets are looked for first", group="data")
    csv_columns: list | None = option(None, "the CSV's path column and label column(s) by their header names, as for "
                                            "train", nargs="+", group="data", metavar="COLUMN")
    batch_size: int = option(EVAL_BATCH_SIZE, "images per evaluation batch", min=1, group="data")
    workers: int | str = option("auto", "DataLoader processes for images decoded from their files: a number or auto "
                                        "(the cores available, at most 8)", type=str, group="data")
    cache: str = option("auto", "where decoded images come from, as for train: an image folder is read from the "
                                "disk cache", choices=CACHE_MODES, group="data")
    device: str = device_option()
    tta: bool | None = tta_option()
    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()
    reject_below: float | None = reject_below_option()
    reject: str | None = reject_option()
    coverage: float = coverage_option()
    score: str = score_option()
    cam: str | None = option(None, "also draw eval_<split>_mistakes.png: the most confidently wrong images, each with "
                                   "the class-activation map of the class it was taken for (--cam alone: layercam; "
                                   "see tudui explain)", nargs="?", const="layercam", choices=list(CAM_METHODS),
                             metavar="METHOD")

    def __post_init__(self) -> None:
        self.data = [self.data] if isinstance(self.data, str) else [str(d) for d in self.data]
        self.workers = workers_value(self.workers)
        super().__post_init__()


@dataclass
class PredictOptions(Options):
    """`tudui predict` / `tudui.predict(...)`: top-k classes of image files and folders."""

    model: str = option(MISSING, MODEL_PATH_HELP, positional=True, metavar="checkpoint")
    sources: list = option(MISSING, "image files and/or folders (searched recursively)", positional=True, nargs="+")
    topk: int = option(5, "classes to show per image", min=1, what="classes per image")
    batch_size: int = option(64, "images per forward pass", min=1)
    save_input: str | None = option(None, "write each image as the model saw it (resized, converted to its channels, "
                                          "normalisation undone) into DIR as a PNG named after the input",
                                    metavar="DIR")
    device: str = device_option()
    tta: bool | None = tta_option()
    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()
    reject_below: float | None = reject_below_option()
    reject: str | None = reject_option()
    coverage: float = coverage_option()
    score: str = score_option()

    def __post_init__(self) -> None:
        self.sources = [self.sources] if isinstance(self.sources, str) else [str(s) for s in self.sources]
        super().__post_init__()


@dataclass
class ExportOptions(Options):
    """`tudui export` / `tudui.export(...)`: a checkpoint as ONNX, TorchScript or safetensors."""

    checkpoint: str = option(MISSING, "a tudui checkpoint (.pt) or a run directory", positional=True)
    format: str = option("onnx", "onnx (onnxruntime, metadata in metadata_props), torchscript (.torchscript), or "
                                 "safetensors weights + a .safetensors.json sidecar, or hf (timm models: a folder "
                                 "timm.create_model('local-dir:FOLDER') loads, with a model card), or openvino (.xml "
                                 "+ .bin for the OpenVINO runtime; pip install 'tudui[openvino]')",
                         choices=["onnx", "torchscript", "safetensors", "hf", "openvino"])
    out: str | None = option(None, "output file (hf: folder) [default: the checkpoint's name with the format's "
                                   "suffix; best-hf/ for hf]")
    dynamic_batch: bool = option(False, "ONNX: any batch size (default: fixed at 1)", store_true=True)
    opset: int | None = option(None, "ONNX opset version [default: the exporter's]")
    int8: bool = option(False, "onnx, openvino: quantise to int8 (ONNX Runtime's static QDQ quantisation, per-channel "
                               "weights; NNCF for OpenVINO), calibrated on --calib training images", store_true=True)
    calib: int = option(300, "--int8: training images to calibrate on, the same number of each class", min=1)
    max_drop: float = option(1.0, "refuse the export when its top-1 on the validation split is more than this many "
                                  "points below the PyTorch model's", min=0)
    force: bool = option(False, "write the export even when it fails --max-drop (the figures go into its "
                                "metadata)", store_true=True)
    data: list | None = option(None, "the data the validation (and calibration) images come from [default: the "
                                     "training run's]", nargs="+")
    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        super().__post_init__()


BENCHMARK_FORMATS = ["pytorch", "torchscript", "onnx", "onnx-int8", "openvino", "openvino-int8"]


@dataclass
class BenchmarkOptions(Options):
    """`tudui benchmark` / `tudui.benchmark(...)`: every export format of a run, measured side by side."""

    checkpoint: str = option(MISSING, "a tudui checkpoint (.pt) or a run directory", positional=True)
    data: list | None = option(None, "the data the validation (and calibration) images come from [default: the "
                                     "training run's]", nargs="+")
    formats: list = option(list(BENCHMARK_FORMATS), f"formats to measure, of {', '.join(BENCHMARK_FORMATS)} "
                                                    "[default: every one installed here]", nargs="+", metavar="FORMAT")
    latency_runs: int = option(200, "single-image passes timed for the batch-1 latency", min=1)
    throughput_batches: int = option(20, "batches of 64 timed for the throughput", min=1)
    calib: int = option(300, "int8 formats: training images to calibrate on", min=1)
    max_drop: float = option(1.0, "points of validation top-1 below PyTorch's that a format to ship may lose", min=0)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.formats, str):
            self.formats = [self.formats]
        unknown = [f for f in self.formats if f not in BENCHMARK_FORMATS]
        if unknown or not self.formats:
            raise TuduiError(f"--formats takes one or more of {', '.join(BENCHMARK_FORMATS)}, got "
                             f"{', '.join(map(repr, unknown)) or 'none'}")
        super().__post_init__()


# Default --max-decode-mb: MiB that the decodes running at once may hold together. The costliest image within the
# pixel limit, a 64-Mpx RGBA WebP, declares ~1,000 MiB (a 64-Mpx 16-bit PNG ~260, a float TIFF or RGBA PNG ~510).
MAX_DECODE_MB = 1024.0


@dataclass
class ServeOptions(Options):
    """`tudui serve` / `tudui.serve(...)`: the model over HTTP (inference/server.py), and its serving limits."""

    model: str = option(MISSING, "a checkpoint (.pt), run directory, .onnx, .torchscript, .safetensors or OpenVINO "
                                 ".xml", positional=True)
    host: str = option("127.0.0.1", "address to listen on; 0.0.0.0 makes the model reachable from other machines")
    port: int = option(8000, "TCP port (0: any free port)", min=0, max=65535)
    max_upload_mb: float = option(10.0, "largest accepted upload in MiB", gt=0)
    topk: int = option(5, "classes returned per image (?topk=N overrides)", min=1, what="classes per image")
    device: str = device_option()
    tta: bool | None = tta_option()
    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()
    max_batch: int = option(32, "concurrent requests answered by one forward pass at most; 1: one request per pass",
                            min=1)
    max_wait_ms: float = option(2.0, "how long a batch may wait for requests still being decoded, in ms (a lone "
                                     "request never waits)", min=0)
    read_timeout_s: float = option(30.0, "seconds a request's whole body may take to arrive; slower uploads get 408",
                                   flag="--read-timeout", gt=0)
    max_decode_mb: float = option(MAX_DECODE_MB, "MiB the images being decoded at once (one per CPU core) may hold "
                                                 "together; an image needing more alone gets 413", gt=0)
    docs: bool = option(True, "serve the API's Swagger UI at /docs, its files from this server")
    workers: int | str = option("auto", "server processes sharing the port, each loading the model and running it on "
                                        "one thread: a number, or auto (the cores available, at most 4)", type=str)
    header_timeout_s: float = option(10.0, "seconds a connection may take to send a request's headers; a slower one "
                                           "(slow-loris) is closed", flag="--header-timeout", gt=0)
    access_log: bool = option(False, "print a line per request (uvicorn's access log); off by default, as in "
                                     "gunicorn: at thousands of requests a second writing it cost 10-20% of the "
                                     "throughput (benchmarks/README.md)")
    runtime: str = option("auto", f"what runs the forward pass of a checkpoint: {describe_modes(SERVE_RUNTIMES)}",
                          choices=list(SERVE_RUNTIMES))
    log_level: str = option("info", "uvicorn's log level", cli=False)
    reject_below: float | None = reject_below_option()
    reject: str | None = reject_option()
    coverage: float = coverage_option()
    score: str = score_option()

    def __post_init__(self) -> None:
        self.workers = whole_or_auto("--workers", "a number of processes")(self.workers)
        if self.workers != "auto" and self.workers < 1:
            raise TuduiError(f"--workers must be at least 1 (server processes), got {self.workers}")
        super().__post_init__()

    def processes(self) -> int:
        """--workers as a number: auto is the cores this process may use, at most 4."""
        if self.workers != "auto":
            return int(self.workers)
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        return max(1, min(4, n))


@dataclass
class ExplainOptions(Options):
    """`tudui explain` / `tudui.explain(...)`: class-activation maps of a model on image files and folders."""

    model: str = option(MISSING, "a tudui checkpoint (.pt) or a run directory (maps need the PyTorch model)",
                        positional=True, metavar="checkpoint")
    sources: list = option(MISSING, "image files and/or folders (searched recursively)", positional=True, nargs="+")
    method: str = option("layercam", "how the map is computed (pytorch-grad-cam's methods, read from a layer, and "
                                     "Captum's occlusion). layercam weighs each position by its own gradient, which "
                                     "suits heads that read each position with their own weights, as tudui's nets "
                                     "do; gradcam averages the gradient over the map and can give flat maps there; "
                                     "occlusion covers parts of the image in turn and maps how much the score drops "
                                     "(no layer; 49 forward passes per image)",
                         choices=list(CAM_METHODS))
    layer: str | None = option(None, "the layer the map is read from, by its name in the model (e.g. features.7, "
                                     "blocks.5.norm1) [default: the last layer with a spatial output that the score "
                                     "depends on]", metavar="NAME")
    class_name: str | None = option(None, "the class whose evidence is mapped [default: each image's top prediction]",
                                    flag="--class", metavar="NAME")
    box: list | None = option(None, "a box in the image's pixels; --json gives the share of each map inside it",
                              nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"))
    out: str | None = option(None, "folder for the PNGs [default: explain/ beside the checkpoint]", metavar="DIR")
    sanity: bool = option(False, "also compare each map with the maps of the same model with its weights "
                                 "randomised layer by layer from the top (Spearman rank correlation)",
                          store_true=True)
    batch_size: int = option(16, "images per pass", min=1)
    device: str = device_option()
    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()

    def __post_init__(self) -> None:
        self.sources = [self.sources] if isinstance(self.sources, str) else [str(s) for s in self.sources]
        if self.box is not None:
            if len(self.box) != 4:
                raise TuduiError(f"--box takes four numbers X0 Y0 X1 Y1, got {len(self.box)}")
            self.box = [float(v) for v in self.box]
            if not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
                raise TuduiError(f"--box X0 Y0 X1 Y1 needs X0 < X1 and Y0 < Y1, got {' '.join(map(str, self.box))}")
        super().__post_init__()


@dataclass
class CalibrateOptions(Options):
    """`tudui calibrate` / `tudui.calibrate(...)`: fit a checkpoint's calibration temperature (a multi-label model's:
    one per class) on a labelled split."""

    checkpoint: str = option(MISSING, "a tudui checkpoint (.pt) or a run directory (its best.pt); the temperature is "
                                      "written into it", positional=True)
    data: list = option(MISSING, "dataset name, folder(s) or CSV, as for train", nargs="+", group="data")
    split: str = option("val", "the images the temperature is fitted on: val (a val/ folder, else the training run's "
                               "hold-out) or another labelled split the model never trained on",
                        choices=["val", "test", "all"], group="data")
    data_root: str | None = option(None, "where named datasets are looked for first", group="data")
    csv_columns: list | None = option(None, "the CSV's path column and label column(s) by their header names, as for "
                                            "train", nargs="+", group="data", metavar="COLUMN")
    batch_size: int = option(EVAL_BATCH_SIZE, "images per evaluation batch", min=1, group="data")
    workers: int | str = option("auto", "DataLoader processes for images decoded from their files: a number or auto",
                                type=str, group="data")
    cache: str = option("auto", "where decoded images come from, as for eval", choices=CACHE_MODES, group="data")
    device: str = device_option()
    model_file: str | None = model_file_option()
    trust_code: bool = trust_code_option()

    def __post_init__(self) -> None:
        self.data = [self.data] if isinstance(self.data, str) else [str(d) for d in self.data]
        self.workers = workers_value(self.workers)
        super().__post_init__()


@dataclass
class TuneOptions(Options):
    """`tudui tune`'s own options (the study); every trial's data, model and fixed options are TrainConfig's."""

    trials: int = option(20, "trials this process runs (with --jobs, all its workers together)", group="tune", min=1)
    space: str = option("default", "the search space: 'default' (lr, weight decay, label smoothing, batch size, "
                        "augmentation, EMA, and the model among tudui's nets that fit the data unless --model is "
                        "given) or a YAML file of option: {low, high[, log]} ranges and option: [choices]",
                        group="tune")
    study: str | None = option(None, "the study's name: its folder PROJECT/tune/NAME holds the trials and the journal; "
                               "an existing study is continued (several processes may share one) [default: a new "
                               "study-N]", group="tune")
    storage: str | None = option(None, "an Optuna database URL (postgresql://..., mysql://..., sqlite:///FILE) "
                                 "instead of the journal file in the study's folder", group="tune")
    pruner: str = option("median", "stop a trial whose validation figure after an epoch is below the median of "
                         "earlier trials' at that epoch (median), by successive halving over brackets (hyperband), "
                         "or never (none)", group="tune", choices=["median", "hyperband", "none"])
    sampler: str = option("tpe", "how each trial's values are chosen: Optuna's TPE sampler, which learns from the "
                          "trials so far (tpe), or independently at random (random: the baseline a search is judged "
                          "against)", group="tune", choices=["tpe", "random"])
    jobs: int = option(1, "worker processes on this machine sharing the study (this one and JOBS-1 more); --trials "
                       "then counts all of theirs", group="tune", min=1)
    startup_trials: int = option(3, "trials that finish before the pruner compares against them", group="tune",
                                 min=0)
    report: bool = option(False, "run no trial: print the table of --study NAME, write its best.yaml and draw its "
                          "pictures (optimisation history, parameter importances, parallel coordinates)", group="tune",
                          store_true=True)
