"""Shared fixtures: tiny real data (Fashion-MNIST written as image files, scikit-learn digits) and a CLI runner."""
from __future__ import annotations

import functools
import os
import signal
import struct
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import forkserver

REPO = Path(__file__).resolve().parents[1]

# `make test` runs the suite in one pytest-xdist worker per core (-n auto). Each worker, and every CLI run or
# benchmark it starts, then uses one intra-op thread, so the workers do not fight over the cores: with torch's
# default (a thread per core in every worker) their OpenMP threads wait on each other. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def in_ci() -> bool:
    """True where the environment says this run is CI (CI=true, as GitHub Actions, GitLab and most runners set)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


# Hypothesis keeps no example database: it would write .hypothesis/ into the checkout (the tests' working folder);
# its other files (the Unicode and constants caches) go to a temp folder of the run (pytest_configure below).
# In CI it is also derandomized, so a run's examples depend on the code alone and a red build can be rerun as is.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # a declared dev dependency: without it the fuzz tests' imports fail (and say so)
    pass
else:
    _hypothesis_settings.register_profile("tudui", database=None)
    _hypothesis_settings.register_profile("tudui-ci", database=None, derandomize=True)
    _hypothesis_settings.load_profile("tudui-ci" if in_ci() else "tudui")


def pytest_configure(config):
    """Hypothesis' storage folder (caches it writes even without a database, some while the test modules are
    imported) in a temp folder of this run, removed at its end, instead of ./.hypothesis."""
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        return
    config._hypothesis_home = tempfile.mkdtemp(prefix="tudui-tests-hypothesis-")
    set_hypothesis_home_dir(config._hypothesis_home)


def pytest_unconfigure(config):
    forkserver.close()
    if getattr(config, "_hypothesis_home", None):
        shutil.rmtree(config._hypothesis_home, ignore_errors=True)


# The skips that stay skips under CI=true: reason text (a substring of the skip's message) -> why it may skip there.
# Under CI every other skip fails the test (pytest_runtest_makereport, pytest_make_collect_report below): a missing
# declared dependency (importorskip), missing data (Fashion-MNIST), a missing browser (chromium) or CJK font means a
# broken install, which must not pass green. The "slow" tests are deselected by `-m "not slow"`, not skipped.
ALLOWED_SKIPS: dict[str, str] = {
    "needs a CUDA GPU": "GPU tests: CI runners have none (`make bench-gpu` runs them where CUDA is)",
    "Ultralytics' environment .venv-peers is made by `make bench`": "a benchmark peer, never a tudui dependency",
    "root writes into read-only folders": "as root the real read-only check cannot fail; a simulated test covers it",
    "is large: exported in the slow test": "covered by the slow test test_export_big_models (`make test-all`)",
    "POSIX FIFOs": "the platform has no FIFOs (not an install problem)",
    "this file system takes only UTF-8 names": "the file system's own rule (not an install problem)",
    "this file system folds Unicode spellings itself": "the file system's own rule (not an install problem)",
    "glibc only": "the platform's C library (not an install problem)",
}


def _skip_reason(report) -> str:
    """The message of a skipped report: its longrepr is (path, line, "Skipped: REASON") or, for a mark, REASON."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_unallowed_skip(report) -> None:
    """Under CI, turn `report` (skipped, not an xfail) into a failure unless its reason is in ALLOWED_SKIPS."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(allowed in reason for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which allows only the skips in tests/conftest.py ALLOWED_SKIPS: "
                       f"{reason}\n(a declared dependency, data, the browser or a CJK font is missing: `make test` "
                       "installs them)")


# What a run may add at the checkout's top level: pytest's own cache. Anything else (runs/, .hypothesis/, a file
# written relative to the working folder) means a test or a benchmark wrote into the checkout instead of tmp_path.
CHECKOUT_MAY_GAIN = {".pytest_cache", "__pycache__"}


def pytest_sessionstart(session):
    session.config._checkout_before = set(os.listdir(REPO))


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_checkout_before", None)
    if before is None or hasattr(session.config, "workerinput"):  # an xdist worker: the controller checks
        return
    session.config._checkout_gained = sorted(set(os.listdir(REPO)) - before - CHECKOUT_MAY_GAIN)
    if session.config._checkout_gained:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if getattr(config, "_checkout_gained", None):
        terminalreporter.write_line(f"FAILED: the tests wrote into the checkout ({REPO}): "
                                    f"{', '.join(config._checkout_gained)}; write into tmp_path instead", red=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unallowed_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (pytest.importorskip at the top of a file) skips at collection: the same rule."""
    outcome = yield
    _fail_unallowed_skip(outcome.get_result())


