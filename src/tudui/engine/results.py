"""results.csv: one row per epoch, written as the run goes and rewritten to match a resumed checkpoint."""
from __future__ import annotations

import csv
from pathlib import Path

from ..core.files import atomic_path

# train_loss and val_loss: plain cross-entropy, on the training batches as trained (augmented, mixed, dropout on) and
# on the validation split; train_objective: what --loss minimised (label smoothing, class weights, mse, ...);
# val_macro_f1 and val_balanced_acc (the mean recall of the classes present) see the rare classes top-1 hides.
# Columns are only ever added at the end, so a reader of older files (where train_loss was the objective, and there
# was no train_objective) keeps working.
FIELDS = ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "epoch_time_s", "images_per_s",
          "train_objective", "val_macro_f1", "val_balanced_acc", "val_map", "val_micro_f1"]  # the last two: multi-label


def _cells(row: dict) -> dict:
    """Floats with 6 significant digits; empty strings (no validation data) and ints as they are."""
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in FIELDS}


def write_results(path: Path, history: list[dict]) -> None:
    """(Re)write the whole table atomically: a header, then `history`'s rows (a new run writes just the header)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(_cells(r) for r in history)


def append_result(path: Path, row: dict) -> None:
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=FIELDS).writerow(_cells(row))
