"""Shared pieces of the benchmark scripts: the checkout's tudui on the path, machine/versions header, tables, timers.

Every benchmark imports tudui from this checkout's src/ (not whatever copy the virtual environment has
installed), so the figures belong to the code beside them.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

import tudui  # noqa: E402
from tudui.data.sources import load_named  # noqa: E402
from tudui.core.console import table  # noqa: E402,F401  (re-exported for the scripts)
from tudui.core.device import cpu_bf16_flags, cpu_model, machine_line  # noqa: E402,F401

# --quick proves a script runs end to end (every table, every line); its figures mean nothing, so it trains on as
# little as keeps every class in every split: make test runs all of them
QUICK_SUBSET = 512  # training images in --quick mode
QUICK_TEST = 500  # test images in --quick mode
# a --quick run of a script that evaluates big nets: evaluation (validation, the final test) took ~90% of its time
QUICK_EVAL = {"val_split": 0.02, "tta": False}


def parser(description: str, quick_help: str | None = None) -> argparse.ArgumentParser:
    """Every script's options: --quick (a smoke test) and --workdir (where everything it writes goes)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help or (
        f"smoke test: 1 epoch, a {QUICK_SUBSET:,}-image subset, 1 repeat (the figures mean nothing)"))
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for everything the script writes (data it makes, downloads, weights, runs, "
                        "caches), kept afterwards: a later run with the same folder reuses what is there "
                        "[a new temporary folder, removed at the end]")
    return p


@contextlib.contextmanager
def workdir(args: argparse.Namespace, prefix: str = "tudui-bench-") -> Iterator[Path]:
    """The absolute folder `--workdir` names (made if missing, kept), or a new temporary one removed on exit."""
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
    else:
        path = Path(args.workdir).absolute()
        path.mkdir(parents=True, exist_ok=True)
        yield path


def header(title: str, quick: bool) -> None:
    """Print what ran, where, and with which versions (part of every table that gets pasted)."""
    versions = [f"tudui {tudui.__version__}", f"torch {torch.__version__}", f"torchvision {torchvision.__version__}",
                f"numpy {np.__version__}", f"python {platform.python_version()}"]
    try:
        import lightning
        versions.append(f"lightning {lightning.__version__}")
    except ImportError:
        pass
    print(f"# {title}{'  [--quick smoke test: figures are not measurements]' if quick else ''}")
    print(machine_line())
    print("versions: " + ", ".join(versions))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n", flush=True)