@pytest.fixture(autouse=True)
def each_test_leaves_the_process_and_the_checkout_as_it_found_them(request):
    """Restore what an in-process training changes for the whole process (`--threads` sets torch's thread count,
    `--deterministic` its algorithm flag), so a later test's bit-exact comparison with a subprocess is not run with
    another thread count; and name the test that wrote into the checkout (the session check above says only what)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    before = getattr(request.config, "_checkout_before", None)
    gained = sorted(set(os.listdir(REPO)) - before - CHECKOUT_MAY_GAIN) if before is not None else []
    if gained:
        request.config._checkout_before = before | set(gained)  # reported once, by the test that wrote it
        pytest.fail(f"this test wrote into the checkout ({REPO}): {', '.join(gained)}; write into tmp_path instead")


@pytest.fixture(autouse=True)
def in_a_working_folder_of_its_own(tmp_path_factory, monkeypatch):
    """Every test starts in an empty temporary working folder of its own (not its tmp_path, whose contents tests
    check): whatever a relative path writes lands there, never in the checkout. A train that stops with an error
    claims runs/exp in the working folder before it removes it again; run from the checkout, that folder came and
    went under the other pytest-xdist worker's checkout check, which then blamed whichever test it was tearing down.
    Tests that need the checkout name it (REPO)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session", autouse=True)
