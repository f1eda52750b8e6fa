"""Set-up: a TrainConfig -> a `Run` ready to train (engine/run.py), in a few small steps.

The run directory first (named and locked before any data is read), then device and seed, data, model, loaders,
optimisation, the step kind (eager or a CUDA graph), cached head features, --lr auto, the run's files, and --resume.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..core.config import TrainConfig, save_yaml
from ..core.device import World, make_scaler, reuse_freed_memory, seed_everything, select_device, world
from ..core.checkpoint import weights_data
from ..core.console import shown
from ..core.errors import TuduiError
from ..core.options import on_cli, option_text
from ..core.files import close_run_dir, open_run_dir, versions
from ..data import IMAGENET_MEAN, IMAGENET_STD, RESAMPLE, DataBundle, build_data, eval_batch_size, make_loader
from ..models import get_model_info
from ..models.training import create_training_model
from ..models.user import module_in_channels, top_level_warning
from ..models.surgery import head_path, take_weights_report
from ..models.timm_models import hf_folder, is_timm, pretrained_cfg, take_weights_mapping, weights_kind
from ..models.zoo import weights_crop_pct
from . import distributed, features, finetune
from .callbacks import Callback
from .choices import (resolve_amp, resolve_balance, resolve_best_by, resolve_cuda_graph, resolve_length,
                      resolve_model, resolve_smoothing, resolve_workers)
from .cuda_graph import GraphedStep
from .ema import ModelEMA
from .lr_find import lr_range_test
from .optim import create_loss, create_optimizer, create_scheduler
from .results import write_results
from .resume import restore_run
from .run import Run
from .multilabel import plain_bce
from .step import EagerStep, plain_cross_entropy


def timm_preprocessing(cfg: TrainConfig) -> tuple:
    """(mean/std, crop ratio, input side, the line saying what came from where, the mean/std's source, the record the
    DataSpec keeps) a timm model's pretrained weights were trained with (their pretrained_cfg, or a local-dir: or
    --weights folder's config.json); --img-size, --crop-pct and --mean/--std given on the command line win."""
    pcfg = pretrained_cfg("local-dir:" + cfg.weights if hf_folder(cfg.weights) else cfg.model)
    tag = f"{pcfg.get('architecture')}.{pcfg.get('tag')}" if pcfg.get("tag") else cfg.model
    local = str(pcfg.get("source")).endswith("config.json")
    src = f"the pretrained_cfg in {shown(pcfg['source'])}" if local else f"timm's pretrained_cfg of {tag}"
    norm = (list(pcfg["mean"]), list(pcfg["std"])) if pcfg.get("mean") and pcfg.get("std") else None
    side = (pcfg.get("input_size") or (0, 0, 0))[-1] or None
    taken = []
    if norm and cfg.mean is None:
        taken.append("mean/std " + "/".join(f"{v:g}" for v in norm[0]) + " " + "/".join(f"{v:g}" for v in norm[1]))
    if side and not cfg.img_size:
        taken.append(f"input {side} px")
    if pcfg.get("crop_pct") and cfg.crop_pct is None:
        taken.append(f"evaluation crop {pcfg['crop_pct']:g} (photos)")
    given = ["/".join(map(option_text, names)) for names, v in
             ((("img_size",), cfg.img_size), (("crop_pct",), cfg.crop_pct), (("mean", "std"), cfg.mean)) if v is not None]
    interp = pcfg.get("interpolation")
    if interp in RESAMPLE and interp != "bilinear":
        taken.append(f"{interp} resizes")
    line = f"preprocessing: {', '.join(taken) or 'nothing'} from {src}" + \
        (f"; {', '.join(given)} from {'the command line' if on_cli() else 'the call'}" if given else "") + \
        (f"; the weights were trained on {interp} resizes, tudui resizes bilinearly" if interp and
         interp not in RESAMPLE else "")
    record = {"source": src, **{k: list(v) if isinstance(v, tuple) else v for k, v in pcfg.items()
                                if k in ("mean", "std", "input_size", "crop_pct", "interpolation", "hf_hub_id")}}
    return norm, pcfg.get("crop_pct"), side, line, src if norm else None, record


