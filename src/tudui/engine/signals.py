"""Ctrl-C and SIGTERM: stop cleanly wherever the process is, and say how to go on.

SIGTERM (`kill`, a job scheduler's stop) is treated as Ctrl-C everywhere: `sigterm_as_interrupt` makes it raise
KeyboardInterrupt (as `Interrupt`, which knows its signal), so `finally` blocks and atomic_path's cleanup run and
no temporary file outlives the process; the CLI then prints "interrupted" and exits 128 + the signal number.

Training (`GracefulStop`) does better while its epochs run: the first signal only sets a flag, and training stops
after the current optimisation step (or right after the epoch's checkpoint, if it arrives during validation or
saving). `last.pt` then holds the last completed epoch, written atomically at every epoch end (and at the start),
so `tudui train --resume RUN` redoes the interrupted epoch from its start and ends exactly where an uninterrupted
run would (see engine/resume.py for why the partial epoch is not saved). Outside the epochs (setting up, the final
evaluation of the best weights) there is no step to wait for: the first signal stops at once, and the message says
how to finish (`--resume` of a run whose final evaluation did not finish does just that evaluation). A second
signal exits at once; atomic writes mean this cannot leave a broken checkpoint either.
"""
from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from typing import Iterator

from ..core.console import shown
from ..core.device import world
from ..core.errors import TuduiError
from .callbacks import Callback

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report them


class Interrupt(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised where the main thread was; a KeyboardInterrupt, so `except Exception` lets it by."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


def _raise(signum, frame) -> None:
    raise Interrupt(signum)


def _set(signum: int, handler) -> object:
    previous = signal.signal(signum, handler)
    return signal.SIG_DFL if previous is None else previous  # None: a handler installed from C


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For the block, SIGTERM raises Interrupt as Ctrl-C raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = _set(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainingInterrupted(TuduiError):
    """Training stopped on a signal; `exit_code` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resume_command(run) -> str:
    return f"tudui train --resume {shlex.quote(shown(run.run_dir))}"


class GracefulStop(Callback):
    """Installs the handlers for the block, restores the previous ones when it exits (or training ends).

    Use as `with GracefulStop() as stop: fit(cfg, [stop])` (api.train does): a stop outside the epochs leaves the
    block as TrainingInterrupted saying how to go on. Under torchrun only rank 0 (which writes) stops gracefully;
    the other ranks keep SIGTERM-as-Ctrl-C, and torchrun ends them.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "setup"  # -> "training" (on_fit_start) -> "final" (on_train_end)
        self.run = None
        self._previous: dict[int, object] = {}
        self._raised: Interrupt | None = None

    # --- handlers ----------------------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: leave now
            self.restore()
            raise Interrupt(signum)
        self.signum = signum
        name = signal.Signals(signum).name
        if self.phase == "training":
            print(f"\n{name} received: stopping after the current step (send it again to quit at once)", flush=True)
            return
        what = "the final evaluation" if self.phase == "final" else "setting up the run"
        print(f"\n{name} received: stopping {what}", flush=True)
        self._raised = Interrupt(signum)
        raise self._raised

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous or world().rank != 0:
            return  # signal handlers can only be set from the main thread (e.g. not inside a web server worker)
        for s in EXIT_CODES:
            self._previous[s] = _set(s, self._handle)

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def __enter__(self) -> "GracefulStop":
        self.install()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.restore()
        if exc is not None and exc is self._raised:  # the first signal, outside the epochs: say how to go on
            raise TrainingInterrupted(self._message(exc.signum), exc.exit_code) from None

    def _message(self, signum: int) -> str:
        name, run = signal.Signals(signum).name, self.run
        if self.phase == "final" and run is not None:
            return (f"{name}: training ended after epoch {run.epoch}/{run.cfg.epochs}, but the final evaluation of the "
                    f"best weights was stopped: metrics.json and the pictures are not written yet. Do that evaluation "
                    f"alone with:\n  {resume_command(run)}")
        return f"{name}: stopped while setting up the run, before any epoch was trained; run the same command again"

    # --- callback hooks ----------------------------------------------------------------------------------------
    def on_fit_start(self, run) -> None:
        self.run, self.phase = run, "training"
        self.install()

    def _stop(self, run, where: str) -> None:
        if self.signum is None:
            return
        self.restore()
        name = signal.Signals(self.signum).name
        last = run.run_dir / "last.pt"
        raise TrainingInterrupted(
            f"{name}: training stopped {where}. {shown(last)} holds the state after epoch {run.epoch}/{run.cfg.epochs}"
            f"{'; the unfinished epoch is redone on resume' if where != 'at an epoch end' else ''}. "
            f"Resume with:\n  {resume_command(run)}", EXIT_CODES.get(self.signum, 128 + self.signum))

    def on_train_batch(self, run, step, x, y, loss) -> None:
        self._stop(run, f"during epoch {run.epoch + 1} after step {step}")

    def on_epoch_end(self, run, row, val) -> None:
        self._stop(run, "at an epoch end")

    def on_train_end(self, run) -> None:
        self._stop(run, "at an epoch end")  # a signal after the last epoch's checks
        self.run, self.phase = run, "final"

    def on_fit_end(self, run, result) -> None:
        self.restore()
