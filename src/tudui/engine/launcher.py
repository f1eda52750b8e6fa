"""`tudui train --nproc N`: the same command re-run in N processes under torchrun (DDP, engine/distributed.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..core.errors import TuduiError


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
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt as e:
        # Ctrl-C at a terminal reaches torchrun too (one process group); a SIGTERM sent to this process alone is
        # passed on, so torchrun stops its workers rather than being left running without its parent.
        signum = getattr(e, "signum", signal.SIGINT)
        if signum != signal.SIGINT:
            proc.send_signal(signum)
        try:
            proc.wait(60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
        return 128 + signum