def _weights_note(cfg: TrainConfig, spec, report, trained: dict | None, norm, norm_note: str | None,
                  mapping: list | None = None) -> str:
    """One line on --weights: what was loaded, skipped and adapted, the input the weights were trained on where it
    differs from this run's, and which mean/std the images are normalised with; a file in another naming mapped by
    order says so, with the mapping."""
    hub = f"timm's pretrained weights for {cfg.model} (through its Hugging Face Hub cache), head new for " \
        f"{spec.num_classes} classes" if is_timm(cfg.model) and weights_kind(cfg.model, cfg.weights) == "hub" else None
    parts = [report.line()] if report else [f"weights: {hub or shown(cfg.weights or cfg.model)}"]
    if mapping:
        shown_pairs = [f"{a} -> {b}" for a, b in mapping[:3]] + ["..."] + [f"{a} -> {b}" for a, b in mapping[-2:]]
        parts.append(f"the file's {len(mapping)} tensors mapped to timm's names by order and shape "
                     f"({', '.join(shown_pairs)})")
    if trained and (trained.get("channels"), trained.get("img_size")) != (spec.channels, spec.img_size):
        parts.append(f"trained on {trained.get('channels')}x{trained.get('img_size')}x{trained.get('img_size')} "
                     f"input, this run is {spec.channels}x{spec.img_size}x{spec.img_size}")
    if cfg.mean is not None:
        parts.append("normalised with --mean/--std")
    elif norm_note:
        fitted = "" if len(norm[0]) == spec.channels else " (averaged over the channels)" if spec.channels == 1 \
            else " (repeated for each channel)"
        parts.append(f"normalised with {norm_note}{fitted}, as the weights were trained")
    else:
        parts.append("mean/std measured on this data (the file does not say which the weights were trained with)")
    return "; ".join(parts)


def build_loaders(cfg: TrainConfig, data: DataBundle, device: torch.device, w: World, workers: int = 0) -> tuple:
    """(train loader, val loader or None); under torchrun each rank gets its own shard."""
    args = dict(device=device, workers=workers, seed=cfg.seed, bad_images=cfg.bad_images, rank=w.rank,
                world_size=w.size, in_memory=data.in_memory, reused=True)  # read every epoch: Run.close stops them
    train = make_loader(data.train, data.spec, cfg.batch_size, True, layout=data.train_layout,
                        sampler_weights=cfg.sampler_weights if cfg.balance == "sampler" else None, **args)
    if len(train) == 0:
        raise TuduiError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    val = make_loader(data.val, data.spec, eval_batch_size(cfg.batch_size), False, **args) if data.val else None
    return train, val


