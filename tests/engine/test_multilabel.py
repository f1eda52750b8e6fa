"""Multi-label training: mAP and F1 against scikit-learn, thresholds chosen on validation and saved, the loss."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

import tudui
from tudui.core.errors import TuduiError
from tudui.data.augment import mix_batch
from tudui.engine.multilabel import AsymmetricLoss, MultiHotBCE, average_precision, best_thresholds, multilabel_metrics


def _scores(seed=0, n=300, k=6):
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, k, generator=g) < 0.3).float()
    s = ((torch.rand(n, k, generator=g) * 0.7 + t * 0.3) * 20).round() / 20  # ties, as real scores have
    return s, t


def test_average_precision_and_f1_are_scikit_learns():
    s, t = _scores()
    ours = average_precision(s, t).numpy()
    np.testing.assert_allclose(ours, average_precision_score(t.numpy(), s.numpy(), average=None), rtol=1e-9)
    th = best_thresholds(s, t)
    m = multilabel_metrics(s, t, th)
    pred = (s >= th).numpy()
    assert m["map"] == pytest.approx(average_precision_score(t.numpy(), s.numpy(), average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(t.numpy(), pred, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(t.numpy(), pred, average="micro"))
    assert m["exact_match"] == pytest.approx((pred == t.numpy()).all(1).mean())


def test_each_class_threshold_is_the_one_with_the_best_f1():
    s, t = _scores(1)
    th = best_thresholds(s, t)
    for c in range(t.shape[1]):
        best = max(f1_score(t[:, c].numpy(), (s[:, c] >= v).numpy()) for v in np.unique(s[:, c].numpy()))
        assert f1_score(t[:, c].numpy(), (s[:, c] >= th[c]).numpy()) == pytest.approx(best)


def test_multi_hot_losses_smoothing_and_mixing():
    logits, y = torch.randn(4, 3), torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    ref = torch.nn.BCEWithLogitsLoss()(logits, y * 0.8 + 0.1)  # smoothing 0.2: 1 -> 0.9, 0 -> 0.1
    assert MultiHotBCE(0.2)(logits, y) == pytest.approx(float(ref))
    # ASL with no focusing and no shift is the sum of the binary cross-entropies over classes
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, y)
    assert asl == pytest.approx(float(torch.nn.BCEWithLogitsLoss(reduction="sum")(logits, y) / 4), rel=1e-5)
    x = torch.randn(4, 1, 8, 8)
    _, mixed = mix_batch(x, y, 3, mixup=0.4, cutmix=0, prob=1.0, generator=torch.Generator().manual_seed(0))
    assert mixed.shape == (4, 3) and not torch.equal(mixed, y)
    assert ((mixed >= 0) & (mixed <= 1)).all()  # each row a blend of two multi-hot rows: both images' labels


def test_a_multi_label_csv_trains_ranks_epochs_by_map_and_saves_its_thresholds(pairs_run):
    r = pairs_run
    rows = r.history
    assert all(0 <= row["val_map"] <= 1 for row in rows) and rows[-1]["val_map"] > 0.2
    best = max(rows, key=lambda row: (row["val_map"], -row["val_loss"]))
    assert r.best_epoch == best["epoch"]
    ck = torch.load(r.best, weights_only=True)
    assert ck["data"]["multi_label"] and len(ck["data"]["thresholds"]) == 10
    assert r.val["thresholds"] == ck["data"]["thresholds"] and r.val["map"] == pytest.approx(best["val_map"])
    assert f"val mAP {r.val['map']:.2%}" in repr(r) and "exact match" in r._repr_html_()
    header = (r.run_dir / "results.csv").read_text().splitlines()[0]
    assert header.endswith("val_macro_f1,val_balanced_acc,val_map,val_micro_f1")


def test_a_multi_label_run_draws_precision_recall_curves_and_its_missed_and_spurious_labels(pairs_run):
    """pr_curves.png and mistakes.png come from the final pass over validation: the scores kept for the curves give
    the validation mAP scikit-learn computes, and the mistakes are the images furthest from their labels."""
    from tests.conftest import colored_pixels

    r = pairs_run
    assert {"pr_curves", "mistakes"} <= set(r.pictures) and "confusion" not in r.pictures
    assert r.pictures["pr_curves"] == r.run_dir / "pr_curves.png" and colored_pixels(r.pictures["pr_curves"]) > 500
    assert r.pictures["mistakes"] == r.run_dir / "mistakes.png" and r.pictures["mistakes"].stat().st_size > 0
    assert not (r.run_dir / "confusion_matrix.png").exists()
    probs, targets = r.scores
    assert probs.shape == targets.shape == (r.val["n"], 10)
    present = targets.sum(0) > 0
    assert r.val["map"] == pytest.approx(average_precision_score(targets[:, present], probs[:, present]))
    errors = np.abs(targets - probs).sum(1)
    assert [m[0] for m in r.mistakes] == pytest.approx(sorted(errors, reverse=True)[:16], rel=1e-5)


def test_single_label_losses_are_refused_for_multi_label_data_and_asl_for_single(pairs_csv, tmp_path):
    with pytest.raises(TuduiError, match="--loss mse is a single-label loss and this data is multi-label"):
        tudui.train(data=[str(pairs_csv)], model="fast", epochs=1, loss="mse", project=str(tmp_path))
    with pytest.raises(TuduiError, match="--loss asl is for multi-label data"):
        tudui.train(data=["digits"], model="fast", epochs=1, loss="asl", subset=64, project=str(tmp_path),
                   )


@pytest.mark.parametrize("best_by, figure", [("top1", 0.3), ("macro-f1", 0.5)])
def test_epochs_of_a_multi_label_model_are_ranked_by_map(best_by, figure):
    """A multi-label model's epochs rank by mAP (its top-1 is the exact-match ratio), or by its macro-F1 when
    --best-by says so; a single-label model's by top-1."""
    from types import SimpleNamespace

    from tudui.engine.trainer import score

    run = SimpleNamespace(cfg=SimpleNamespace(best_by=best_by))
    assert score(run, {"map": 0.3, "top1": 0.9, "macro_f1": 0.5}) == figure
    assert score(SimpleNamespace(cfg=SimpleNamespace(best_by="top1")), {"top1": 0.9, "macro_f1": 0.5}) == 0.9


