"""Several processes, one training run: torch.distributed + DistributedDataParallel, launched by torchrun.

torchrun starts one process per GPU (or N CPU processes) and tells each who it is
through environment variables: RANK (0..WORLD_SIZE-1 over all machines),
LOCAL_RANK (0..LOCAL_WORLD_SIZE-1 on this machine), WORLD_SIZE, MASTER_ADDR/PORT.
Outside torchrun none of them is set and every function here is a no-op for one
process, so the trainer calls them unconditionally.

What the trainer relies on:
  session()            init the process group (gloo on CPU, nccl on CUDA) and tear it down
  select_device()      cuda:LOCAL_RANK under torchrun, else the usual choice
  on_main(fn)          run fn on rank 0 only (e.g. pick the run directory) and give all ranks its result
  wrap() / broadcast_module()    DDP (optionally SyncBatchNorm), and rank 0's weights copied to all
  all_reduce_counts()  exact dataset metrics: counts summed over ranks, then summarised
  launch()             `tudui train --nproc N` re-runs itself under torchrun
"""
from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import TuduiError
from .device import select_device as _select_device

# How long a rank waits in a collective for the others (s). torchrun ends the job as soon as a rank
# exits, so this only matters when a rank hangs without exiting; override with TUDUI_DIST_TIMEOUT.
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class World:
    rank: int = 0  # global rank, 0..size-1
    local_rank: int = 0  # rank on this machine: the GPU index it uses
    size: int = 1  # processes in the job, all machines together
    local_size: int = 1  # processes on this machine

    @property
    def enabled(self) -> bool:
        return self.size > 1


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything that sets its variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world() -> World:
    """This process's place in the job, from torchrun's environment variables (one process when unset)."""
    if not under_torchrun():
        return World()
    try:
        return World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]),
                     int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    except (KeyError, ValueError) as e:
        raise TuduiError(f"torchrun environment variables are incomplete or not integers ({e}); "
                         "start the job with torchrun or `tudui train --nproc N`") from None


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def select_device(name: str = "auto") -> torch.device:
    """The device this rank trains on. Under torchrun with CUDA: cuda:LOCAL_RANK, one GPU per process."""
    w = world()
    if not w.enabled:
        return _select_device(name)
    name = (name or "auto").lower()
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")  # MPS has no collective backend: several processes on a Mac use the CPU
    if name == "mps":
        raise TuduiError("--device mps cannot run several processes (no collective backend); use --device cpu")
    if not name.startswith("cuda"):
        raise TuduiError(f"--device {name}: under torchrun use auto, cuda or cpu")
    if not torch.cuda.is_available():
        raise TuduiError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name not in ("auto", "cuda"):
        raise TuduiError(f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda")
    n = torch.cuda.device_count()
    if w.local_rank >= n:
        raise TuduiError(f"{w.local_size} processes on this machine but only {n} CUDA device(s); "
                         f"use --nproc {n} (torchrun --nproc_per_node {n})")
    return torch.device("cuda", w.local_rank)


def _timeout_s() -> float:
    raw = os.environ.get("TUDUI_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        return float(raw)
    except ValueError:
        raise TuduiError(f"TUDUI_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None


@contextlib.contextmanager
def session(device_name: str = "auto"):
    """Join the torchrun job for the duration of the block (nothing happens in a single process).

    A TuduiError raised on one rank gets the rank in its message, so the line torchrun relays says which
    process failed; torchrun then stops the other ranks instead of leaving them waiting.
    """
    w = world()
    if not w.enabled or dist.is_initialized():
        yield w
        return
    device = select_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl and object collectives use the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    # env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE set by torchrun.
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_s()))
    try:
        yield w
    except TuduiError as e:
        if e.args and isinstance(e.args[0], str):
            e.args = (f"rank {w.rank}: {e.args[0]}", *e.args[1:])  # same type: the CLI still tells them apart
        raise
    finally:
        teardown()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn, *args, **kwargs):
    """fn(*args) on rank 0 only; every rank returns its result (or raises its TuduiError).

    Used for choices that must agree, such as the run directory name (runs/exp2 on every rank).
    """
    if not dist.is_initialized():
        return fn(*args, **kwargs)
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except TuduiError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise TuduiError(value if dist.get_rank() == 0 else f"(on rank 0) {value}")
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device, sync_bn: bool = False) -> tuple[nn.Module, nn.Module | None]:
    """(model, ddp): `model` to keep (SyncBatchNorm-converted when asked), `ddp` its DDP wrapper or None.

    Train through `ddp` (gradients are averaged over ranks in backward); save, evaluate and load through
    `model`, so checkpoints have no `module.` prefix and load anywhere without DDP. DDP copies rank 0's
    parameters and buffers to every rank when it is built, so all ranks start from the same weights.
    """
    if not dist.is_initialized():
        return model, None
    if sync_bn:
        if device.type != "cuda":
            raise TuduiError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); drop --sync-bn")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # A conv on 1-channel input gets a weight gradient whose stride along the size-1 channel dim differs
    # from DDP's bucket view; strides of size-1 dims are meaningless, but the reducer warns on every rank.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def broadcast_module(model: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless buffers_only) and buffers into every rank's `model`, in place.

    Before evaluation: each rank updated its BatchNorm running statistics with its own last batch, so the
    buffers differ slightly; rank 0's are the ones saved in the checkpoint, so all ranks evaluate those.
    """
    if not dist.is_initialized():
        return
    tensors = list(model.buffers()) if buffers_only else list(model.state_dict().values())
    for t in tensors:
        dist.broadcast(t, src=0)


def all_reduce_counts(counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum metric counts (metrics.batch_counts) over ranks, in place; every rank gets the totals.

    Summing correct-prediction and sample counts (not averaging per-rank accuracies) gives the exact
    dataset accuracy even when ranks hold different numbers of samples.
    """
    if dist.is_initialized():
        for k in sorted(counts):  # the same order on every rank
            dist.all_reduce(counts[k], op=dist.ReduceOp.SUM)
    return counts