def write_run_files(run: Run) -> None:
    """Rank 0: config.yaml (fully resolved, so --config repeats the run), env.yaml, a new results.csv."""
    cfg, spec, w = run.cfg, run.spec, run.world
    resolved = cfg.to_dict() | {"img_size": spec.img_size, "channels": spec.channels, "mean": spec.mean,
                                "std": spec.std, "hflip": spec.hflip, "name": run.run_dir.name, "resume": None,
                                "nproc": w.local_size,  # so --config repeats a torchrun job
                                "augment": run.data.augment, "crop_pct": spec.crop_pct or 0}  # auto, as chosen
    if not isinstance(cfg.model, str) and "source" not in run.arch:  # timm's or torchvision's model given built: by
        resolved["model"] = run.arch["name"]  # the name its checkpoints rebuild it by, so --resume rebuilds it too
    save_yaml(resolved, run.run_dir / "config.yaml")
    if not cfg.resume:
        write_results(run.run_dir / "results.csv", [])  # a new run starts a new table
        # --exist-ok: an earlier run's TensorBoard events would put its steps 1, 2 under this run's 1, 2, 3
        old = sorted(run.run_dir.glob("events.out.tfevents.*"))
        for f in old:
            f.unlink()
        if old:
            run.notes.append(f"removed {len(old)} TensorBoard event file(s) of the earlier run in "
                             f"{shown(run.run_dir)} (--exist-ok starts a new run; --resume continues one)")
        (run.run_dir / "metrics.json").unlink(missing_ok=True)  # an older run's (--exist-ok): written again at the end
    # a timm:NAME model's library, whose version decides its architecture (only for such a model: another test or
    # notebook cell may have imported timm without this run using it)
    timm = sys.modules.get("timm") if is_timm(run.arch.get("name")) else None
    save_yaml(versions() | ({"timm": str(timm.__version__)} if timm else {}) |
              {"device": str(run.device), "threads": torch.get_num_threads(), "argv": sys.argv, "world_size": w.size},
              run.run_dir / "env.yaml")


def debug_splits(cfg: TrainConfig, data: DataBundle) -> None:
    """--fast-dev-run: one batch of each split; --overfit-batches N: the same N training batches as train and val."""
    first = lambda split, n: split.subset(np.arange(min(n, len(split)))) if split is not None else None  # noqa: E731
    if cfg.fast_dev_run:
        data.train, data.val, data.test = (first(data.train, cfg.batch_size), first(data.val, cfg.batch_size),
                                           first(data.test, cfg.batch_size))
    elif cfg.overfit_batches:
        data.train = first(data.train, cfg.overfit_batches * cfg.batch_size)
        data.val, data.test = data.train, None


def refuse_lr_auto(cfg: TrainConfig, processes: int) -> None:
    """--lr auto is a range test in one process: a job of several processes is refused (api.train asks before the
    job starts, resolve_lr again for a caller of fit)."""
    if cfg.lr == "auto" and processes > 1:
        raise TuduiError(f"--lr auto runs in one process, not in a job of {processes}; run `tudui lr-find` with the "
                         "same options first and pass the --lr it suggests")


def resolve_lr(cfg: TrainConfig, run: Run) -> None:
    """--lr auto: a range test on the run's model and data (restored afterwards), then its suggestion."""
    if cfg.lr != "auto":
        return
    refuse_lr_auto(cfg, run.world.size)
    found = lr_range_test(run.model, run.train_loader, lambda x, y: (run.prepare(x, False), y), run.criterion,
                          lambda: create_optimizer(replace(cfg, lr=1e-7), run.model), run.device, cfg.amp,
                          default=TrainConfig.lr)
    cfg.lr = float(f"{found.chosen:.3g}")
    run.optimizer = create_optimizer(cfg, run.model)
    run.scheduler = create_scheduler(cfg, run.optimizer, run.steps_per_epoch)
    why = (f"the default: the range test's {found.suggestion:.3g} is no better (rates {found.band[0]:.3g} to "
           f"{found.band[1]:.3g} suit)" if found.keep_default else found.rule)
    print(f"--lr auto: {cfg.lr:g} ({why}; {len(found.lrs)} steps of the range test)", flush=True)


def create_train_step(run: Run) -> str | None:
    """Choose the step kind once: a CUDA graph replay (--cuda-graph: engine/cuda_graph.py) or the eager step.
    Sets run.train_step; returns the note for the first line (None: nothing to say)."""
    cfg = run.cfg
    # arch["source"] marks a model of the user's (create_training_model), as it does wherever a checkpoint is rebuilt;
    # timm's architectures are not tudui's own either: --cuda-graph auto records only the nets tudui ships and tests
    ours = "source" not in run.arch and not str(run.arch["name"]).startswith("timm:")
    graphed, note = resolve_cuda_graph(cfg, run.device, run.ddp is not None, registered=ours)
    if graphed and run.spec.multi_label:  # the graphed step measures plain cross-entropy, a single-label quantity
        graphed, note = False, "--cuda-graph: off for a multi-label model (its step is eager)"
    args = (run.train_module, run.criterion, run.device, cfg.amp, run.scaler.scale)  # fp16: the loss scaled
    measure = plain_bce if run.spec.multi_label else plain_cross_entropy
    run.train_step = GraphedStep(*args) if graphed else EagerStep(*args, accumulate=cfg.accumulate, measure=measure)
    return note


