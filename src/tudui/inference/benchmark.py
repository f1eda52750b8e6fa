"""`tudui benchmark RUN --data D`: every format a run can be shipped in, side by side, and which one to ship.

Each format is exported the way `tudui export` writes it (into a temporary folder, any batch size), so its
validation top-1 is the accuracy gate's measurement on the run's validation split (inference/gate.py). Speed and
memory are measured in a fresh Python process per format, which loads the file as `tudui predict` does and runs it on
the CPU: latency at batch 1 (p50 and p99 over `latency_runs` single-image passes, after a warm-up) and throughput at
batch 64 (images per second over `throughput_batches` batches); the process's peak resident memory covers its
imports, the model and those passes. The verdict: the format with the lowest batch-1 latency among those whose
validation top-1 is within `max_drop` points of PyTorch's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..core.checkpoint import load_checkpoint
from ..core.device import machine_line
from ..core.errors import TuduiError
from . import gate
from .export import MAX_DROP, SUFFIX, export_model
from .formats import load_model

# format name -> (export format, int8)
FORMATS: dict[str, tuple[str, bool]] = {"pytorch": ("checkpoint", False), "torchscript": ("torchscript", False),
                                        "onnx": ("onnx", False), "onnx-int8": ("onnx", True),
                                        "openvino": ("openvino", False), "openvino-int8": ("openvino", True)}
THROUGHPUT_BATCH = 64


@dataclass
class Row:
    format: str
    file: str
    size_mb: float  # the file(s) on disk, MiB
    top1: float | None  # validation top-1, % (None: no validation images)
    drop: float | None  # points below PyTorch's
    p50_ms: float  # batch 1
    p99_ms: float
    images_per_s: float  # batch 64
    peak_rss_mb: float  # the measuring process's peak resident memory, MiB


@dataclass
class BenchmarkResult:
    machine: str
    rows: list[Row]
    skipped: dict[str, str]  # format -> why it has no row
    ship: str | None
    why: str

    def to_dict(self) -> dict:
        return {"machine": self.machine, "rows": [asdict(r) for r in self.rows], "skipped": self.skipped,
                "ship": self.ship, "why": self.why}


def available(fmt: str) -> str | None:
    """Why `fmt` cannot be measured here (None: it can)."""
    needs = {"onnx": "onnxruntime", "openvino": "openvino"}.get(FORMATS[fmt][0])
    if needs is None:
        return None
    try:
        __import__(needs)
        if FORMATS[fmt] == ("openvino", True):
            __import__("nncf")
    except ImportError as e:
        return f"{e.name} is not installed (pip install 'tudui[{'openvino' if 'openvino' in fmt else 'export'}]')"
    return None


# The measuring child: loads the file as predict does and times it. Runs as `python -c CHILD JSON`.
CHILD = "import sys; from tudui.inference.benchmark import measure_child; measure_child(sys.argv[1])"


def measure_child(arg: str) -> None:
    """In a fresh process: load the model, time batch 1 and batch 64, print one JSON line with the figures."""
    import time

    import numpy as np
    import torch

    from .export import sample_inputs

    job = json.loads(arg)
    loaded = load_model(job["path"], "cpu")
    model, spec = loaded.model, loaded.spec
    one = sample_inputs(spec, 1, seed=1)  # (1, C, S, S)
    many = sample_inputs(spec, THROUGHPUT_BATCH, seed=2)  # (64, C, S, S)
    times = []
    with torch.inference_mode():
        for _ in range(job["warmup"]):
            model(one)
        for _ in range(job["latency_runs"]):
            t = time.perf_counter()
            model(one)
            times.append(time.perf_counter() - t)
        model(many)  # warm-up at this batch size (oneDNN and the runtimes pick kernels per shape)
        t = time.perf_counter()
        for _ in range(job["throughput_batches"]):
            model(many)
        elapsed = time.perf_counter() - t
    ms = np.array(times) * 1000
    print(json.dumps({"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                      "images_per_s": THROUGHPUT_BATCH * job["throughput_batches"] / elapsed,
                      "peak_rss_mb": peak_rss_mib()}), flush=True)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: VmHWM of /proc/self/status, which starts afresh at exec (getrusage's
    ru_maxrss keeps the forking parent's peak across exec); ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _measure(path: Path, latency_runs: int, throughput_batches: int, warmup: int) -> dict:
    env = os.environ.copy()
    src = str(Path(__file__).resolve().parents[2])  # the folder holding this tudui package, whatever is installed
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    job = json.dumps({"path": str(path), "latency_runs": latency_runs, "throughput_batches": throughput_batches,
                      "warmup": warmup})
    r = subprocess.run([sys.executable, "-c", CHILD, job], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise TuduiError(f"measuring {path.name} failed: {last[:200]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _size_mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 2**20


def verdict(rows: list[Row], max_drop: float) -> tuple[str | None, str]:
    """(format to ship, why): the lowest batch-1 latency among rows within max_drop points of PyTorch's top-1."""
    ok = [r for r in rows if r.drop is None or r.drop <= max_drop]
    if not ok:
        return None, f"no format is within {max_drop:g} points of PyTorch's validation top-1"
    best = min(ok, key=lambda r: r.p50_ms)
    base = next((r for r in rows if r.format == "pytorch"), None)
    parts = [f"the lowest batch-1 latency ({best.p50_ms:.3g} ms p50"]
    if base is not None and best is not base:
        parts[0] += f", {base.p50_ms / best.p50_ms:.2g}x faster than PyTorch eager"
    parts[0] += ")"
    if best.drop is not None:
        parts.append(f"validation top-1 {best.top1:.2f}% ({best.drop:+.2f} points against PyTorch, within "
                     f"--max-drop {max_drop:g})")
    fastest = max(ok, key=lambda r: r.images_per_s)
    if fastest is not best:
        parts.append(f"for throughput at batch {THROUGHPUT_BATCH}, {fastest.format} is faster "
                     f"({fastest.images_per_s:,.0f} images/s against {best.images_per_s:,.0f})")
    return best.format, "; ".join(parts)


