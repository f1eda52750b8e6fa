"""Typed configuration of a training run.

One flat dataclass, like Ultralytics' args.yaml: every field is a CLI flag
(`img_size` -> `--img-size`), a YAML key in `config.yaml`, and a keyword of
`tudui.train(...)`. The resolved config is written into every run directory so
`tudui train --config runs/exp/config.yaml` repeats the run. Its fields are
built with core/options.py's `option` helper, as every command's options are:
each carries its help text, its `--help` group, its choices and its range.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import TuduiError
from .files import write_text
from .modes import AUGMENTS, BALANCES, CAM_METHODS, LOSSES, OPTIMIZERS, SCHEDULERS, describe_modes
from .options import Options, option, whole_or_auto, workers_value  # noqa: F401 (workers_value: re-exported)

# --batch-size/--epochs auto: chosen from the training set's size (engine/choices.py resolve_length); the
# range of a number is the field's (validate)
batch_value, epochs_value = whole_or_auto("--batch-size"), whole_or_auto("--epochs")


def number_or_auto(flag: str):
    """A parser for a real number that may be 'auto' (--lr, --label-smoothing; from the command line both arrive as
    text); its range is the field's (validate)."""
    def parse(value) -> float | str:
        if isinstance(value, str) and value.lower() == "auto":
            return "auto"
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TuduiError(f"{flag} takes a number or auto, got {value!r}") from None
    return parse


lr_value, smoothing_value = number_or_auto("--lr"), number_or_auto("--label-smoothing")


AMP_MODES = ("auto", "off", "on", "bf16", "fp16")


def amp_value(value) -> str:
    """--amp: auto, off, on (bf16 on a CPU, fp16 on CUDA), bf16 or fp16; True/False (older configs) mean on/off."""
    if isinstance(value, bool) or value is None:
        return "on" if value else "off"
    v = str(value).lower()
    if v in ("true", "false"):
        return "on" if v == "true" else "off"
    if v not in AMP_MODES:
        raise TuduiError(f"--amp takes one of {', '.join(AMP_MODES)}, got {value!r}")
    return v


_f = option  # short: the fields below are one call each


# Largest square input side (px) tudui trains or loads a model for: 8x the common 224-256, and a 2048x2048 RGB image
# is already 48 MiB of float32 per image. Bounds what a model file's metadata can make predict or serve allocate.
MAX_IMG_SIZE = 2048
MEMORY_LIMIT_MB = 4096  # largest decoded dataset (MB) kept in memory by default, in training and `tudui eval` alike

# Named recipes: each gives values to the options the user did not set (`--preset best --epochs 30` trains 30
# epochs with the rest of `best`; `--preset max --epochs 30` drops max's time budget). Tuned on Fashion-MNIST
# (benchmarks/README.md, issue 17): `best` aims at 94% within 1.5x the course's 10-epoch wall time, `max` at 95%
# within an hour (it plans its epochs to end inside a 55-minute budget).
# `course` and `blitz` are the lessons' own routines, every tudui default that changes the numbers turned off, so a
# learner gets the lesson's results first and can then switch each default back on to see what it adds. The training
# images are normalised with their measured mean and std in every preset (a sub-point effect against ToTensor alone).
_PLAIN = {"loss": "cross-entropy", "label_smoothing": 0.0, "weight_decay": 0.0, "augment": "none", "tta": False,
          "scheduler": "none", "warmup_epochs": 0.0, "ema": False, "clip_grad": None, "amp": "off"}
PRESETS: dict[str, dict[str, Any]] = {
    "best": {"model": "fast-res", "epochs": 14},
    "max": {"model": "fast-res-wide", "time": 55.0, "augment": "crop-flip", "erase": 0.25, "ema": True},
    # the course's train.py: its CIFAR-10 net, DataLoader(batch_size=64), SGD(lr=0.01), 10 epochs, fp32
    "course": _PLAIN | {"model": "cifar-net", "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.0,
                        "epochs": 10},
    # the 60-minute blitz: its MNIST CNN, DataLoader(batch_size=50), Adam(lr=0.001) (betas 0.9, 0.999), 1 epoch
    "blitz": _PLAIN | {"model": "mnist-cnn", "batch_size": 50, "optimizer": "adam", "lr": 0.001, "momentum": 0.9,
                       "epochs": 1},
}


