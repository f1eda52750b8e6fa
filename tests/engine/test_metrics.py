import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tudui.engine.metrics import add_counts, batch_counts, compute_metrics as summarize


def test_counts_add_up_to_dataset_metrics():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(300, 7)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, 7, 300))
    total = None
    for s in range(0, 300, 64):  # uneven batches: accuracy must still be exact
        total = add_counts(total, batch_counts(logits[s:s + 64], targets[s:s + 64], 7))
    r = summarize(total)
    pred = logits.argmax(1)
    assert r["n"] == 300 and abs(r["top1"] - (pred == targets).double().mean().item()) < 1e-12
    top5 = (logits.topk(5, 1).indices == targets[:, None]).any(1).double().mean().item()
    assert abs(r["top5"] - top5) < 1e-9
    assert r["confusion"] == confusion_matrix(targets, pred, labels=range(7)).tolist()
    p, rc, f, s = precision_recall_fscore_support(targets, pred, labels=range(7), zero_division=0)
    assert np.allclose(r["per_class"]["precision"], p) and np.allclose(r["per_class"]["recall"], rc)
    assert np.allclose(r["per_class"]["f1"], f) and r["per_class"]["support"] == s.tolist()