def reduce_train_stats(loss_sum: float, images: int, seconds: float, device: torch.device) -> tuple[float, int, float]:
    """(summed loss*images, summed images, slowest rank's seconds) over all ranks."""
    if not dist.is_initialized():
        return loss_sum, images, seconds
    sums = torch.tensor([loss_sum, float(images)], dtype=torch.float64, device=device)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(sums[0]), int(sums[1]), float(slowest[0])


def gather_rank_rng(run) -> dict:
    """{'augment_ranks': [state of rank 0, rank 1, ...]} under torchrun, else {} (every rank must call it).

    Each rank has its own augmentation stream; the checkpoint written by rank 0 keeps all of them so that
    `--resume` gives every rank its own stream back. (The other random states are the same on every rank.)
    """
    if not dist.is_initialized():
        return {}
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, run.aug_generator.get_state())
    return {"augment_ranks": states}


def restore_rank_rng(run) -> None:
    """After resume.restore_run (which restores rank 0's augmentation state): this rank's own state."""
    if not dist.is_initialized():
        return
    from .checkpoint import load_checkpoint

    states = load_checkpoint(run.cfg.resume)["resume"].get("augment_ranks") or []
    rank = dist.get_rank()
    if len(states) == dist.get_world_size():
        run.aug_generator.set_state(states[rank])
        return
    if rank == 0:
        print(f"note: {run.cfg.resume} was written by {len(states) or 1} process(es), this job has "
              f"{dist.get_world_size()}: the global batch changed, so the resumed run is not an exact "
              "continuation", flush=True)
    if rank > 0:  # a fresh stream of its own rather than a copy of rank 0's
        run.aug_generator.manual_seed(run.cfg.seed + 1_000_003 * rank + run.epoch)


# --- `tudui train --nproc N` ----------------------------------------------------------------------------------------------
def strip_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `--flag VALUE` / `--flag=VALUE` (the launcher must not hand --nproc on to the ranks)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def launch_command(argv: list[str], nproc: int) -> list[str]:
    """The torchrun command line that runs `python -m tudui ARGV` in `nproc` processes on this machine.

    --standalone starts a local rendezvous on a free port, so several jobs on one machine do not clash.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "tudui", *strip_flag(argv, "--nproc")]


def launch(argv: list[str], nproc: int) -> int:
    """Run this `tudui` command under torchrun with `nproc` processes; returns torchrun's exit code."""
    if nproc < 1:
        raise TuduiError(f"--nproc must be at least 1, got {nproc}")
    env = os.environ.copy()
    src = str(Path(__file__).resolve().parents[2])  # the folder holding this tudui package, for `-m tudui`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = launch_command(argv, nproc)
    try:
        return subprocess.run(cmd, env=env).returncode
    except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers
        return 130


# --- evaluation over ranks -------------------------------------------------------------------------------------------------
def evaluate(model: nn.Module, loader, spec, device: torch.device, criterion: nn.Module | None = None,
             amp: bool = False) -> dict:
    """engine.evaluate.evaluate over the whole split when each rank's `loader` holds its own share of it.

    `model` is the unwrapped module (evaluation needs no gradient sync, and ranks may hold different
    numbers of batches). The eval loaders give every sample to exactly one rank (no DistributedSampler
    padding), so the summed counts cover the split once.
    """
    from .evaluate import evaluate_counts
    from .metrics import batch_counts, summarize

    broadcast_module(model, buffers_only=True)
    if len(loader) > 0:
        counts = evaluate_counts(model, loader, spec, device, criterion, amp)
    else:  # fewer samples than ranks: this rank contributes zeros
        k = spec.num_classes
        counts = batch_counts(torch.zeros(0, k, device=device), torch.zeros(0, dtype=torch.int64, device=device), k)
        if criterion is not None:
            counts["loss_sum"] = torch.zeros((), dtype=torch.float64, device=device)
    return summarize(all_reduce_counts(counts))
