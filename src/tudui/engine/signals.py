"""Ctrl-C and SIGTERM during training: stop cleanly at a step boundary and say how to resume.

The first SIGINT/SIGTERM only sets a flag; training stops after the current
optimisation step (or right after the epoch's checkpoint, if it arrives during
validation or saving). `last.pt` then holds the last completed epoch, written
atomically at every epoch end (and at the start), so `tudui train --resume RUN`
redoes the interrupted epoch from its start and ends exactly where an
uninterrupted run would (see engine/resume.py for why the partial epoch is not
saved). A second signal exits at once; atomic writes mean this cannot leave a
broken checkpoint either.
"""
from __future__ import annotations

import shlex
import signal
import threading

from ..core.errors import TuduiError
from .callbacks import Callback

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report them


class TrainingInterrupted(TuduiError):
    """Training stopped on a signal; `exit_code` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resume_command(run) -> str:
    return f"tudui train --resume {shlex.quote(str(run.run_dir))}"


class GracefulStop(Callback):
    """Installs the handlers when training starts, restores the previous ones when it ends or the block exits.

    Use as `with GracefulStop() as stop: fit(cfg, [stop])` (the CLI does).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    # --- handlers ----------------------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: leave now
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(EXIT_CODES.get(signum, 128 + signum))
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"\n{name} received: stopping after the current step (send it again to quit at once)", flush=True)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return  # signal handlers can only be set from the main thread (e.g. not inside a web server worker)
        for s in EXIT_CODES:
            self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def __enter__(self) -> "GracefulStop":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    # --- callback hooks ----------------------------------------------------------------------------------------
    def on_fit_start(self, run) -> None:
        self.install()

    def _stop(self, run, where: str) -> None:
        if self.signum is None:
            return
        self.restore()
        name = signal.Signals(self.signum).name
        last = run.run_dir / "last.pt"
        raise TrainingInterrupted(
            f"{name}: training stopped {where}. {last} holds the state after epoch {run.epoch}/{run.cfg.epochs}"
            f"{'; the unfinished epoch is redone on resume' if where != 'at an epoch end' else ''}. "
            f"Resume with:\n  {resume_command(run)}", EXIT_CODES.get(self.signum, 128 + self.signum))

    def on_train_batch(self, run, step, x, y, loss) -> None:
        self._stop(run, f"during epoch {run.epoch + 1} after step {step}")

    def on_epoch_end(self, run, row, val) -> None:
        self._stop(run, "at an epoch end")

    def on_fit_end(self, run, result) -> None:
        self.restore()
