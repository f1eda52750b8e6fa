"""Hooks the trainer calls, so reporting (TensorBoard, pictures) stays out of the loop.

Each method receives the `Run` (engine/trainer.py) and is called on rank 0 only.
"""
from __future__ import annotations


class Callback:
    def on_fit_start(self, run) -> None:
        """After set-up, before the first epoch."""

    def on_train_batch(self, run, step: int, x, y, loss) -> None:
        """After each optimisation step. x: (B, C, H, W) normalised float batch as trained on; loss: 0-d tensor.

        `step` counts optimisation steps since the start of training (global, across epochs).
        """

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        """After validation; `row` is the results.csv row, `val` the full validation summary."""

    def on_train_end(self, run) -> None:
        """After the last epoch (or an early stop), before the best weights' final evaluation."""

    def on_fit_end(self, run, result) -> None:
        """After the final test evaluation; `result` is the RunResult."""
