"""Several processes, one training run: torch.distributed + DistributedDataParallel, launched by torchrun.

torchrun starts one process per GPU (or N CPU processes) and tells each who it is
through environment variables: RANK (0..WORLD_SIZE-1 over all machines),
LOCAL_RANK (0..LOCAL_WORLD_SIZE-1 on this machine), WORLD_SIZE, MASTER_ADDR/PORT.
Outside torchrun none of them is set and every function here is a no-op for one
process, so the trainer calls them unconditionally.

What the trainer relies on (the process's place and device come from core/device.py):
  session()            init the process group (gloo on CPU, nccl on CUDA) and tear it down
  on_main(fn)          run fn on rank 0 only (e.g. pick the run directory) and give all ranks its result
  wrap() / broadcast_module()    DDP (optionally SyncBatchNorm), and rank 0's weights copied to all
  all_reduce_counts()  exact dataset metrics: counts summed over ranks, then summarised
The launcher (`tudui train --nproc N`) is engine/launcher.py; per-rank random states are in engine/resume.py.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

from ..core.device import select_device, world
from ..core.errors import TuduiError

# How long a rank waits in a collective for the others (s). torchrun ends the job as soon as a rank
# exits, so this only matters when a rank hangs without exiting; override with TUDUI_DIST_TIMEOUT.
DEFAULT_TIMEOUT_S = 600


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return not dist.is_initialized() or dist.get_rank() == 0


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
    process failed; torchrun then stops the other ranks instead of leaving them waiting. So does a collective
    that waited TUDUI_DIST_TIMEOUT seconds for a rank that hangs: one line instead of torch's traceback.
    """
    w = world()
    if not w.enabled or dist.is_initialized():
        yield w
        return
    device = select_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl and object collectives use the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = _timeout_s()
    _import_dynamo()
    try:
        # env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE set by torchrun.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        yield w
    except TuduiError as e:
        if e.args and isinstance(e.args[0], str):
            e.args = (f"rank {w.rank}: {e.args[0]}", *e.args[1:])  # same type: the CLI still tells them apart
        raise
    except RuntimeError as e:  # torch's DistBackendError and DistStoreError are RuntimeErrors
        if not _timed_out(e):
            raise
        raise TuduiError(f"rank {w.rank}: no answer from another process of this job within {timeout:g} s "
                         "(TUDUI_DIST_TIMEOUT): it hangs or has stopped; if its work takes longer, raise "
                         "TUDUI_DIST_TIMEOUT") from e
    finally:
        teardown()


def _timed_out(e: RuntimeError) -> bool:
    """Whether torch.distributed gave up waiting for another rank: gloo's "Timed out waiting 3000ms for recv
    operation", the store's "Timed out after 3 seconds waiting for clients", a "Socket Timeout"."""
    text = str(e).lower()
    return "timed out" in text or "timeout" in text


def _import_dynamo() -> None:
    """Import torch._dynamo before the process group exists, never after.

    torch._dynamo imported while a group exists keeps a reference to it (torch 2.14), so destroy_process_group
    cannot free the gloo backend and its worker threads live on into interpreter shutdown. A worker that drops
    its last finished work there needs the GIL, cannot take it, and aborts the rank ("terminate called without
    an active exception", SIGABRT) after all its work is done, and torchrun fails the job: now and then on a
    busy machine. DDP imports torch._dynamo when it is built, so importing it first costs nothing (~1 s).
    """
    import torch._dynamo  # noqa: F401


def teardown() -> None:
    """Leave the job: the group and its backend's threads are gone when this returns (see _import_dynamo)."""
    if dist.is_initialized():
        gc.collect()  # a DDP wrapper lives in reference cycles (its hooks) and holds the group until collected
        dist.destroy_process_group()


def on_main(fn, *args, **kwargs):
    """fn(*args) on rank 0 only; every rank returns its result (or raises its TuduiError).

    Used for choices that must agree, such as the run directory name (runs/exp-2 on every rank).
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


def all_gather_rows(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's (N_r, ...) rows stacked in rank order, on every rank (ranks may hold different numbers of rows:
    an evaluation shard keeps every image once, so the last ranks may have one fewer); `t` itself outside torchrun.
    Sent through `device` (NCCL moves CUDA tensors only); returned on the CPU."""
    if not dist.is_initialized():
        return t
    size = dist.get_world_size()
    count = torch.tensor([len(t)], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=device)
    padded[:len(t)] = t.to(device)
    parts = [torch.zeros_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(c.item())] for part, c in zip(parts, counts)]).cpu()


def reduce_train_stats(loss_sums: list[float], images: int, seconds: float,
                       device: torch.device) -> tuple[list[float], int, float]:
    """(each of `loss_sums` (loss x images) summed, summed images, slowest rank's seconds) over all ranks."""
    if not dist.is_initialized():
        return loss_sums, images, seconds
    sums = torch.tensor([*loss_sums, float(images)], dtype=torch.float64, device=device)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return sums[:-1].tolist(), int(sums[-1]), float(slowest[0])
