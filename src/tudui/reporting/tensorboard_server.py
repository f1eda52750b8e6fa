"""`tudui board`: TensorBoard on 127.0.0.1 over one or more run directories."""
from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import TuduiError


def run_names(run_dirs: list[str]) -> list[tuple[str, Path]]:
    """(name shown in TensorBoard, folder) for each run directory: its folder name, `exp_2` for a second `exp`."""
    paths = [Path(d) for d in run_dirs]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise TuduiError(f"not a folder: {', '.join(missing)}; pass run directories (e.g. runs/exp) or the folder "
                         "holding them (runs)")
    names: dict[str, int] = {}
    out = []
    for p in paths:
        name = p.resolve().name or "root"
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:  # two runs/exp from different projects: keep both visible
            name = f"{name}_{names[name]}"
        out.append((name, p.resolve()))
    return out


def logdir_args(run_dirs: list[str], links: Path | None = None) -> list[str]:
    """--logdir for one folder. For several, `links` (an empty folder) gets one link per run, named as the run is
    to be shown, and is the --logdir: TensorBoard names a run after the folder of its event files relative to the
    logdir (`a`, `b`), where --logdir_spec a:PATH would show `a/.`. Without `links`: --logdir_spec."""
    named = run_names(run_dirs)
    if len(named) == 1:
        return ["--logdir", str(named[0][1])]
    if links is not None:
        for name, path in named:
            (links / name).symlink_to(path, target_is_directory=True)
        return ["--logdir", str(links)]
    parts = []
    for name, path in named:
        if "," in str(path) or ":" in name:
            raise TuduiError(f"{path}: TensorBoard cannot take a folder whose path contains ',' or ':' among several; "
                             "pass it alone or rename it")
        parts.append(f"{name}:{path}")
    return ["--logdir_spec", ",".join(parts)]


def start_board(run_dirs: list[str], port: int | None = None, host: str = "127.0.0.1",
                wait_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start TensorBoard in a child process and wait until it answers; returns (process, URL).

    Raises TuduiError (with TensorBoard's own last message) when it exits or does not answer within `wait_s`.
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise TuduiError("TensorBoard is not installed: pip install tensorboard") from None
    # No port given: TensorBoard binds port 0 itself and reports the one the OS gave it (a port found free here and
    # handed on could be taken by another program in between).
    links = Path(tempfile.mkdtemp(prefix="tudui-board-")) if len(run_dirs) > 1 else None
    try:
        try:
            args = logdir_args(run_dirs, links)
        except OSError:  # no symbolic links here (Windows without the privilege): TensorBoard's own --logdir_spec
            args = logdir_args(run_dirs)
        cmd = [sys.executable, "-m", "tensorboard.main", *args, "--host", host, "--port", str(port or 0)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except BaseException:
        _remove_links(links)
        raise
    proc.tudui_links = links  # removed by stop_board
    # TensorBoard logs to stderr for as long as it runs: a thread drains it (the pipe never fills up and blocks it),
    # keeping the last lines for an error message and the address it reports.
    log: collections.deque[str] = collections.deque(maxlen=20)
    reported: list[str] = [f"http://{host}:{port}/"] if port else []
    threading.Thread(target=_drain, args=(proc.stderr, log, reported), daemon=True).start()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)  # its last lines reach the thread
            _remove_links(links)
            err = [line for line in log if line.strip()]
            raise TuduiError(f"TensorBoard could not start (exit {proc.returncode}): "
                             f"{err[-1].strip() if err else 'no message'}")
        if not reported:
            time.sleep(0.1)
            continue
        try:
            with urllib.request.urlopen(reported[0], timeout=2) as r:
                if r.status == 200:
                    return proc, reported[0]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.3)
    stop_board(proc)
    raise TuduiError(f"TensorBoard did not answer on {reported[0] if reported else host} within {wait_s:.0f} s")


def _drain(stream, log: collections.deque, reported: list[str]) -> None:
    """Read TensorBoard's stderr to its end; the address of "TensorBoard 2.x at http://HOST:PORT/ (Press CTRL+C to
    quit)" goes into `reported`."""
    for line in stream:
        log.append(line)
        m = re.search(r"TensorBoard \S+ at (http://\S+?:\d+/)", line)
        if m and not reported:
            reported.append(m.group(1))


def stop_board(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _remove_links(getattr(proc, "tudui_links", None))


def _remove_links(links: Path | None) -> None:
    """The folder of links start_board made (the links only: the run directories they point to stay)."""
    if links is None:
        return
    for link in links.iterdir():
        link.unlink()
    links.rmdir()
