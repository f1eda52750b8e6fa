"""Device choice (including each torchrun process's own GPU), seeding and mixed precision.

torchrun starts one process per GPU (or N CPU processes) and tells each who it is through environment
variables: RANK (0..WORLD_SIZE-1 over all machines), LOCAL_RANK (0..LOCAL_WORLD_SIZE-1 on this machine),
WORLD_SIZE. Outside torchrun none is set and `world()` is one process.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import TuduiError


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


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; explicit names are checked.

    Under torchrun with several processes each one takes cuda:LOCAL_RANK (one GPU per process) or the CPU.
    """
    w = world()
    if w.enabled:
        return _rank_device(name, w)
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TuduiError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TuduiError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TuduiError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TuduiError("--device mps: Apple MPS is not available on this machine")
    return dev


def _rank_device(name: str, w: World) -> torch.device:
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


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) Processor'), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpuinfo() -> str:
    """/proc/cpuinfo's text ('' where there is none: no flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU flags that give native bf16 arithmetic (avx512_bf16, amx_bf16), from /proc/cpuinfo ([] elsewhere).

    oneDNN runs bf16 convolutions and matrix products on these units; without them bf16 is emulated and slower
    than fp32, so `--amp auto` uses bf16 on a CPU only when one of them is present.
    """
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break  # every core lists the same flags
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def amp_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype for a resolved --amp (off/on/bf16/fp16, or a bool), None for full precision.

    'on' is bf16 on a CPU and fp16 on CUDA; other devices (MPS) run in full precision.
    """
    mode = ("on" if amp else "off") if isinstance(amp, bool) or amp is None else amp
    if mode in ("off", "auto") or device.type not in ("cpu", "cuda"):
        return None
    if mode == "on":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def autocast(device: torch.device, amp: bool | str, cache: bool = True):
    """Autocast to the dtype of a resolved --amp (see amp_dtype); a no-op context in full precision.
    cache=False converts the weights again at every use: what a CUDA graph capture needs (engine/cuda_graph.py)."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def make_scaler(device: torch.device, amp: bool | str) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 on CUDA only (bf16 has fp32's range); elsewhere it is a pass-through."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype(device, amp) == torch.float16)


def cpu_int8_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU flags that speed up int8 inference (VNNI dot products, AMX tiles), from /proc/cpuinfo ([] elsewhere):
    without them an int8 model saves memory but little time."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = next((set(line.partition(":")[2].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    return [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


def machine_line() -> str:
    """One line naming the machine a timing was taken on: CPU model, usable cores, torch threads, the bf16 and int8
    units, the GPU and the OS (above every benchmark table)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"machine: {cpu_model()}, {available_cores()} cores usable ({os.cpu_count()} logical), torch threads "
            f"{torch.get_num_threads()}, native bf16 {'/'.join(cpu_bf16_flags()) or 'none'}, int8 units "
            f"{'/'.join(cpu_int8_flags()) or 'none'}, GPU {gpu}, {platform.system()} {platform.release()}")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(requested: int | str, processes: int = 1) -> int:
    """--workers: a number as given; 'auto' = the cores available to each of `processes` local processes, at most 8
    (beyond that, decoding outruns a CPU model's training step and the extra processes only cost memory)."""
    if requested != "auto":
        return int(requested)
    return max(1, min(8, available_cores() // max(1, processes)))


def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MB for reuse instead of returning them to the kernel.

    By default glibc serves large blocks (from ~128 KB, adapting upwards) with fresh mmap'd pages and
    unmaps them on free, so every training step on the CPU page-faults its activation buffers (megabytes
    each) in again. Raising the mmap and trim thresholds to 32 MB (glibc's largest allowed value) lets
    the heap recycle them: 1.3-1.6x training images/s for tudui's default model on a 2-core CPU
    (benchmarks/README.md). The cost is that the process keeps its peak heap until it exits, which a
    training process reaches anyway. Returns False where this is not Linux/glibc (nothing is changed).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        limit = 32 << 20  # bytes
        return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, 2 * limit))
    except (OSError, AttributeError):
        return False