@dataclass
class TrainConfig(Options):
    """Every option of a training run (`tudui train --help` lists them by group, `tudui.train(**options)` takes them).

    Fields hold plain values (a run's config.yaml is this object written out); the library also accepts a torch
    Dataset (or a {"train", "val", "test"} dict of them) in `data` and an nn.Module class or builder in `model`.
    Building one checks every value's choices and range (`validate`); `from_dict` adds a preset's values and
    refuses unknown keys, as config files need. `engine/configure.resolve_config` is how a run's config is assembled.
    """

    # --- data ---------------------------------------------------------------
    data: list = _f([], "a named dataset (`tudui info` lists them), a folder, a CSV of "
                        "path,label, or your own torch Dataset as path/to/file.py:name; several are concatenated",
                    nargs="+", group="data")
    classes: list | None = _f(None, "class names in the model's output order, for your own Dataset's labels "
                                    "(default: int labels as they are, str labels sorted as ImageFolder sorts them)",
                               nargs="+", group="data")
    csv_columns: list | None = _f(None, "the CSV's columns by their header names: the image path, then its label "
                                        "column (names separated by |, ; or spaces) or one 0/1 column per class "
                                        "(multi-hot), e.g. --csv-columns image_id tags", nargs="+", group="data",
                                  metavar="COLUMN")
    task: str = _f("auto", "single (one class per image, softmax), multi (any number of classes per image, a "
                           "sigmoid per class) or auto: multi as soon as one image has more or fewer than one label",
                   choices=["auto", "single", "multi"], group="data")
    threshold: float | None = _f(None, "multi-label: one probability threshold for every class (default: each "
                                       "class's threshold with the highest F1 on the validation split); saved with "
                                       "the model", group="data", min=0, max=1, what="a probability")
    preset: str | None = _f(None, "a recipe that sets every option not given explicitly: best (fast-res for 14 "
                                  "epochs), max (fast-res-wide for 55 minutes, crop-flip, erasing, EMA); see "
                                  "benchmarks/README.md; course (the course's routine: cifar-net, batch 64, plain SGD "
                                  "at lr 0.01, constant rate, no decay, smoothing, augmentation or TTA, fp32, 10 "
                                  "epochs), blitz (the 60-minute blitz: mnist-cnn, batch 50, Adam at lr 0.001, "
                                  "otherwise as course, 1 epoch)", choices=list(PRESETS), group="run")
    data_root: str | None = _f(None, "where named datasets are looked for first (then $TUDUI_DATA, then system folders)",
                               group="data")
    download: bool = _f(False, "download a named dataset with torchvision when it is not found", group="data")
    img_size: int | None = _f(None, "square input size in pixels (default: the dataset's own size)",
                              group="data", min=1, max=MAX_IMG_SIZE, what="pixels")
    channels: int | None = _f(None, "input channels, 1 or 3 (default: the dataset's own)", group="data")
    mean: list | None = _f(None, "per-channel mean in [0,1] (default: measured on the training set)", nargs="+", type=float,
                           group="data")
    std: list | None = _f(None, "per-channel std in [0,1] (default: measured on the training set)", nargs="+", type=float,
                          group="data")
    val_split: float = _f(0.1, "fraction of the training set held out (stratified, seeded) when there is no val/ folder",
                          group="data", min=0, lt=1, what="a fraction of the training set; 0: no hold-out")
    augment: str = _f("auto", "training augmentation: auto (photo for RGB photos at least as large as the training "
                              "size, else flip), " + describe_modes(AUGMENTS),
                      choices=["auto", *AUGMENTS], group="augmentation")
    crop_scale: list = _f([0.25, 1.0], "photo augmentation: the random crop's area as a fraction of the image, MIN MAX "
                                       "(aspect ratio 3/4 to 4/3)", nargs=2, type=float, group="augmentation")
    rotate: float = _f(0.0, "photo augmentation: largest random rotation in degrees (0: none)",
                       group="augmentation", min=0, max=180, what="the largest angle in degrees")
    color_jitter: float = _f(0.0, "photo augmentation: brightness, contrast and saturation each scaled by a random "
                                  "factor in [1 - J, 1 + J] per image (0: none; 0.2-0.4 is common)",
                             group="augmentation", min=0, lt=1)
    crop_pct: float | None = _f(None, "evaluation centre crop: resize the short side to img_size / crop_pct, "
                                      "cut out the centre img_size square; saved with the model, so predict, "
                                      "serve and exports do the same; 0: squash the whole image to a square "
                                      "(default: the pretrained weights' own crop, else 0.875, for photos; 0 for "
                                      "other images)",
                                group="augmentation", min=0, max=1,
                                what="0.875: resize to 256, crop 224; 0: squash the whole image")
    erase: float = _f(0.0, "random erasing: probability per image of a noise rectangle (0 off; Ultralytics uses 0.4)",
                      group="augmentation", min=0, max=1, what="a probability")
    mixup: float = _f(0.0, "mixup alpha: blend each image with another, soft targets (0 off; 0.2 is common)",
                      group="augmentation", min=0, what="a Beta distribution's alpha")
    cutmix: float = _f(0.0, "cutmix alpha: paste a box of another image, soft targets (0 off; 1.0 is common)",
                       group="augmentation", min=0, what="a Beta distribution's alpha")
    mix_prob: float = _f(1.0, "probability that an image is mixed when --mixup or --cutmix is on",
                         group="augmentation", min=0, max=1, what="a probability")
    hflip: bool | None = _f(None, "allow horizontal flips (default: off for digit datasets, on otherwise)",
                            group="augmentation")
    tta: bool = _f(True, "test-time augmentation: validate, test and predict on each image and its horizontal mirror, "
                         "averaging the logits (only where flips keep the label; saved with the model)",
                   group="augmentation")
    batch_size: int | str = _f("auto", "images per optimisation step (per process under torchrun), or auto: 16 below "
                                       "512 training images, 32 below 1,024, then 128 (16 and 32 are the global "
                                       "batch under torchrun, 128 is per process); the first line says what was "
                                       "chosen", type=str, group="optimisation", min=1)
    workers: int | str = _f("auto", "DataLoader worker processes for images decoded from their files every epoch "
                                    "(--cache off, large Datasets of your own): a number, or auto (the cores "
                                    "available, at most 8)", type=str, group="data")
    memory: str = _f("auto", "hold the decoded dataset in memory as uint8 and augment whole batches: auto, on, off",
                     choices=["auto", "on", "off"], group="data")
    cache: str = _f("auto", "where decoded images come from: disk (image folders are decoded once into "
                            "$TUDUI_CACHE or ~/.cache/tudui/decoded and memory-mapped; later runs, `tudui eval` and "
                            "other models on the same folder start without decoding), ram (decoded into memory "
                            "every run), off (files decoded every epoch by DataLoader workers); auto: disk for image "
                            "files, ram for your own Datasets", choices=["auto", "disk", "ram", "off"], group="data")
    memory_limit_mb: int = _f(MEMORY_LIMIT_MB, "largest decoded dataset (MB) that `--memory auto` keeps in memory",
                              group="data")
    subset: int | None = _f(None, "use only N training images, a seeded random choice (--seed) made after the "
                                  "validation hold-out and kept in the data's order (quick experiments, tests)",
                            group="data")
    bad_images: str = _f("skip", "what to do with unreadable images: skip (one warning listing them) or error",
                         choices=["skip", "error"], group="data")
    # --- model --------------------------------------------------------------
    model: str = _f("auto", "architecture name (see `tudui models`), or your own nn.Module class or builder function "
                            "as path/to/file.py:Name; auto: fast-wide where the device computes it fast in bf16 (a GPU, "
                            "a CPU with AMX where bf16 measures faster than fp32), else fast (about the same wall time "
                            "per epoch on each)", group="model")
    model_args: list = _f([], "keyword arguments for the model's constructor or builder, as key=value (YAML values: "
                              "width=32 act=relu)", nargs="+", group="model")
    weights: str | None = _f(None, "initial weights: a state_dict/checkpoint file, a run directory (its best.pt), or "
                                   "DEFAULT for torchvision's pretrained",
                             group="model")
    freeze_backbone: bool = _f(False, "train the classification head only: the frozen part runs in eval mode "
                                      "(BatchNorm statistics kept), once per --feature-views view, and the head "
                                      "trains on its cached features; needs --weights (a frozen random backbone is no "
                                      "feature extractor)", group="model")
    feature_views: int = _f(3, "head training from cached features: augmented views of the training set passed "
                               "through the frozen backbone (one per epoch until there are K; later epochs draw "
                               "each image's features from one of them); 1 with --augment none", group="model", min=1)
    fine_tune: int = _f(0, "train the head alone (from cached features) for N epochs, then unfreeze the backbone at a "
                           "rate of lr x --backbone-lr-mult for the rest of --epochs (one run, one results.csv)",
                        group="model", min=0, what="a number of head-only epochs")
    backbone_lr_mult: float = _f(0.1, "with --fine-tune: the backbone's learning rate as a fraction of the head's",
                                 group="model", gt=0)
    # --- optimisation -------------------------------------------------------
    epochs: int | str = _f("auto", "passes over the training set, or auto: 10, raised on small data until the run "
                                   "has seen 8,000 training images (at most 40 epochs); the first line says what "
                                   "was chosen", type=str, group="optimisation", min=1,
                           what="passes over the data")
    loss: str = _f("cross-entropy", "loss: " + describe_modes(LOSSES), choices=list(LOSSES), group="optimisation")
    label_smoothing: float | str = _f("auto", "cross-entropy label smoothing in [0, 1), or auto: 0.1, and 0.2 under "
                                              "--balance logit-adjust (long-tailed data); the number is saved in "
                                              "config.yaml", type=str, group="optimisation", min=0, lt=1)
    class_weights: str = _f("none", "weight classes in the loss: none or auto (inverse frequency; the same as "
                                    "--balance loss, which it sets)", choices=["none", "auto"], group="optimisation")
    balance: str = _f("auto", "what evens out classes of very different sizes in training: " +
                      describe_modes(BALANCES) + "; auto: logit-adjust when the largest training class has over 10x "
                      "the images of the smallest, else none; the first line says which",
                      choices=["auto", *BALANCES], group="optimisation")
    sampler_weights: str = _f("inverse", "--balance sampler: an image's chance of being drawn, inverse (1 / its "
                                         "class's images: every class equally often) or sqrt (1 / their square root: "
                                         "the rare classes raised, their images repeated less)",
                              choices=["inverse", "sqrt"], group="optimisation")
    # 1, the paper's: on long-tailed Fashion-MNIST (ratio 100, 3 seeds) validation balanced accuracy was highest at
    # 1 of 0.75/1/1.25/1.5 (with label smoothing spread as priors^tau: engine/optim.priors_tau); tudui's default run
    # (smoothing 0.2 under the adjustment) gained 3.2 points of test balanced accuracy over --balance none
    # (benchmarks/README.md, "Long-tailed data")
    logit_tau: float = _f(1.0, "--balance logit-adjust: tau, the multiple of the log class priors added to the "
                               "logits in training (1, as in Menon et al. 2021)",
                          group="optimisation", min=0, what="a multiple of the log priors")
    optimizer: str = _f("adamw", describe_modes(OPTIMIZERS), choices=list(OPTIMIZERS), group="optimisation")
    lr: float | str = _f(0.003, "peak learning rate, or auto: a learning-rate range test first (as `tudui lr-find`), "
                                "then its suggestion (or 0.003 where the test says the default is as good)", type=str, group="optimisation", gt=0)
    momentum: float = _f(0.9, "SGD momentum (Nesterov) / Adam beta1", group="optimisation")
    weight_decay: float = _f(0.05, "L2 weight decay (not applied to biases and norm layers)", group="optimisation")
    scheduler: str = _f("onecycle", "learning-rate schedule: " + describe_modes(SCHEDULERS), choices=list(SCHEDULERS),
                        group="optimisation")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (0: none for cosine/step, 5% of the steps for "
                                   "onecycle)", group="optimisation")
    step_size: int = _f(5, "epochs between decays for --scheduler step", group="optimisation")
    gamma: float = _f(0.1, "decay factor for --scheduler step", group="optimisation")
    patience: int | None = _f(None, "stop after this many epochs without a better validation score (--best-by's)",
                              group="optimisation")
    best_by: str = _f("auto", "which epoch best.pt keeps (and --patience waits to improve): top1, balanced-accuracy "
                              "(the mean recall of the classes) or macro-f1, each the highest on validation, ties to "
                              "the lower validation loss; last (the last epoch: the one-cycle schedule ends at its "
                              "lowest rate); or auto: balanced-accuracy when the largest training class has over 10x "
                              "the images of the smallest, else last when the validation split has fewer than 10 "
                              "images of some class (too few to rank epochs) and no --patience is given, else top1; "
                              "the first line says which",
                      choices=["auto", "top1", "balanced-accuracy", "macro-f1", "last"], group="optimisation",
                      aliases=["--select-by"])
    ema: bool = _f(False, "validate and save (best.pt, exports) an exponential moving average of the weights",
                   group="optimisation")
    ema_decay: float = _f(0.999, "EMA decay per optimisation step",
                          group="optimisation", min=0, max=1, what="a fraction")
    ema_tau: float = _f(500.0, "EMA warm-up in optimisation steps: decay x (1 - exp(-steps / tau))",
                        group="optimisation", gt=0, what="optimisation steps")
    clip_grad: float | None = _f(None, "clip the gradients' total L2 norm to this value", group="optimisation", gt=0)
    accumulate: int = _f(1, "optimisation step every N batches (gradients summed; schedule counted in steps)",
                         group="optimisation", min=1, what="the number of batches per optimisation step")
    # --- budgets and debug runs -------------------------------------------
    time: float | None = _f(None, "training budget in minutes: after the first epoch the run plans its epochs and "
                                  "schedule to end within it (replaces --epochs)",
                            group="run", gt=0, kind="a budget in minutes")
    fraction: float = _f(1.0, "fraction of the training images used (a seeded random subset)", group="run", gt=0, max=1)
    fast_dev_run: bool = _f(False, "one batch of train, val and test, every artefact written: checks a set-up in "
                                   "seconds", group="run")
    overfit_batches: int = _f(0, "train and validate on the same N batches without augmentation: a working set-up "
                                 "reaches ~100% on them", group="run", min=0, what="a number of batches")
    # --- hardware -----------------------------------------------------------
    device: str = _f("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps", group="device")
    amp: str = _f("auto", "mixed precision: auto (on a CPU with bf16 units, AVX512-BF16 or AMX, bf16 where a few "
                          "measured steps run >= 1.15x faster than fp32 and the model has dense convolutions; a model "
                          "under 400 multiply-adds per weight per step is timed itself and needs >= 1.05x; on CUDA "
                          "bf16 where supported, else fp16; the choice is printed in the first line), on (bf16 on a "
                          "CPU, fp16 on CUDA), bf16, fp16, off",
                  nargs="?", const="on", type=str, no_flag="off", group="device")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice; a shared machine is often steadier "
                                   "with fewer)", group="device", min=1)
    compile: bool = _f(False, "torch.compile the model (compiles during the first steps; pays off on long runs)",
                       group="device")
    cuda_graph: str = _f("auto", "replay each training step's forward and backward pass as one CUDA graph (small nets "
                                 "on a GPU are bound by kernel launches): auto (on CUDA for tudui's registered "
                                 "models), on (a model of your own too), off", choices=["auto", "on", "off"],
                         group="device")
    channels_last: bool = _f(True, "keep weights and activations channels-last (NHWC): faster convolutions on CPU "
                                   "(oneDNN) and on CUDA tensor cores", group="device")
    seed: int = _f(0, "random seed for weights, split, shuffling and augmentation", group="run")
    deterministic: bool = _f(False, "use deterministic algorithms (slower on GPU)", group="run")
    nproc: int = _f(1, "processes on this machine: N > 1 re-runs this command under torchrun (DDP; one per GPU, "
                       "or N CPU processes); the global batch is N x --batch-size", group="device")
    sync_bn: bool = _f(False, "under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only)",
                       group="device")
    # --- output -------------------------------------------------------------
    project: str = _f("runs", "folder that holds run directories", group="run")
    name: str | None = _f(None, "run directory name (default: exp, exp-2, ...)", group="run")
    exist_ok: bool = _f(False, "reuse an existing run directory of the same name", group="run")
    resume: str | None = _f(None, "continue a run exactly at its next epoch: a run directory or its last.pt "
                                  "(only --epochs, raised, and --device/--workers/--data-root may be given with it)",
                            group="run")
    tensorboard: bool = _f(True, "write TensorBoard event files into the run directory (see `tudui board`)",
                           group="run")
    log_every: int = _f(50, "log the training loss to TensorBoard every N optimisation steps (and at least 4 times an "
                            "epoch)", group="run")
    plots: bool = _f(True, "draw PNG pictures (curves, confusion matrix, mistakes, a training batch) at the end",
                     group="run")
    cam: str | None = _f(None, "draw mistakes.png with each image's class-activation map of the class it was taken "
                               "for (--cam alone: layercam; see tudui explain)", nargs="?", const="layercam",
                         choices=list(CAM_METHODS), group="run")
    calibrate: str = _f("on", "at the end, fit one temperature on the validation split (minimising its negative "
                              "log-likelihood; a multi-label model: one per class, its thresholds then chosen on the "
                              "calibrated probabilities) that divides the logits, so predict, eval and serve report "
                              "calibrated probabilities; saved with the model (off: probabilities as trained)",
                        group="run", choices=["on", "off"])
    logger: str | None = _f(None, "also log to an experiment tracker: mlflow (the options, every epoch's metrics, the "
                            "pictures and best.pt, to $MLFLOW_TRACKING_URI or PROJECT/mlflow.db; pip install "
                            "'tudui[mlflow]') or wandb (the same to Weights & Biases, offline into PROJECT/wandb "
                            "without a network or API key; pip install 'tudui[wandb]')", group="run",
                            choices=["mlflow", "wandb"])

    def __post_init__(self) -> None:
        # The library also takes objects: `model` an nn.Module or a builder, `data` torch Datasets (or a list of
        # them, or {"train": ..., "val": ..., "test": ...}); names and paths stay strings.
        if isinstance(self.data, (str, Path, dict)) or not isinstance(self.data, (list, tuple)):
            self.data = [self.data]
        self.data = [str(d) if isinstance(d, Path) else d for d in self.data]
        self.lr, self.label_smoothing = lr_value(self.lr), smoothing_value(self.label_smoothing)
        self.batch_size, self.epochs = batch_value(self.batch_size), epochs_value(self.epochs)
        self.workers = workers_value(self.workers)
        self.amp = amp_value(self.amp)
        if self.class_weights == "auto":  # the older spelling of --balance loss
            if self.balance not in ("auto", "loss"):
                raise TuduiError(f"--class-weights auto is --balance loss; it cannot go with --balance {self.balance}: "
                                 "give one of them")
            self.balance = "loss"
        self.validate()

    def validate(self) -> None:
        """Values out of their field's choices or range (core/options.py), and combinations that cannot work, are
        one-line errors before any data is read."""
        super().validate()
        lo, hi = (list(self.crop_scale) + [None, None])[:2]
        if len(self.crop_scale) != 2 or not 0 < lo <= hi <= 1:
            raise TuduiError(f"--crop-scale takes MIN MAX with 0 < MIN <= MAX <= 1 (area fractions), got "
                             f"{' '.join(map(str, self.crop_scale))}")
        # a model tudui builds starts random; an nn.Module given built (library) has whatever weights it was given
        built = hasattr(self.model, "state_dict") and not isinstance(self.model, type)
        # a model name that carries its weights: a timm tag (timm:NAME.TAG) or a local-dir: folder (timm_models.py)
        named = isinstance(self.model, str) and (self.model.startswith("local-dir:") or
                                                  self.model.startswith("timm:") and "." in self.model)
        # (a resumed run's weights are its last.pt: a model given built is recorded by name, timm:ARCH, in config.yaml)
        if self.freeze_backbone and not self.weights and not built and not named and not self.resume:
            raise TuduiError("--freeze-backbone without --weights would train a head on a randomly initialised, "
                             "frozen backbone; pass --weights DEFAULT (torchvision's or timm's pretrained weights) or --weights "
                             "FILE (a checkpoint or state_dict), or drop --freeze-backbone to train the whole model")
        if self.balance == "loss" and self.loss not in ("cross-entropy", "nll"):
            raise TuduiError(f"--balance loss weights the classes in cross-entropy or nll; --loss {self.loss} takes no "
                             "class weights: use --balance sampler or logit-adjust with it, or --loss cross-entropy")
        if self.balance == "sampler" and self.overfit_batches:
            raise TuduiError("--overfit-batches trains on the same batches every epoch and --balance sampler draws "
                             "others each epoch; give one of them")
        if self.fine_tune and self.freeze_backbone:
            raise TuduiError("--fine-tune N unfreezes the backbone after N epochs and --freeze-backbone keeps it "
                             "frozen; give one of them")
        if self.fine_tune and self.epochs != "auto" and self.fine_tune >= self.epochs and self.time is None:
            raise TuduiError(f"--fine-tune {self.fine_tune} leaves no epoch of --epochs {self.epochs} to train the "
                             f"unfrozen backbone; --epochs counts both phases (e.g. --epochs {self.fine_tune + 5})")

    def to_dict(self) -> dict:
        """Plain values only (YAML, checkpoints): objects given to the library are written as a description."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config from explicit `values`; a `preset` fills in the options they do not mention."""
        cls.refuse_unknown(values, "unknown config key(s):", "see `tudui train --help` for the valid ones")
        preset = values.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise TuduiError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
            given = PRESETS[preset] if "epochs" not in values else \
                {k: v for k, v in PRESETS[preset].items() if k != "time"}  # explicit epochs beat a time budget
            values = given | values
        return cls(**values)



@dataclass
class LrFindOptions(Options):
    """`tudui lr-find`'s own options; the run's data, model and optimiser are TrainConfig's."""

    steps: int = _f(100, "optimisation steps of the sweep", group="lr-find", min=1)
    start: float = _f(1e-7, "first learning rate", group="lr-find", gt=0)
    end: float = _f(10.0, "last learning rate", group="lr-find", gt=0)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    return describe(value)


def describe(obj: Any) -> str:
    """'<MyData object from course.py, 245 items>' for what cannot be written as a plain value."""
    kind = obj.__name__ if isinstance(obj, type) or callable(obj) and hasattr(obj, "__name__") else type(obj).__name__
    try:
        size = f", {len(obj)} items"
    except TypeError:
        size = ""
    return f"<{kind} object{size}>"


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TuduiError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TuduiError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise TuduiError(f"config file {path} must hold a mapping of option: value")
    return values


def save_yaml(values: dict, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
