"""Class imbalance: balanced accuracy beside top-1 and macro-F1, which epoch best.pt keeps, and --balance."""
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from tudui.engine.metrics import batch_counts, compute_metrics


def test_balanced_accuracy_is_scikit_learns_over_the_classes_present():
    """The mean recall of the classes the data holds (scikit-learn's balanced_accuracy_score, which averages over
    the classes in y_true): a model that answers the common class scores its share of the data in top-1, 1/K here."""
    rng = np.random.default_rng(2)
    targets = torch.tensor(rng.choice([0, 1, 4], 300, p=[0.8, 0.15, 0.05]))
    logits = torch.tensor(rng.normal(size=(300, 6)), dtype=torch.float32)
    logits[torch.arange(300), targets] += 1.0
    r = compute_metrics(batch_counts(logits, targets, 6))
    pred = logits.argmax(1)
    assert set(pred.tolist()) - {0, 1, 4}  # images taken for absent classes too
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, pred), abs=1e-12)
    common = torch.zeros(300, 6)
    common[:, 0] = 1.0  # always the common class
    r = compute_metrics(batch_counts(common, targets, 6))
    assert r["top1"] == pytest.approx((targets == 0).double().mean().item()) and r["top1"] > 0.7
    assert r["balanced_accuracy"] == pytest.approx(1 / 3)


def test_every_epoch_and_the_final_summary_carry_balanced_accuracy_and_macro_f1(digits_run):
    """results.csv has a val_balanced_acc and a val_macro_f1 column, each epoch's, equal to metrics.json's at the
    best epoch (the final evaluation of best.pt's weights)."""
    with open(digits_run.run_dir / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["val_balanced_acc"] and r["val_macro_f1"] for r in rows)
    summary = json.loads((digits_run.run_dir / "metrics.json").read_text(encoding="utf-8"))
    best = rows[summary["best_epoch"] - 1]
    for col, key in (("val_balanced_acc", "balanced_accuracy"), ("val_macro_f1", "macro_f1")):
        assert float(best[col]) == pytest.approx(summary["val"][key], abs=1e-5)
    assert summary["val"]["balanced_accuracy"] != summary["val"]["top1"]  # a number of its own
