"""Stop a run whose loss became NaN or infinite, before a bad epoch overwrites the last good checkpoint."""
from __future__ import annotations

import torch

from ..core.errors import TuduiError
from .callbacks import Callback


class NonFiniteLoss(TuduiError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Checks every step's loss without stalling an accelerator.

    On the CPU the check is free, so every step is checked as it happens. On a GPU
    reading a value back waits for the device, so the per-step flags stay on the
    device and are read every `every` steps and always at the epoch's last step,
    before the trainer writes last.pt. The error names the first bad step and the
    learning rate that step used.
    """

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self.pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr used, 0-d bool on the device)
        self.next_lr = 0.0
        self.epoch_start_step = 0

    def on_fit_start(self, run) -> None:
        self.next_lr = run.optimizer.param_groups[0]["lr"]
        self.epoch_start_step = run.step

    def on_train_batch(self, run, step, x, y, loss) -> None:
        lr_used, self.next_lr = self.next_lr, run.optimizer.param_groups[0]["lr"]  # scheduler already stepped
        self.pending.append((step, lr_used, torch.isfinite(loss.detach()).all()))
        last_of_epoch = step - self.epoch_start_step >= run.steps_per_epoch
        if loss.device.type == "cpu" or last_of_epoch or len(self.pending) >= self.every:
            flags = torch.stack([f for _, _, f in self.pending]).cpu()  # one device sync for the batch of flags
            if not bool(flags.all()):
                bad_step, bad_lr, _ = self.pending[int((~flags).nonzero()[0])]
                self._fail(run, bad_step, bad_lr, loss if len(self.pending) == 1 else None)
            self.pending.clear()

    def on_epoch_end(self, run, row, val) -> None:
        self.epoch_start_step = run.step

    def _fail(self, run, step: int, lr: float, loss) -> None:
        value = f" ({float(loss):g})" if loss is not None else ""
        last = run.run_dir / "last.pt"
        raise NonFiniteLoss(
            f"the training loss became non-finite{value} at step {step} (epoch {run.epoch + 1}, learning rate "
            f"{lr:.3g}); training stopped. {last} keeps the last good state (epoch {run.epoch}). Try a lower --lr "
            f"(e.g. {lr / 10:.3g}), --no-amp, or check the data for extreme values")