def quick_data_root(work: Path) -> str:
    """--quick's Fashion-MNIST: a `data_root` (for tudui.train / --data-root) whose fashion-mnist/ folder holds the
    four IDX files of a seeded subset, QUICK_SUBSET training items plus the tenth tudui holds out for validation and
    QUICK_TEST test items, so a quick run reads them through tudui's own named-dataset loader exactly as it reads the
    real files. `--subset` alone shrinks only the training split: the final test of the full 10,000 images cost a
    quick run of a wide model more than its training. Written once into `work`."""
    folder = work / "quick-data" / "fashion-mnist"
    if not (folder / "t10k-labels-idx1-ubyte").is_file():  # the last file written: the set is complete
        folder.mkdir(parents=True, exist_ok=True)
        for prefix, train, n in (("train", True, QUICK_SUBSET + QUICK_SUBSET // 9 + 1), ("t10k", False, QUICK_TEST)):
            images, labels = load_fmnist(train, n)  # (n, 28, 28) uint8, (n,) int64
            (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
                bytes([0, 0, 8, 3]) + np.array([len(images), 28, 28], ">u4").tobytes() + images.tobytes())
            (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
                bytes([0, 0, 8, 1]) + np.array([len(labels)], ">u4").tobytes() + labels.astype(np.uint8).tobytes())
    return str(work / "quick-data")


def load_fmnist(train: bool, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real Fashion-MNIST: ((N, 28, 28) uint8, (N,) int64); `limit` takes a seeded random subset."""
    split = load_named("fashion-mnist", train)
    images, targets = split.images[..., 0], split.targets  # (N, 28, 28, 1) -> (N, 28, 28)
    if limit is not None and limit < len(targets):
        keep = np.sort(np.random.default_rng(seed).permutation(len(targets))[:limit])
        images, targets = images[keep], targets[keep]
    return np.ascontiguousarray(images), targets


class PILDataset(torch.utils.data.Dataset):
    """The course's data path: a Dataset that hands out one PIL image at a time to a torchvision transform."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform) -> None:
        self.images, self.targets, self.transform = images, targets, transform  # (N, H, W) uint8, (N,) int64

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        # (H, W) uint8 -> a mode "L" image, as torchvision.datasets.FashionMNIST hands out
        return self.transform(Image.fromarray(self.images[i])), int(self.targets[i])


def fmnist_photo(grey: np.ndarray, index: int, side: int) -> Image.Image:
    """A Fashion-MNIST item (28x28 uint8, or (28, 28, 1)) as a `side`-px RGB "photo": up-scaled bicubic and tinted by a
    colour drawn from its `index` (the same item gets the same photo in every script)."""
    big = np.asarray(Image.fromarray(np.asarray(grey).reshape(28, 28)).resize((side, side), Image.BICUBIC), np.float32)
    tint = np.random.default_rng(index).uniform(0.45, 1.0, 3)
    return Image.fromarray((big[..., None] * tint).astype(np.uint8))


def course_epoch(model: torch.nn.Module, loader, loss_fn, optimizer) -> None:
    """One epoch of the course's hand-written training loop, exactly as the course writes it."""
    model.train()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def course_accuracy(model: torch.nn.Module, loader) -> float:
    """The course's test loop: top-1 over `loader`, the model in eval mode."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall-clock seconds since start, excluding paused stretches (benchmark-only measurements)."""

    def __init__(self) -> None:
        self.start, self.paused, self._pause_at = time.perf_counter(), 0.0, None

    def now(self) -> float:
        t = self._pause_at if self._pause_at is not None else time.perf_counter()
        return t - self.start - self.paused

    def pause(self) -> None:
        self._pause_at = time.perf_counter()

    def resume(self) -> None:
        self.paused += time.perf_counter() - self._pause_at
        self._pause_at = None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


# A child Python that reports its own peak resident memory when it exits. `ru_maxrss` from wait4 cannot be used
# when the parent is large: Linux carries the forked copy's high-water mark (the parent's RSS) across exec into
# the child's ru_maxrss. VmHWM in /proc/self/status belongs to the address space the child got at exec.
_HWM_WRAPPER = (
    "import atexit, runpy, sys\n"
    "_out = sys.argv[1]\n"
    "atexit.register(lambda: open(_out, 'w').write(str(next(int(l.split()[1]) for l in open('/proc/self/status') "
    "if l.startswith('VmHWM:')))))\n"
    "del sys.argv[1]\n"
    "if sys.argv[1] == '-m':\n"
    "    mod = sys.argv[2]; sys.argv = [mod] + sys.argv[3:]; runpy.run_module(mod, run_name='__main__', alter_sys=True)\n"
    "else:\n"
    "    code = sys.argv[2]; sys.argv = ['-c'] + sys.argv[3:]; exec(compile(code, '<string>', 'exec'), {'__name__': '__main__'})\n"
)


def peak_rss_mib(args: list[str], env: dict | None = None, hwm_dir: Path | None = None,
                 **popen) -> tuple[float, int]:
    """(peak resident MiB of `python ARGS` (ARGS = ['-m', module, ...] or ['-c', code, ...]), its exit code).

    The child's own VmHWM at exit: see _HWM_WRAPPER for why not ru_maxrss; it writes it to a file in `hwm_dir` (the
    script's --workdir; None: the system's temporary folder). Output goes where `popen` says."""
    import subprocess
    with tempfile.NamedTemporaryFile("r", suffix=".hwm", dir=hwm_dir) as f:
        proc = subprocess.run([sys.executable, "-c", _HWM_WRAPPER, f.name, *args], env=env, **popen)
        text = Path(f.name).read_text().strip()
    return (int(text) / 1024 if text else float("nan")), proc.returncode