def benchmark(checkpoint: str | Path, data: list | None = None, formats: list[str] | None = None, *,
              latency_runs: int = 200, throughput_batches: int = 20, warmup: int = 10, calib: int = 300,
              max_drop: float = MAX_DROP, log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """One row per format (see the module docstring); `formats` from FORMATS (default: every one available)."""
    chosen = list(formats or FORMATS)
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise TuduiError(f"--formats takes {', '.join(FORMATS)}; got {', '.join(unknown)}")
    ckpt_path = Path(load_checkpoint(checkpoint, map_location="cpu")["path"])
    skipped = {f: why for f in chosen if (why := available(f))}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tudui-benchmark-") as work:
        reference = None  # PyTorch's top-1, from the first export's gate
        exports: dict[str, tuple[Path, list[Path], float | None, float | None]] = {}
        for fmt in chosen:
            if fmt in skipped:
                continue
            kind, int8 = FORMATS[fmt]
            if kind == "checkpoint":
                continue
            if log:
                log(f"exporting {fmt} ...")
            out = Path(work) / f"model{'-int8' if int8 else ''}{SUFFIX[kind]}"
            r = export_model(ckpt_path, kind, out, dynamic_batch=kind in ("onnx", "openvino"), log=None, int8=int8,
                             calib=calib, max_drop=max_drop, force=True, data=data)
            acc = r.accuracy
            if acc is not None:
                reference = acc.top1_pytorch
            exports[fmt] = (r.path, r.files, acc.top1 if acc else None, acc.drop if acc else None)
        if "pytorch" in chosen:
            if reference is None:  # no export measured it: PyTorch's own top-1 on the validation split
                loaded = load_model(ckpt_path, "cpu")
                cfg = load_checkpoint(ckpt_path, map_location="cpu").get("config", {})
                batches = gate.validation_batches(cfg, data, loaded.spec)
                reference = gate.score(loaded.model, loaded.model, batches, loaded.spec, max_drop).top1_pytorch
            exports = {"pytorch": (ckpt_path, [ckpt_path], reference, 0.0 if reference is not None else None)} | exports
        for fmt in chosen:
            if fmt not in exports:
                continue
            path, files, top1, drop = exports[fmt]
            if log:
                log(f"measuring {fmt} ...")
            m = _measure(path, latency_runs, throughput_batches, warmup)
            rows.append(Row(fmt, path.name, _size_mb(files), top1, drop,
                            m["p50_ms"], m["p99_ms"], m["images_per_s"], m["peak_rss_mb"]))
    ship, why = verdict(rows, max_drop)
    return BenchmarkResult(machine_line(), rows, skipped, ship, why)


def format_table(result: BenchmarkResult) -> str:
    """The machine line, the table, the formats left out and the verdict, as `tudui benchmark` prints them."""
    from ..core.console import table

    lines = [result.machine, ""]
    rows = [[r.format, f"{r.size_mb:.2f}", "-" if r.top1 is None else f"{r.top1:.2f}",
             "-" if r.drop is None else f"{r.drop:+.2f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
             f"{r.images_per_s:,.0f}", f"{r.peak_rss_mb:.0f}"] for r in result.rows]
    lines.append(table(["format", "size MiB", "val top-1 %", "drop (points)", "batch-1 p50 ms", "p99 ms",
                        f"batch-{THROUGHPUT_BATCH} images/s", "peak RSS MiB"], rows, "<>>>>>>>"))
    for fmt, why in result.skipped.items():
        lines.append(f"{fmt}: not measured: {why}")
    lines.append(f"ship: {result.ship}: {result.why}" if result.ship else f"ship: none: {result.why}")
    return "\n".join(lines)
