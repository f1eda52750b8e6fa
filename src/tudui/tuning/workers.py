"""`tudui tune --jobs K`: K-1 more `tudui tune` processes on this machine, sharing the study through its storage.

Each is the same command line with the study's name fixed and `--jobs` dropped; all stop once the study holds the
total the first one set (the trials it held at the start plus --trials), passed to them in the environment.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from ..core.errors import TuduiError
from ..engine.launcher import strip_flag

UNTIL_ENV = "TUDUI_TUNE_UNTIL"  # the study's trial count at which every worker of one --jobs start stops


@contextlib.contextmanager
def start_workers(argv: list[str] | None, jobs: int, study: str, until: int) -> Iterator[list[subprocess.Popen]]:
    """The extra workers run while the block does (this process is one more); on leaving it they are waited for, and
    stopped (SIGTERM, as Ctrl-C stops a training) when the block ends with an exception."""
    if jobs <= 1:
        yield []
        return
    if argv is None:
        raise TuduiError("jobs > 1 starts `tudui tune` processes from the command line; from Python, run "
                         "tudui.tune(study=NAME, ...) in several processes instead")
    env = os.environ.copy() | {UNTIL_ENV: str(until)}
    src = str(Path(__file__).resolve().parents[2])  # the folder holding this tudui package, for `-m tudui`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "tudui", *strip_flag(strip_flag(argv, "--jobs"), "--study"), "--study", study]
    procs = [subprocess.Popen(command, env=env) for _ in range(jobs - 1)]
    try:
        yield procs
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        raise
    finally:
        codes = [p.wait() for p in procs]
    if any(codes):
        raise TuduiError(f"{sum(c != 0 for c in codes)} of the {jobs - 1} other tune workers ended with an error "
                         f"(exit codes {', '.join(map(str, codes))}); what they printed is above")
