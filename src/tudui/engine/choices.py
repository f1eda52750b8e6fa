"""What `auto` settles to for this run: the model (`--model auto`), mixed precision (`--amp auto`), DataLoader
workers (`--workers auto`) and CUDA graphs (`--cuda-graph auto`: engine/cuda_graph.py says when and why).

Each resolver writes the concrete choice back into the config (so config.yaml and `--resume` use it) and returns a
short note for the run's first line.

--amp auto on a CPU. The flags say whether the CPU has bf16 units (avx512_bf16, amx_bf16); they do not say whether
bf16 is faster there: the same training step has run well over 1.15x faster on some CPUs with those flags and no
faster on others (and without them, emulated bf16 is several times slower). So the CPU is measured once per machine:
`bf16_speedup()` times a few training steps of `fast` in each precision, in pairs, and keeps the median ratio (about
0.2 s; more rounds when it lies near the threshold: median_speedup). A run's config.yaml records the concrete model
and amp, so `--config` and `--resume` repeat them without measuring. Then per model: bf16 needs every convolution
dense (groups == 1: depthwise convolutions gain nothing and pay for the conversions). Where the model does many
multiply-adds per weight per step (>= AMP_MIN_INTENSITY) bf16 wins wherever `fast` does: each step converts every
weight to bf16 (cost ~ parameters) and gains on the multiply-adds (~ per image x batch). Below that the outcome
depends on the CPU, so the model itself is measured in the run's shape and batch (`model_bf16_speedup`, a few steps
each way, kept per machine like the CPU's figure) and bf16 is used from MODEL_MIN_SPEEDUP.
benchmarks/amp_speed.py prints the table and checks the choice on any machine; benchmarks/README.md holds the dated
figures behind these thresholds. On CUDA: bf16 where supported, else fp16 (with loss scaling).

--label-smoothing auto (resolve_smoothing, once --balance is settled): 0.1, and 0.2 under logit adjustment.

--model auto: `fast-wide` (`fast-mlp` at 32-64-128 channels, 2.9x the multiply-adds of `fast`, more accurate on
Fashion-MNIST) where the device runs it about as fast as `fast` runs in fp32: a GPU, or a CPU with AMX where bf16
passes the measurement above. Elsewhere
`fast-mlp` (`fast` with a hidden layer of 256 in its head), which costs about as many seconds per epoch as `fast`
for more accuracy, so the default's seconds per epoch stay about the same on every machine (the measurements:
benchmarks/README.md, "The default became `fast-mlp`").
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn

from ..core.device import World, auto_workers, cpu_bf16_flags, cpu_model
from ..core.errors import TuduiError
from ..core.files import atomic_path
from ..data.cache import cache_root
from ..data.sampler import LONG_TAILED, auto_balance, imbalance_ratio
from ..models.registry import create_model
from ..models.summary import summarize_model
from . import cuda_graph, distributed

AMP_MIN_INTENSITY = 400  # multiply-adds per weight per training step (per image x batch / parameters)
AMP_MIN_SPEEDUP = 1.15  # bf16 steps / fp32 steps measured by bf16_speedup() below which --amp auto keeps fp32
# the same ratio measured on the run's own model below AMP_MIN_INTENSITY: a direct measurement needs a margin for
# noise only (step times move by a few per cent), where the CPU's figure above stands in for a different model
MODEL_MIN_SPEEDUP = 1.05
MODEL_MEASURE_S = 3.0  # seconds after which the model's measurement stops at two rounds (heavy models)


PIN_ENV = "TUDUI_BF16_SPEEDUP"  # a bf16/fp32 speed ratio that replaces every measurement (tests, fleets of one CPU)
NEAR = 0.15  # a median within 15% of its threshold is measured again (load moves a single figure by more)
MORE_ROUNDS = 2  # at most this many more sets of rounds near the threshold


def _kept_figure(what: str, measure: Callable[[], float]) -> float:
    """A measured speed ratio, measured once per machine and kept in the cache folder ($TUDUI_CACHE or
    ~/.cache/tudui/decoded, file bf16_speedup.json, keyed by CPU model, torch version, threads and `what`): a figure
    near a threshold would otherwise flip the choice from one run to the next (1.13x and 1.2x were measured minutes
    apart here), and the same command with the same seed must train the same way. Delete the file to measure again,
    or set $TUDUI_BF16_SPEEDUP to a ratio (1.0: fp32 wins, 2.0: bf16 wins) to pin every figure without measuring.
    A run's config.yaml records what these figures chose, so `--config` and `--resume` never measure again.
    """
    pinned = os.environ.get(PIN_ENV, "").strip()
    if pinned:
        try:
            value = float(pinned)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise TuduiError(f"${PIN_ENV}={pinned!r}: expected a positive bf16/fp32 speed ratio such as 1.0 or 1.7 "
                             "(or unset it to measure)")
        return value
    # "median": figures kept before steps were paired and their median taken are measured anew
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | median" + \
        (f" | {what}" if what else "")
    path = cache_root() / "bf16_speedup.json"
    known = {}
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        return float(known[key])
    except (OSError, ValueError, KeyError, TypeError):  # not measured yet (or an unreadable file: measure again)
        known = known if isinstance(known, dict) else {}
    value = round(measure(), 3)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**known, key: value}, ensure_ascii=False, indent=1), encoding="utf-8")
    except (OSError, TuduiError):  # a read-only or full cache folder: measure again next time
        pass
    return value


@functools.cache
def bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of a training step of `fast` (1x28x28, batch 64) on this CPU, measured once
    per machine (_kept_figure)."""
    return _kept_figure("", _measure_bf16_speedup)


