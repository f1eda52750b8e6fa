"""A whole (tiny) training run through the library API."""
import csv

import pytest
import torch
import yaml

import tudui
from tudui.core.checkpoint import load_checkpoint
from tudui.core.errors import TuduiError


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    return tudui.train(data="digits", model="fast", epochs=3, batch_size=64, project=str(project), name="d")


def test_run_directory_contents(digits_run):
    d = digits_run.run_dir
    assert {"config.yaml", "env.yaml", "results.csv", "best.pt", "last.pt", "metrics.json"} <= {p.name for p in d.iterdir()}
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_top1"]) > 0.5  # digits is easy; random is 0.1
    assert digits_run.test["top1"] > 0.5 and digits_run.test["n"] == 359


def test_checkpoint_carries_everything_to_use_it(digits_run):
    ckpt = load_checkpoint(digits_run.best)
    assert ckpt["arch"]["name"] == "fast" and ckpt["data"]["classes"] == [str(i) for i in range(10)]
    assert ckpt["data"]["img_size"] == 8 and ckpt["data"]["channels"] == 1 and len(ckpt["data"]["mean"]) == 1
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert {"optimizer", "scheduler", "epoch", "versions", "config"} <= set(ckpt)


def test_config_yaml_repeats_the_run(digits_run, tmp_path):
    cfg = yaml.safe_load(open(digits_run.run_dir / "config.yaml"))
    assert cfg["img_size"] == 8 and cfg["model"] == "fast"
    again = tudui.train(tudui.TrainConfig.from_dict(cfg | {"project": str(tmp_path), "name": "again"}))
    a = load_checkpoint(digits_run.last)["model"]
    b = load_checkpoint(again.last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same data, same CPU -> same weights


def test_gpu_saved_checkpoint_loads_on_cpu(digits_run, tmp_path):
    """map_location: a checkpoint whose tensors claim a CUDA device still loads here."""
    ckpt = torch.load(digits_run.best, weights_only=True)
    if torch.cuda.is_available():
        ckpt["model"] = {k: v.cuda() for k, v in ckpt["model"].items()}
        torch.save(ckpt, tmp_path / "gpu.pt")
        p = tudui.Predictor.from_checkpoint(tmp_path / "gpu.pt", device="cpu")
        assert next(p.model.parameters()).device.type == "cpu"
    else:
        p = tudui.Predictor.from_checkpoint(digits_run.best, device="cpu")
    assert p.classes[0] == "0"


def test_early_stopping_and_existing_names(tmp_path):
    r1 = tudui.train(data="digits", model="mnist-cnn", epochs=6, lr=1e-9, optimizer="sgd", scheduler="none",
                     patience=1, project=str(tmp_path), name="p")
    assert len(r1.history) < 6  # no improvement at a vanishing learning rate
    r2 = tudui.train(data="digits", model="mnist-cnn", epochs=1, project=str(tmp_path), name="p")
    assert r2.run_dir.name == "p2" and r1.best.exists()  # nothing overwritten


def test_user_mistakes_are_tudui_errors(tmp_path):
    with pytest.raises(TuduiError, match="unknown model"):
        tudui.train(data="digits", model="nope", project=str(tmp_path))
    with pytest.raises(TuduiError, match="unknown config key"):
        tudui.train(data="digits", epoch=3, project=str(tmp_path))
    with pytest.raises(TuduiError, match="--img-size"):
        tudui.train(data="digits", model="vgg16", epochs=1, project=str(tmp_path))


def test_channels_last_trains_like_the_standard_layout(tmp_path):
    from tudui.engine.trainer import setup, train_one_epoch

    losses = {}
    for cl in (True, False):
        run = setup(tudui.TrainConfig(data=["digits"], epochs=1, batch_size=64, channels_last=cl, plots=False,
                                      tensorboard=False, project=str(tmp_path), name=f"cl{cl}"))
        weight = run.model[4].weight  # (32, 16, 3, 3): the second conv
        assert weight.is_contiguous(memory_format=torch.channels_last) is cl
        losses[cl] = train_one_epoch(run, 0)["train_loss"]
        assert all(v.is_contiguous() for v in run.checkpoint()["model"].values())  # saved in the standard layout
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)  # same maths, other kernels