def temporary_files_under_the_runs_own_folder(tmp_path_factory):
    """The temporary files of this pytest process and of every process it starts ($TMPDIR) in a folder of this run,
    removed with it: torch leaves a pymp-* folder behind for each process that ends by a signal and a torchelastic_*
    one for each torchrun job, which under /tmp added up to hundreds of folders a run."""
    old, folder = os.environ.get("TMPDIR"), str(tmp_path_factory.mktemp("tmp"))
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield
    tempfile.tempdir = None
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory):
    """The decoded-image cache of every test (and of the CLI runs they start) in a temp folder, not ~/.cache."""
    old = os.environ.get("TUDUI_CACHE")
    os.environ["TUDUI_CACHE"] = str(tmp_path_factory.mktemp("decoded-cache"))
    yield Path(os.environ["TUDUI_CACHE"])
    if old is None:
        os.environ.pop("TUDUI_CACHE", None)
    else:
        os.environ["TUDUI_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def fixed_bf16_speedup():
    """Every test (and every CLI run it starts) reads one fixed bf16/fp32 speed ratio instead of timing this machine:
    a measurement depends on the machine's load, and with a fresh cache folder per session `--amp auto` and `--model
    auto` could choose differently from one test session to the next. 1.0 (fp32 wins) is what a CPU without bf16
    units chooses anyway; tests of the measurement itself unset it (engine/choices.py, $TUDUI_BF16_SPEEDUP)."""
    old = os.environ.get("TUDUI_BF16_SPEEDUP")
    os.environ["TUDUI_BF16_SPEEDUP"] = "1.0"
    yield
    if old is None:
        os.environ.pop("TUDUI_BF16_SPEEDUP", None)
    else:
        os.environ["TUDUI_BF16_SPEEDUP"] = old


@pytest.fixture(scope="session")
def fmnist():
    """(train Split, test Split) of the real Fashion-MNIST (skips with the install hint when absent)."""
    from tudui.data.sources import find, load_named

    if find("fashion-mnist") is None:
        pytest.skip("Fashion-MNIST not installed: run `make data` (apt-get install dataset-fashion-mnist)")
    return load_named("fashion-mnist", True), load_named("fashion-mnist", False)


def write_class_folders(root: Path, split, per_class: int, fmt: str = "png", offset: int = 0) -> Path:
    """Write `per_class` real images of each class to root/<class>/<i>.<fmt>."""
    from tudui.data.export_images import safe_name

    for c, name in enumerate(split.classes):
        idx = np.flatnonzero(split.targets == c)[offset:offset + per_class]
        folder = root / safe_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = split.images[i]
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:05d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def fmnist_folders(tmp_path_factory, fmnist):
    """A class-folder dataset of real Fashion-MNIST images: train/ (PNG, 60 per class) and val/ (JPEG, 20 per class)."""
    train, test = fmnist
    root = tmp_path_factory.mktemp("fmnist_folders")
    write_class_folders(root / "train", train, 60, "png")
    write_class_folders(root / "val", test, 20, "jpg")
    return root


def write_photos(root: Path, split, per_class: int, classes: int = 4, sides: tuple[int, int] = (64, 128),
                 offset: int = 0, seed: int = 0) -> Path:
    """Real images as small RGB "photos": `per_class` Fashion-MNIST items of each of the first `classes` classes,
    up-scaled to a random width in `sides` and a 0.7-1.0 aspect, tinted, saved as JPEG in root/<类k>/ (non-ASCII
    class folders on purpose)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"类{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(split.targets == c)[offset:offset + per_class]:
            w = int(rng.integers(sides[0], sides[1] + 1))
            h = int(w * rng.uniform(0.7, 1.0))
            gray = np.asarray(Image.fromarray(split.images[i][..., 0]).resize((w, h), Image.BICUBIC), np.float32)
            tint = rng.uniform(0.5, 1.0, 3)
            Image.fromarray((gray[..., None] * tint).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, fmnist):
    """A tiny folder of RGB JPEG photos: train/ (12 per class) and val/ (4 per class), 4 classes, 64-128 px wide."""
    train, test = fmnist
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "train", train, 12)
    write_photos(root / "val", test, 4, seed=1)
    return root


def colored_pixels(path) -> int:
    """Pixels of a PNG that are neither white, black nor grey: what data drew (axes, ticks and text are black/grey)."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return int(((rgb.max(-1) - rgb.min(-1)) > 60).sum())


def dark_fraction(path) -> float:
    """Fraction of a PNG's pixels darker than mid-grey: ~0.01 for empty axes with a title, far more for images."""
    with Image.open(path) as im:
        return float((np.asarray(im.convert("L")) < 128).mean())


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tudui ARGS` as a user would, with this checkout's sources (a process of its own, forked from
    an interpreter that has imported torch already: tests/forkserver.py)."""
    full_env = os.environ.copy() | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"} | (env or {})
    return forkserver.run([sys.executable, "-m", "tudui", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


class Child:
    """`python -m tudui ARGS` in a child process (tests/forkserver.py) whose stdout and stderr are read by threads
    from the start.

    A read on a pipe blocks for as long as the child prints nothing, so waits here use a queue with a deadline,
    and a child that writes a lot can never block on a full pipe.
    """

    def __init__(self, *args, env: dict | None = None, code: str | None = None) -> None:
        """`code`: run `python -c CODE ARGS` instead (e.g. the CLI with a test's slow hook patched in)."""
        full_env = os.environ.copy() | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"} | (env or {})
        start = ["-c", code] if code is not None else ["-m", "tudui"]
        self.proc = forkserver.Popen([sys.executable, *start, *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env)
        self.lines: queue.Queue = queue.Queue()  # stdout lines; None once stdout is closed
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, pipe, store: list[str], queued: bool) -> None:
        for line in pipe:
            store.append(line)
            if queued:
                self.lines.put(line)
        if queued:
            self.lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float = 120) -> None:
        """Return once stdout has a line starting with `prefix`; fail after `timeout` s even if the child is silent."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                rc = self.proc.wait()
                pytest.fail(f"process ended (rc {rc}) before printing {prefix!r}: {self.err[-2000:]}")
            if line.startswith(prefix):
                return
        self.proc.kill()
        pytest.fail(f"no line starting with {prefix!r} within {timeout:.0f} s")

    def wait(self, timeout: float = 120) -> int:
        """The exit status; the child is killed (and the test fails) if it is still running after `timeout` s."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"still running after {timeout:.0f} s: {self.err[-2000:]}")
        for t in self._threads:
            t.join(10)
        return rc

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """Kill the child and what it started (DataLoader workers, TensorBoard, torchrun's workers) if they still
        run; afterwards stdout/stderr hold everything it printed. Only this child's own descendants are touched."""
        kill_tree(self.proc)
        for t in self._threads:
            t.join(10)

    @property
    def err(self) -> str:
        return "".join(self.stderr)


def kill_tree(proc) -> None:
    """SIGKILL `proc` (launched by the test) and its descendants (forkserver.descendants: forks it asked for
    included), found from `proc` itself while it still runs."""
    import psutil

    if proc.poll() is None:
        family = []
        for pid in forkserver.descendants(proc.pid):
            try:
                family.append(psutil.Process(pid))  # before the kill: a PID is never looked up once reused
            except psutil.NoSuchProcess:
                pass
        proc.kill()
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    proc.wait()


def sigkill_after_line(*args, line: str, slow_save_s: float = 1.0) -> None:
    """Run `tudui ARGS` and SIGKILL it as soon as it prints `line` (e.g. "epoch 1/3"). The slow-save hook
    (`slow_save_s` before each checkpoint rename) guarantees that the next checkpoint cannot land before the kill."""
    child = Child(*args, env={"TUDUI_TEST_SLOW_SAVE": str(slow_save_s)})
    try:
        child.wait_for_line(line)
        child.send(signal.SIGKILL)
        child.wait(60)
    finally:
        child.kill()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib Figures the plotting functions save, in order (each is still saved to its PNG)."""
    from matplotlib.figure import Figure

    saved, real = [], Figure.savefig

    def spy(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One real training run shared by the session (`fast`, 3 epochs on the bundled 8x8 digits, ~2 s): a RunResult.

    Tests that read it must not change its files (they may add new ones, as `tudui eval` does).
    """
    import tudui

    project = tmp_path_factory.mktemp("runs")
    return tudui.train(data="digits", model="fast", epochs=3, batch_size=64, project=str(project), name="digits-run")


@pytest.fixture(scope="session")
def pairs_csv(tmp_path_factory):
    """A multi-label CSV of real digits side by side: each 8x16 image carries the classes of its two digits (1 or 2
    labels, space-separated under an `image_id,tags` header), 160 rows."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("pairs")
    d = load_digits()
    x, y = (d.images * 16).clip(0, 255).astype(np.uint8), d.target
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = ["image_id,tags"]
    for i in range(160):
        a, b = rng.integers(0, len(x), 2)
        Image.fromarray(np.concatenate([x[a], x[b]], 1)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{' '.join(sorted({f'd{y[a]}', f'd{y[b]}'}))}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root / "pairs.csv"


@pytest.fixture(scope="session")
def pairs_run(pairs_csv, tmp_path_factory):
    """One multi-label training run on `pairs_csv` shared by the session (2 epochs of `fast`, best epoch by mAP, the
    thresholds chosen on its 25% validation split, mixup on): a RunResult. Tests must not change its files."""
    import tudui

    project = tmp_path_factory.mktemp("runs")
    return tudui.train(data=[str(pairs_csv)], model="fast", epochs=2, batch_size=32, img_size=8,
                       project=str(project), name="pairs", best_by="top1", val_split=0.25, mixup=0.2)


@pytest.fixture(scope="session")
def tiny_model(digits_run):
    """The path of the shared digits run's best.pt (1x8x8 input, 10 classes)."""
    return digits_run.best


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """The one ONNX export of the tiny model per session, made by `tudui export` as a user runs it.

    Returns (path of the .onnx, the CompletedProcess of the command) so a test can check what it printed.
    """
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    r = run_cli("export", tiny_model, "--format", "onnx", "--dynamic-batch", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


@functools.lru_cache(maxsize=None)
def big_png(width: int, height: int, depth: int = 16, colour: int = 0) -> bytes:
    """A PNG of width x height (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA; depth 8 or 16) whose rows all repeat
    one gradient, written row by row (PNG's 'Up' filter: every row after the first is zeros), so it needs little
    memory or time to build and compresses ~1000:1 (8000 x 8000 16-bit grey: ~150 KB, 128 MB decoded). Cached."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    first = b"\0" + (np.arange(width * channels, dtype=np.uint64) * 37 % (1 << depth)).astype(f">u{depth // 8}").tobytes()
    up = b"\2" + bytes(len(first) - 1)
    z = zlib.compressobj(6)
    parts, left, batch = [z.compress(first)], height - 1, max(1, (1 << 20) // len(up))  # ~1 MB of rows per call
    while left > 0:
        parts.append(z.compress(up * min(batch, left)))
        left -= batch
    idat = b"".join(parts) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.lru_cache(maxsize=None)
def big_float_tiff(width: int, height: int) -> bytes:
    """A 32-bit float TIFF (mode F) of width x height in 1000-pixel-wide bands of 0.125 steps, deflated. Cached."""
    import io

    arr = np.empty((height, width), np.float32)
    arr[:] = (np.arange(width) // 1000 / 8.0).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()
