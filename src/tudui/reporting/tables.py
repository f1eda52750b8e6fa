"""Evaluation results as console tables (per-class precision/recall/F1, the confusion matrix)."""
from __future__ import annotations

import wcwidth

from ..core.console import table


def per_class_table(classes: list[str], metrics: dict) -> str:
    pc = metrics["per_class"]
    # A class with no images has no recall or F1 ("-", and macro-F1 leaves it out); its precision is shown when
    # images were taken for it (0: each of them is a mistake).
    taken = [sum(col) for col in zip(*metrics["confusion"])] if "confusion" in metrics else [1] * len(classes)
    rows = [[c, f"{p:.3f}" if s or t else "-", f"{r:.3f}" if s else "-", f"{f:.3f}" if s else "-", s]
            for c, p, r, f, s, t in zip(classes, pc["precision"], pc["recall"], pc["f1"], pc["support"], taken)]
    if "ap" in pc:  # a multi-label model: each class's average precision and the threshold it was scored at
        rows = [r + ["-" if a is None else f"{a:.3f}", f"{t:.3f}"] for r, a, t in zip(rows, pc["ap"],
                                                                                      metrics["thresholds"])]
        return table(["class", "precision", "recall", "f1", "support", "AP", "threshold"], rows)
    return table(["class", "precision", "recall", "f1", "support"], rows)


def confusion_table(classes: list[str], confusion: list[list[int]], max_classes: int = 30) -> str:
    if len(classes) > max_classes:
        return f"(confusion matrix of {len(classes)} classes omitted from the console; see the PNG / --json)"
    short = [wcwidth.clip(c, 0, 8) for c in classes]  # 8 terminal cells: 8 Latin letters or 4 Chinese characters
    rows = [[f"{c}"] + row for c, row in zip(short, confusion)]
    return "rows: true class, columns: predicted\n" + table(["true\\pred"] + short, rows)