def test_a_multi_label_run_resumes_and_a_frozen_backbone_trains_its_head_through_it(pairs_csv, pairs_run, tmp_path,
                                                                                    capsys):
    opts = dict(data=[str(pairs_csv)], model="fast", batch_size=32, img_size=8, project=str(tmp_path), val_split=0.25)
    tudui.train(**opts, epochs=1, name="r", scheduler="none")
    r = tudui.train(resume=str(tmp_path / "r"), epochs=2)
    assert [row["epoch"] for row in r.history] == [1, 2] and all(row["val_map"] != "" for row in r.history)
    rows = (tmp_path / "r" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.split(",")[-2] for row in rows[1:])  # val_map in both epochs' rows
    assert torch.load(r.best, weights_only=True)["data"]["thresholds"] == r.val["thresholds"]
    capsys.readouterr()
    f = tudui.train(**opts, epochs=1, name="frozen", weights=str(pairs_run.best), freeze_backbone=True)
    assert "head on cached features" in capsys.readouterr().out.splitlines()[0]  # multi-hot targets cached too
    assert f.val["map"] > 0


def test_best_by_auto_counts_multi_label_validation_images_not_labels():
    from tudui.core.config import TrainConfig
    from tudui.engine.choices import resolve_best_by

    cfg = TrainConfig()
    note = resolve_best_by(cfg, np.array([4, 30, 12]), images=31, measure="mAP")  # 46 labels on 31 images
    assert cfg.best_by == "last" and "auto: 31 validation images, 4 of the smallest class" in note
    assert "too few to rank epochs by mAP" in note


def test_balance_modes_are_for_one_label_per_image(pairs_csv, tmp_path):
    """--balance weighs the classes of single-label data: on multi-label data auto settles to none, another mode is
    one error (a multi-hot image belongs to several classes, so it has no one class to draw or weigh it by)."""
    from tudui.core.config import TrainConfig
    from tudui.engine.choices import resolve_balance

    cfg = TrainConfig()
    assert resolve_balance(cfg, [50, 2, 9], multi_label=True) is None and cfg.balance == "none"
    assert resolve_balance(TrainConfig(), [50, 2, 9]) is not None  # the same counts, one label each: logit-adjust
    with pytest.raises(TuduiError, match="--balance sampler weighs the classes of data with one label per image"):
        tudui.train(data=[str(pairs_csv)], model="fast", epochs=1, balance="sampler", img_size=8,
                    project=str(tmp_path))