def setup(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> Run:
    """A Run ready to train from `cfg` (whose `auto` choices are settled in place): data, model, loaders, optimiser,
    schedule, step kind and run directory, restored from cfg.resume when given. `callbacks` are kept on rank 0.

    The run directory stays locked until `run.close()` (fit does it), so no second training writes into it
    meanwhile; when set-up fails, a directory it made and left empty is removed again."""
    held: list = []  # rank 0: (lock, the folders created now)

    def claim() -> Path:
        run_dir, lock, created = open_run_dir(cfg.project, cfg.name, cfg.exist_ok)
        held.append((lock, created))
        return run_dir

    # The run directory first (rank 0 names and locks it, every rank learns its name): a name that cannot be used
    # or a directory another live training holds is refused before any data is read.
    run_dir = distributed.on_main(claim)
    try:
        run = _setup(cfg, callbacks, run_dir)
    except BaseException:
        if held:  # a directory made for this run and still empty is removed again
            close_run_dir(run_dir, *held[0])
        raise
    run.lock = held[0][0] if held else None
    return run


def _setup(cfg: TrainConfig, callbacks: list[Callback] | None, run_dir: Path) -> Run:
    device, w = select_device(cfg.device), world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.fast_dev_run:
        cfg.epochs = 1
    if device.type == "cpu":
        reuse_freed_memory()  # activations come from the heap, not fresh pages, every step
    seed_everything(cfg.seed, cfg.deterministic)  # same seed on every rank: same initial weights
    model_note = resolve_model(cfg, device)  # --model auto: by what the device computes natively
    # fail fast on a misspelt name or a broken file, before loading data
    info = get_model_info(cfg.model) if isinstance(cfg.model, str) else None
    pretrained = bool(cfg.weights and info and info.family == "torchvision")
    trained = weights_data(cfg.weights) if cfg.weights else None  # a tudui checkpoint's input contract
    if trained and not all(isinstance(trained.get(k), list) and len(trained[k]) in (1, 3) for k in ("mean", "std")):
        trained = None  # a hand-edited record: normalised as for any state_dict
    # The weights' own normalisation: a tudui checkpoint's mean/std, ImageNet's for torchvision's weights
    norm, norm_note = ((trained["mean"], trained["std"]), "the checkpoint's mean/std") if trained else \
        ((IMAGENET_MEAN, IMAGENET_STD), "ImageNet's mean/std") if pretrained else (None, None)
    crop, size, timm_note, record = weights_crop_pct(cfg.model, cfg.weights) if pretrained else None, None, None, None
    if is_timm(cfg.model) and not trained and weights_kind(cfg.model, cfg.weights):
        norm, crop, size, timm_note, norm_note, record = timm_preprocessing(cfg)
    built: list = []  # the model is built (and its size checked) before any image is decoded or cached

    def build_model(spec) -> None:
        built.append(create_training_model(cfg, spec, device))

    # the resize filter the weights learnt from: a tudui checkpoint's own, or timm's pretrained_cfg (often bicubic)
    interp = (trained or {}).get("interpolation") or (record or {}).get("interpolation")
    data = build_data(cfg, default_norm=norm, default_crop=crop, default_size=size, default_interpolation=interp,
                      default_channels=module_in_channels(cfg.model),  # a built model's own channels
                      before_decoding=build_model)
    data.spec.pretrained_cfg = record  # travels with the DataSpec into every checkpoint and export
    length_note = resolve_length(cfg, len(data.train), w)  # --batch-size/--epochs auto: from the training set's size
    multi = data.train.multi  # several labels per image: epochs rank by mAP, classes are not balanced
    val_counts = data.val.counts() if data.val is not None else None
    best_note = resolve_best_by(cfg, val_counts, None if multi else data.train.counts(),
                                **({"images": len(data.val), "measure": "mAP"} if data.val is not None and multi
                                   else {}))
    balance_auto = cfg.balance == "auto"
    balance_note = resolve_balance(cfg, data.train.counts(), multi)  # --balance auto: said in a note: line
    smoothing_note = resolve_smoothing(cfg, multi)  # --label-smoothing auto: from the balance just settled
    debug_splits(cfg, data)
    model, arch = built[0]
    warning = top_level_warning(arch["source"]) if w.rank == 0 and "source" in arch else None
    if warning:  # a script that trains the model it defines: what predict will skip when it rebuilds the model
        print(warning, file=sys.stderr, flush=True)
    report = take_weights_report(model)
    # --resume: the weights come from last.pt; the first run said where it started from
    mapping = take_weights_mapping(model)
    notes = [timm_note] if timm_note and not cfg.resume else []
    if (cfg.weights or timm_note) and not cfg.resume:
        notes.append(_weights_note(cfg, data.spec, report, trained, norm, norm_note, mapping))
    if cfg.freeze_backbone or cfg.fine_tune:  # the head alone trains first (engine/finetune.py)
        finetune.set_trainable(model, head_path(model), backbone=False)
    workers, workers_note, unused = resolve_workers(cfg, data, w)
    notes += [*data.said, unused] + ([balance_note] if balance_auto else []) + [smoothing_note]
    choices = [length_note, best_note, None if balance_auto else balance_note, model_note,
               resolve_amp(cfg, model, data.spec, device), workers_note]
    model, ddp = distributed.wrap(model, device, cfg.sync_bn)
    train_loader, val_loader = build_loaders(cfg, data, device, w, workers)
    placeholder = replace(cfg, lr=1e-7) if cfg.lr == "auto" else cfg  # --lr auto: resolve_lr replaces both below
    optimizer = create_optimizer(placeholder, model)
    steps = -(-len(train_loader) // cfg.accumulate)
    run = Run(cfg=cfg, device=device, data=data, model=model, arch=arch,
              criterion=create_loss(cfg, data.train.counts(), device, data.spec.multi_label), optimizer=optimizer,
              scheduler=create_scheduler(placeholder, optimizer, steps), scaler=make_scaler(device, cfg.amp),
              train_loader=train_loader, val_loader=val_loader,
              run_dir=run_dir,
              # a different augmentation stream per rank
              aug_generator=torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003 * w.rank),
              callbacks=list(callbacks or []) if w.rank == 0 else [], ddp=ddp, world=w,
              ema=ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None, workers=workers,
              choices=[c for c in choices if c], notes=[n for n in notes if n])
    run.train_module = torch.compile(ddp or model) if cfg.compile else (ddp or model)
    graph_note = create_train_step(run)
    run.choices += [graph_note] if graph_note else []
    run.head_trainer = features.maybe_feature_trainer(run)  # --freeze-backbone / --fine-tune: cached features
    resolve_lr(cfg, run)
    if arch.get("source", {}).get("path"):  # the user's file relative to the run: found again if both move
        arch["source"]["relpath"] = os.path.relpath(arch["source"]["path"], run.run_dir.resolve())
    if w.rank == 0:  # only rank 0 writes the run directory
        write_run_files(run)
    if cfg.resume:  # every rank: weights, optimizer, schedule, RNG states; results.csv keeps the run's rows
        restore_run(run)
        run.saved = run.epoch
    return run
