"""Hooks the trainer calls, so reporting (the console lines, TensorBoard, pictures) stays out of the loop.

Each method receives the `Run` (engine/run.py) and is called on rank 0 only.
"""
from __future__ import annotations


class Callback:
    """What to do at the moments of a training run; subclass it and override the hooks you need (each does nothing
    here). Pass instances to `tudui.train(callbacks=[...])` or engine's `fit`; they run in the order given, on rank 0.

    An exception raised in a hook stops the run, as engine/guards.py does on a non-finite loss and engine/signals.py
    on Ctrl-C. The order of one run's calls: on_fit_start; per epoch on_train_batch after every optimisation step,
    then on_epoch_end (after the epoch's checkpoint); on_train_end; on_fit_end.
    """

    def on_fit_start(self, run) -> None:
        """After set-up, before the first epoch."""

    def on_train_batch(self, run, step: int, x, y, loss) -> None:
        """After each optimisation step. x: (B, C, H, W) normalised float batch as trained on (while the head trains
        on cached features: the first images they were computed from), y its labels; loss: 0-d tensor, the batch's
        plain cross-entropy (results.csv's train_loss), or the training objective itself where that is not finite.

        `step` counts optimisation steps since the start of training (global, across epochs).
        """

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        """After validation; `row` is the results.csv row, `val` the full validation summary."""

    def on_train_end(self, run) -> None:
        """After the last epoch (or an early stop), before the best weights' final evaluation."""

    def on_fit_end(self, run, result) -> None:
        """After the final test evaluation; `result` is the RunResult."""
