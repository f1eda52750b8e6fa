"""`tudui board`: TensorBoard on 127.0.0.1 over one or more run directories."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import TuduiError


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (TensorBoard is started on it immediately after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def logdir_args(run_dirs: list[str]) -> list[str]:
    """--logdir for one folder; --logdir_spec name:path,... for several (each shown as its own run)."""
    paths = [Path(d) for d in run_dirs]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise TuduiError(f"not a folder: {', '.join(missing)}; pass run directories (e.g. runs/exp) or the folder "
                         "holding them (runs)")
    if len(paths) == 1:
        return ["--logdir", str(paths[0].resolve())]
    names: dict[str, int] = {}
    parts = []
    for p in paths:
        name = p.resolve().name
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:  # two runs/exp from different projects: keep both visible
            name = f"{name}_{names[name]}"
        if "," in str(p.resolve()) or ":" in name:
            raise TuduiError(f"{p}: TensorBoard cannot take a folder whose path contains ',' or ':' among several; "
                             "pass it alone or rename it")
        parts.append(f"{name}:{p.resolve()}")
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
    port = port or free_port(host)
    url = f"http://{host}:{port}/"
    cmd = [sys.executable, "-m", "tensorboard.main", *logdir_args(run_dirs), "--host", host, "--port", str(port)]
    # TensorBoard logs to stderr for as long as it runs: a file (not a pipe nobody reads) can never fill up and block it.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = [line for line in log.read().strip().splitlines() if line.strip()]
            raise TuduiError(f"TensorBoard could not start (exit {proc.returncode}): "
                             f"{err[-1] if err else 'no message'}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.3)
    stop_board(proc)
    raise TuduiError(f"TensorBoard did not answer on {url} within {wait_s:.0f} s")


def stop_board(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