def _measure_bf16_speedup() -> float:
    """_measure_model on a freshly built `fast` (seeded inside, so the run's own random state is left alone), with
    two warm-up rounds and seven counted: its steps take milliseconds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("fast", 10, 1, 28).to(memory_format=torch.channels_last)
        return _measure_model(model, (1, 28, 28), 64, True, AMP_MIN_SPEEDUP, rounds=7, warmup=2)


def _agreed_speedup() -> float:
    """bf16_speedup() as rank 0 measured it: every process of a torchrun job must settle to the same choices."""
    return distributed.on_main(bf16_speedup)


def model_bf16_speedup(model: nn.Module, shape: tuple[int, int, int], batch: int, channels_last: bool) -> float:
    """fp32 time / bf16-autocast time of a forward and backward pass of `model` itself on a random (batch, *shape)
    batch, measured once per machine and architecture (the key hashes the module tree, which parameters train, the
    input shape and the batch). The optimiser's step, the same in both precisions, is left out (it would change the
    weights), so a whole training step gains a little less than this. 0.0 when the model cannot be stepped on random
    inputs (fp32 is kept)."""
    trains = "".join("1" if p.requires_grad else "0" for p in model.parameters())
    arch = hashlib.sha1(f"{model!r}|{trains}|{shape}|{batch}|{channels_last}".encode()).hexdigest()[:16]
    return _kept_figure(f"model {arch} {'x'.join(map(str, shape))} batch {batch}",
                        lambda: _measure_model(model, shape, batch, channels_last, MODEL_MIN_SPEEDUP))


def median_speedup(step: Callable[[bool], None], threshold: float, rounds: int = 5, warmup: int = 1,
                   budget_s: float = MODEL_MEASURE_S, clock: Callable[[], float] = time.perf_counter) -> float:
    """The median over rounds of (fp32 step time / bf16 step time), where a round times `step(False)` and
    `step(True)` back to back, in alternating order: a busy moment slows both steps of a round alike and the median
    ignores the rounds it spoils (the fastest step of each precision, taken at different moments, measured between
    0.52x and 1.63x on one machine depending on its load). The first `warmup` rounds pick oneDNN's kernels and are
    not counted. A set of `rounds` stops early once `budget_s` have passed (vgg16 at 32 px takes 2 s a step on 2
    cores). When the median lies within NEAR (15%) of `threshold`, up to MORE_ROUNDS more sets are measured and the
    median of all rounds decides, so a choice that is close is settled by more evidence, not by one moment."""
    for _ in range(warmup):
        for bf16 in (False, True):
            step(bf16)
    ratios: list[float] = []
    start = clock()
    for extra in range(MORE_ROUNDS + 1):
        if extra and not abs(statistics.median(ratios) / threshold - 1) < NEAR:
            break  # clear of the threshold: more rounds would not change the choice
        for i in range(rounds):
            if i and clock() - start > budget_s * (extra + 1):  # a slow model: fewer rounds
                break
            took = {}
            for bf16 in ((False, True) if len(ratios) % 2 == 0 else (True, False)):
                t0 = clock()
                step(bf16)
                took[bf16] = clock() - t0
            ratios.append(took[False] / max(took[True], 1e-9))
    return statistics.median(ratios)


def _measure_model(model: nn.Module, shape: tuple[int, int, int], batch: int, channels_last: bool,
                   threshold: float, rounds: int = 5, warmup: int = 1) -> float:
    """median_speedup of a forward and backward pass of `model` (vgg16 at 32 px, 134 M weights, 2 s a step at batch
    128 on 2 cores: measured in about 8 s, once per machine and architecture). The model is left as it was: its
    BatchNorm statistics are restored, its gradients cleared, the global random state untouched. 0.0 when it
    cannot be stepped on random inputs."""
    if not any(p.requires_grad for p in model.parameters()):
        return 0.0
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=[]):
            x = torch.randn(batch, *shape)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x

            def step(bf16: bool) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x)
                out = out if isinstance(out, torch.Tensor) else out[0]
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)

            return median_speedup(step, threshold, rounds, warmup)
    except Exception:  # noqa: BLE001 - a user model that wants other inputs: no bf16 guess, fp32
        return 0.0
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])


def _dense_macs(model: nn.Module, spec) -> tuple[int, bool]:
    """(multiply-adds per image, whether every convolution is dense, i.e. groups == 1)."""
    dense = all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    try:
        macs = summarize_model(model, (spec.channels, spec.img_size, spec.img_size)).macs
    except Exception:  # noqa: BLE001 - a user model the shape pass cannot follow: no bf16 guess
        macs = 0
    return macs, dense


def resolve_model(cfg, device: torch.device) -> str | None:
    """Settle cfg.model 'auto' to a registered name; returns the note for the first line (None when not auto)."""
    if not (isinstance(cfg.model, str) and cfg.model == "auto"):
        return None
    if device.type == "cuda":
        cfg.model, why = "fast-wide", "CUDA"
    elif device.type != "cpu":
        cfg.model, why = "fast-mlp", device.type
    elif "amx_bf16" not in cpu_bf16_flags():
        cfg.model, why = "fast-mlp", "CPU without AMX"
    elif cfg.amp == "off":
        cfg.model, why = "fast-mlp", "--amp off"
    else:
        speedup = _agreed_speedup()
        fast_enough = speedup >= AMP_MIN_SPEEDUP
        cfg.model = "fast-wide" if fast_enough else "fast-mlp"
        why = f"CPU with AMX, bf16 steps {speedup:.2f}x fp32" if fast_enough else \
            f"CPU with AMX but bf16 steps only {speedup:.2f}x fp32"
    return f"model {cfg.model} (auto: {why})"


def resolve_amp(cfg, model: nn.Module, spec, device: torch.device) -> str:
    """Settle cfg.amp ('auto' -> 'bf16', 'fp16' or 'off'); returns the note for the first line."""
    if cfg.amp != "auto":
        return f"amp {cfg.amp}"
    if device.type == "cuda":
        cfg.amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return f"amp {cfg.amp} (auto: CUDA)"
    if device.type != "cpu":
        cfg.amp = "off"
        return f"amp off (auto: {device.type})"
    flags = cpu_bf16_flags()
    if not flags:
        cfg.amp = "off"
        return "amp off (auto: no native bf16 on this CPU)"
    macs, dense = _dense_macs(model, spec)
    if not dense:
        cfg.amp = "off"
        return "amp off (auto: grouped convolutions gain nothing from bf16)"
    params = max(1, sum(p.numel() for p in model.parameters()))  # autocast converts frozen weights too
    intensity = macs * cfg.batch_size / params
    speedup = _agreed_speedup()
    if speedup < AMP_MIN_SPEEDUP:
        cfg.amp = "off"
        return f"amp off (auto: bf16 steps only {speedup:.2f}x fp32 on this CPU; from {AMP_MIN_SPEEDUP})"
    if intensity < AMP_MIN_INTENSITY:  # few multiply-adds per weight: it depends on the CPU, so measure the model
        shape = (spec.channels, spec.img_size, spec.img_size)
        own = distributed.on_main(model_bf16_speedup, model, shape, cfg.batch_size, cfg.channels_last)
        cfg.amp = "bf16" if own >= MODEL_MIN_SPEEDUP else "off"
        return (f"amp {cfg.amp} (auto: {intensity:.0f} multiply-adds per weight per step, this model's bf16 forward+"
                f"backward measured {own:.2f}x fp32; bf16 from {MODEL_MIN_SPEEDUP})")
    cfg.amp = "bf16"
    return (f"amp bf16 (auto: bf16 steps {speedup:.2f}x fp32 on this CPU ({'/'.join(flags)}), {intensity:.0f} "
            f"multiply-adds per weight per step)")


def resolve_cuda_graph(cfg, device: torch.device, ddp: bool, registered: bool) -> tuple[bool, str | None]:
    """(use a graph?, note for the first line or None): settles cfg.cuda_graph 'auto' to 'on' or 'off'."""
    why = cuda_graph.unsupported(cfg, device, ddp)
    if cfg.cuda_graph == "off" or (cfg.cuda_graph == "auto" and device.type != "cuda"):  # nothing to say
        cfg.cuda_graph = "off"
        return False, None
    if why is not None:
        cfg.cuda_graph = "off"
        return False, f"cuda graph off ({why})"
    if cfg.cuda_graph == "auto" and not registered:
        cfg.cuda_graph = "off"
        return False, "cuda graph off (auto: a model of your own; --cuda-graph on captures it)"
    auto = cfg.cuda_graph == "auto"
    cfg.cuda_graph = "on"
    return True, "cuda graph on" + (" (auto: a registered model on CUDA)" if auto else "")


def resolve_workers(cfg, data, w: World) -> tuple[int, str | None, str | None]:
    """(DataLoader workers, a note for the first line when some split is decoded from its files every epoch, a line
    saying that a --workers given does nothing because no split is), the notes None when there is nothing to say."""
    n = auto_workers(cfg.workers, w.local_size)
    from_files = any(s is not None and s.images is None for s in (data.train, data.val, data.test))
    if not from_files:
        if cfg.workers != "auto" and n > 0:  # asked for, but every split is decoded already
            return n, None, (f"--workers {n} not used: every split is held decoded in memory (or memory-mapped), "
                             "so batches need no decoding; workers decode image files read every epoch (--cache off)")
        return n, None, None
    return n, f"{n} DataLoader worker(s)" + (" (auto)" if cfg.workers == "auto" else ""), None


# --batch-size auto and --epochs auto: the recipe (AdamW one-cycle at 3e-3, batch 128, 10 epochs) was tuned on
# Fashion-MNIST's 54,000 training images, where it makes 4,210 optimisation steps. On a few hundred images the same
# recipe makes 2 steps an epoch, 20 in all, and ends far from trained (benchmarks/README.md, "Defaults for small
# data": 4 Fashion-MNIST classes x 60 images, 28% at batch 128 x 10 epochs against 71% at batch 16 x 38 epochs, 3
# seeds). Length is what small data needs most: at 450 images 18 epochs gained 4-16 points over 10 (batch 128); each
# halving of the batch then gained about half a point, at a cost in time that only matters once runs are long (batch
# 16 took 1.7-2.1x the seconds of batch 128 at 900-1,440 images; on scikit-learn's 1,437 8x8 digits batch 64 took 1.3x
# and batch 32 2.0x). So below 1,024 training images the batch is small, and from 1,024 on the whole recipe is the one
# before auto, in the same time (benchmarks/default_elsewhere.py --previous). Each rule below is a table of numbers:
AUTO_BATCH = ((512, 16),  # (fewer training images than this, global batch): 16 below 512 images ...
              (1_024, 32),  # ... 32 below 1,024 ...
              (None, 128))  # ... then the recipe's 128 per process (global 128 x processes under torchrun)
AUTO_EPOCHS = {"epochs": 10,  # the recipe's length at scale ...
               "min_images": 8_000,  # ... raised until the run trains on this many images (n x epochs; 500 steps
                                     # of batch 16), from 800 training images down ...
               "max": 40}  # ... to at most this many epochs (small data: each epoch takes well under a second)


def auto_batch(n: int, processes: int = 1) -> int:
    """The per-process batch --batch-size auto gives for `n` training images in a job of `processes`: the global
    batch of AUTO_BATCH's first row whose bound n is below, shared by the processes (each gets at least 1); past
    them all, the last row's batch per process."""
    *small, (_, per_process) = AUTO_BATCH
    for below, batch in small:
        if n < below:
            return max(1, batch // processes)
    return per_process


def auto_epochs(n: int) -> int:
    """--epochs auto for `n` training images: 10, or more until the run trains on AUTO_EPOCHS["min_images"] images
    (n x epochs), at most AUTO_EPOCHS["max"]."""
    rule = AUTO_EPOCHS
    return min(max(rule["epochs"], -(-rule["min_images"] // max(1, n))), rule["max"])


def resolve_length(cfg, n: int, w: World) -> str | None:
    """Settle --batch-size auto and --epochs auto from the `n` training images (all ranks see the same n, so every
    process settles to the same choice); returns the note for the first line (None when neither is auto)."""
    notes = []
    if cfg.batch_size == "auto":
        cfg.batch_size = auto_batch(n, w.size)
        per = f" per process, global {cfg.batch_size * w.size}" if w.size > 1 else ""
        notes.append(f"batch {cfg.batch_size}{per} (auto: {n:,} training images)")
    if cfg.epochs == "auto":
        rule, cfg.epochs = AUTO_EPOCHS, auto_epochs(n)
        why = (f"; raised to reach {rule['min_images']:,}" if rule["epochs"] < cfg.epochs < rule["max"] else
               f"; at most {rule['max']} epochs" if cfg.epochs > rule["epochs"] else "")
        if cfg.fine_tune and cfg.fine_tune >= cfg.epochs:  # --fine-tune N: one epoch or more unfrozen
            cfg.epochs, why = cfg.fine_tune + 1, f"; one after --fine-tune's {cfg.fine_tune}"
        notes.append(f"{cfg.epochs} epochs (auto: {n * cfg.epochs:,} training images seen{why})")
    return "; ".join(notes) or None


# --best-by auto: on long-tailed training data (the largest class over LONG_TAILED times the smallest) top-1 is
# mostly the common classes' and an epoch that gives up a rare class can rank first, so epochs are ranked by balanced
# accuracy (the mean recall of the classes). Otherwise: on a validation split with fewer than this many images of
# some class, one image moves top-1 by several points and the "best" epoch is chosen by noise; the last epoch (the
# one-cycle schedule ends at its lowest rate) was better on the test set there (benchmarks/README.md, "Defaults for
# small data"). data/check.py warns below the same count.
AUTO_BEST = {"min_val_per_class": 10}
BEST_BY_METRIC = {"top1": "top1", "balanced-accuracy": "balanced_accuracy", "macro-f1": "macro_f1"}  # -> metrics key


def resolve_best_by(cfg, val_counts, train_counts=None, images: int | None = None,
                    measure: str = "top-1") -> str | None:
    """Settle --best-by auto from the training split's images per class (`train_counts`; None for multi-label data,
    whose epochs rank by mAP) and the validation split's (`val_counts`, None without a validation split: every epoch
    is then the best one anyway); returns the note for the first line (None: nothing to say). `images`: the
    validation images when they are not the sum of `val_counts` (multi-label data, several classes per image),
    `measure` what ranks the epochs (a multi-label model's mAP)."""
    if cfg.best_by != "auto":
        return None if cfg.best_by == "top1" else f"best.pt: the {cfg.best_by} epoch" if cfg.best_by == "last" \
            else f"best.pt: the epoch of the highest validation {cfg.best_by}"
    ratio = imbalance_ratio(train_counts) if train_counts is not None else 1.0
    if ratio > LONG_TAILED and val_counts is not None:
        cfg.best_by = "balanced-accuracy"
        return (f"best.pt: the epoch of the highest validation balanced accuracy (auto: the largest training class has "
                f"{ratio:.1f}x the images of the smallest, over {LONG_TAILED:g})")
    fewest = int(min(val_counts)) if val_counts is not None and len(val_counts) else None
    # --patience stops on epochs without a better validation top-1: it needs epochs ranked by it
    if fewest is None or fewest >= AUTO_BEST["min_val_per_class"] or cfg.patience is not None:
        cfg.best_by = "top1"
        return None
    cfg.best_by = "last"
    n = int(sum(val_counts)) if images is None else images
    return (f"best.pt: the last epoch (auto: {n} validation images, {fewest} of the smallest "
            f"class, too few to rank epochs by {measure}; --best-by top1 ranks them anyway)")


def resolve_balance(cfg, train_counts, multi_label: bool = False) -> str | None:
    """Settle --balance auto from the training split's images per class (data/sampler.auto_balance); returns the
    note for the first line (None: balanced data, nothing done and nothing to say). Multi-label data is not balanced
    by class (an image carries several): auto settles to none there, and another mode is an error."""
    if multi_label:
        if cfg.balance not in ("auto", "none"):
            raise TuduiError(f"--balance {cfg.balance} weighs the classes of data with one label per image, and this "
                             "data is multi-label; drop it (--loss asl down-weights the many absent labels)")
        cfg.balance = "none"
        return None
    if cfg.balance != "auto":
        return None if cfg.balance == "none" else f"balance {cfg.balance}" + \
            (f" ({cfg.sampler_weights} weights)" if cfg.balance == "sampler" else
             f" (tau {cfg.logit_tau:g})" if cfg.balance == "logit-adjust" else "")
    cfg.balance, why = auto_balance(train_counts)
    return f"balance {cfg.balance} (auto: {why})" if cfg.balance != "none" else None


# --label-smoothing auto: the recipe's 0.1 (tuned on balanced Fashion-MNIST), and more under logit adjustment. On
# long-tailed Fashion-MNIST (ratio 100, seeds 0-5, one torch thread) 0.2 raised logit adjustment's test balanced
# accuracy from 87.91% to 88.66% (validation 88.95% -> 89.76%), while plain cross-entropy gained nothing from it
# (85.33% -> 85.39%, seeds 0-2): benchmarks/README.md, "Long-tailed data".
AUTO_SMOOTHING, SMOOTHING_BY_BALANCE = 0.1, {"logit-adjust": 0.2}  # --balance mode -> its smoothing


def resolve_smoothing(cfg, multi_label: bool = False) -> str | None:
    """Settle --label-smoothing auto once --balance is settled (multi-label data: 0.1); returns the note for the first
    line when the choice is not the usual 0.1 (None otherwise, or when the number was given)."""
    if cfg.label_smoothing != "auto":
        return None
    balance = getattr(cfg, "balance", "none")
    cfg.label_smoothing = AUTO_SMOOTHING if multi_label else SMOOTHING_BY_BALANCE.get(balance, AUTO_SMOOTHING)
    if cfg.label_smoothing == AUTO_SMOOTHING:
        return None
    return f"label smoothing {cfg.label_smoothing:g} (auto: under --balance {balance}; {AUTO_SMOOTHING:g} otherwise)"
