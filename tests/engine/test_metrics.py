import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

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


def test_macro_f1_averages_the_classes_present_as_scikit_learn():
    """Data holding 3 of 7 classes: macro-F1 is scikit-learn's f1_score(average='macro', labels=present) (absent
    classes left out, even when some images are taken for them), and 'absent' names the others; a perfect score on
    such data is 1.0, not 3/7."""
    rng = np.random.default_rng(1)
    targets = torch.tensor(rng.choice([0, 2, 5], 200))
    logits = torch.tensor(rng.normal(size=(200, 7)), dtype=torch.float32)
    logits[torch.arange(200), targets] += 1.5  # mostly right; some images go to absent classes
    r = summarize(batch_counts(logits, targets, 7))
    pred = logits.argmax(1)
    assert set(pred.tolist()) - {0, 2, 5}  # the test means something: absent classes are predicted too
    assert r["macro_f1"] == pytest.approx(f1_score(targets, pred, labels=[0, 2, 5], average="macro"), abs=1e-12)
    assert r["absent"] == [1, 3, 4, 6]
    perfect = torch.nn.functional.one_hot(targets, 7).float()
    assert summarize(batch_counts(perfect, targets, 7))["macro_f1"] == 1.0


def test_mistakes_from_the_evaluation_pass_equal_a_second_pass():
    """The run's final evaluation collects mistakes.png's images in the same pass: the same as predicting the whole
    split again and sorting its wrong predictions by confidence."""
    from tudui.data import DataSpec, model_logits, normalize
    from tudui.engine.evaluate import evaluate
    from tudui.engine.metrics import TopMistakes

    torch.manual_seed(0)
    spec = DataSpec(classes=[str(i) for i in range(4)], img_size=6, channels=1, mean=[0.5], std=[0.25], hflip=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4))
    x = torch.randint(0, 256, (70, 1, 6, 6), dtype=torch.uint8)
    y = torch.randint(0, 4, (70,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 70, 16)]
    top = TopMistakes(5)
    r = evaluate(model, loader, spec, torch.device("cpu"), mistakes=top)
    with torch.no_grad():  # the second pass: every image at once, then the 5 most confident wrong ones
        conf, pred = model_logits(model.eval(), normalize(x, spec), spec).softmax(1).max(1)
    wrong = (pred != y).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True)[:5]]
    again = [(float(conf[i]), x[i].permute(1, 2, 0).numpy(), int(y[i]), int(pred[i])) for i in order]
    assert len(top.items) == 5 and r["top1"] < 1
    assert [(round(c, 6), t, p) for c, _, t, p in top.items] == [(round(c, 6), t, p) for c, _, t, p in again]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(top.items, again))
    assert [c for c, *_ in top.items] == sorted((c for c, *_ in top.items), reverse=True)
