"""A whole (tiny) training run through the library API (`digits_run`: the session's shared run, conftest.py)."""
import csv
import json
import pickle

import pytest
import torch
import yaml

import tudui
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint
from tudui.core.config import TrainConfig
from tudui.core.errors import TuduiError
from tudui.engine.callbacks import Callback


def test_run_directory_contents(digits_run):
    d = digits_run.run_dir
    assert {"config.yaml", "env.yaml", "results.csv", "best.pt", "last.pt", "metrics.json"} <= {p.name for p in d.iterdir()}
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_top1"]) > 0.5  # digits is easy; random is 0.1
    assert digits_run.test["top1"] > 0.5 and digits_run.test["n"] == 359


def test_env_yaml_records_the_versions_device_threads_and_command_line(digits_run):
    """env.yaml (docs/training.md): tudui/torch/torchvision/python versions, device, threads, command line and the
    number of processes, each as this process has them (the shared run trained in it)."""
    import platform
    import sys

    import torchvision

    env = yaml.safe_load(open(digits_run.run_dir / "env.yaml"))
    assert env == {"tudui": tudui.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                   "python": platform.python_version(), "device": "cuda" if torch.cuda.is_available() else "cpu",
                   "threads": torch.get_num_threads(), "argv": sys.argv, "world_size": 1}
    assert load_checkpoint(digits_run.best)["versions"] == {k: env[k] for k in ("tudui", "torch", "torchvision",
                                                                                  "python")}


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


def test_config_file_with_flags_overriding_it(digits_run, tmp_path):
    """`tudui train --config runs/x/config.yaml --epochs 1 ...`: the file's options, except those given as flags."""
    original = yaml.safe_load(open(digits_run.run_dir / "config.yaml"))
    assert tudui_main(["train", "--config", str(digits_run.run_dir / "config.yaml"), "--epochs", "1",
                       "--batch-size", "32", "--no-plots", "--project", str(tmp_path)]) == 0
    run = tmp_path / "exp"  # the file's run name is not reused: a repeated run gets a new directory
    cfg = yaml.safe_load(open(run / "config.yaml"))
    assert cfg["epochs"] == 1 and cfg["batch_size"] == 32 and cfg["plots"] is False
    assert {k for k in cfg if cfg[k] != original[k]} == {"epochs", "batch_size", "plots", "project", "name"}
    assert load_checkpoint(run / "last.pt")["arch"]["name"] == original["model"] == "fast"


def test_library_config_file_with_keywords_overriding_it(tmp_path, capsys):
    """`tudui.train(config_file=...)`: every option the file sets is used, and a keyword given wins over the file."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": "digits", "model": "fast", "epochs": 1, "subset": 320, "seed": 7,
                                      "batch_size": 32, "lr": 0.02, "label_smoothing": 0.1, "plots": False,
                                      "tensorboard": False, "project": str(tmp_path / "from-file"),
                                      "name": "from-file"}))
    result = tudui.train(config_file=config, seed=3, batch_size=64, project=str(tmp_path / "kw"), name="lib")
    assert result.run_dir == tmp_path / "kw" / "lib" and not (tmp_path / "from-file").exists()
    for used in (yaml.safe_load(open(result.run_dir / "config.yaml")), load_checkpoint(result.last)["config"]):
        assert (used["seed"], used["batch_size"]) == (3, 64)  # the keywords
        assert (used["model"], used["epochs"], used["subset"], used["lr"], used["label_smoothing"]) == \
            ("fast", 1, 320, 0.02, 0.1)  # the file
        assert used["plots"] is False and used["tensorboard"] is False
    assert len(list(csv.DictReader(open(result.run_dir / "results.csv")))) == 1
    assert "320 train" in capsys.readouterr().out
    assert not list(result.run_dir.glob("*.png")) and not list(result.run_dir.glob("events.out.tfevents.*"))


def test_gpu_saved_checkpoint_loads_on_cpu(digits_run, tmp_path, monkeypatch, capsys):
    """A checkpoint whose tensors are stored as CUDA tensors loads, evaluates and predicts on a CPU-only machine."""
    ckpt = torch.load(digits_run.best, weights_only=True)
    path = tmp_path / "gpu.pt"
    if torch.cuda.is_available():
        ckpt["model"] = {k: v.cuda() for k, v in ckpt["model"].items()}
        torch.save(ckpt, path)
    else:
        # What torch.save writes for CUDA tensors, without a GPU: each storage is tagged with the device it lived
        # on ("cuda:0"), and torch.load puts it back there unless told otherwise. The bytes are the same.
        with monkeypatch.context() as m:
            m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
            torch.save(ckpt, path)
    locations = []
    torch.load(path, weights_only=True, map_location=lambda storage, loc: locations.append(loc) or storage)
    assert locations and set(locations) == {"cuda:0"}  # the fixture really is a GPU checkpoint
    if not torch.cuda.is_available():
        # what a plain load does with it here (torch 2.4 wraps the RuntimeError in an UnpicklingError)
        with pytest.raises((RuntimeError, pickle.UnpicklingError), match="CUDA"):
            torch.load(path, weights_only=True)

    p = tudui.Predictor.from_path(path, device="cpu")
    assert {v.device.type for v in p.model.state_dict().values()} == {"cpu"}
    x = torch.randn(4, 1, 8, 8)
    original = tudui.Predictor.from_path(digits_run.best, device="cpu")
    assert torch.equal(p.probabilities(x), original.probabilities(x))
    assert load_checkpoint(path)["model"]["0.weight"].device.type == "cpu"
    assert tudui_main(["eval", str(path), "--data", "digits", "--device", "cpu", "--json", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(digits_run.test["top1"])


def test_early_stopping_and_existing_names(tmp_path):
    r1 = tudui.train(data="digits", model="mnist-cnn", epochs=6, batch_size=128, lr=1e-9, optimizer="sgd",
                     scheduler="none", patience=1, project=str(tmp_path), name="p")
    assert len(r1.history) < 6  # no improvement at a vanishing learning rate
    r2 = tudui.train(data="digits", model="mnist-cnn", epochs=1, project=str(tmp_path), name="p")
    assert r2.run_dir.name == "p-2" and r1.best.exists()  # nothing overwritten
    # --exist-ok: the same directory again, its files replaced by the new run's.
    assert tudui_main(["train", "--data", "digits", "--model", "mnist-cnn", "--epochs", "1", "--no-plots",
                       "--project", str(tmp_path), "--name", "p", "--exist-ok"]) == 0
    assert sorted(d.name for d in tmp_path.iterdir()) == ["p", "p-2"]
    rows = list(csv.DictReader(open(tmp_path / "p" / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and load_checkpoint(tmp_path / "p" / "last.pt")["epoch"] == 1


def test_user_mistakes_are_tudui_errors(tmp_path):
    with pytest.raises(TuduiError, match="unknown model"):
        tudui.train(data="digits", model="nope", project=str(tmp_path))
    with pytest.raises(TuduiError, match="unknown config key"):
        tudui.train(data="digits", epoch=3, project=str(tmp_path))
    with pytest.raises(TuduiError, match=r"img_size=\d"):
        tudui.train(data="digits", model="vgg16", epochs=1, project=str(tmp_path))


def test_channels_last_trains_like_the_standard_layout(tmp_path):
    from tudui.engine.setup import setup
    from tudui.engine.trainer import train_one_epoch

    losses = {}
    for cl in (True, False):
        # fp32 pinned: --amp auto measures each layout's bf16 speed-up on its own and may choose differently
        run = setup(tudui.TrainConfig(data=["digits"], epochs=1, batch_size=64, channels_last=cl, plots=False,
                                      amp="off", tensorboard=False, project=str(tmp_path), name=f"cl{cl}"))
        weight = run.model[4].weight  # (32, 16, 3, 3): the second conv
        assert weight.is_contiguous(memory_format=torch.channels_last) is cl
        losses[cl] = train_one_epoch(run, 0)["train_loss"]
        assert all(v.is_contiguous() for v in run.checkpoint()["model"].values())  # saved in the standard layout
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)  # same maths, other kernels (seen: 1e-8 apart)


def test_a_batch_of_one_image_on_1x1_maps_is_a_clear_error(tmp_path, cli):
    """`fast` on 8x8 digits has 1x1 maps in its last stage: torch's BatchNorm cannot train on a batch of one there."""
    with pytest.raises(TuduiError, match=r"use batch_size=2 or more \(now 1.*a larger img_size"):
        tudui.train(data="digits", model="fast", epochs=1, batch_size=1, subset=16, plots=False, tensorboard=False,
                    project=str(tmp_path), name="one")
    r = cli("train", "--data", "digits", "--model", "fast", "--epochs", "1", "--batch-size", "1", "--subset", "16",
            "--no-plots", "--project", tmp_path, "--name", "cli")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--batch-size 2 or more" in r.stderr
    assert not (tmp_path / "cli" / "best.pt").exists()  # no epoch finished, so no best weights were claimed


def _epoch_of(cfg: TrainConfig, callbacks=()) -> dict:
    """The weights after one epoch of `cfg`'s run (the loop's own epoch: no validation, checkpoint or final pass)."""
    from tudui.engine.setup import setup
    from tudui.engine.trainer import train_one_epoch

    run = setup(cfg, list(callbacks))
    try:
        for cb in callbacks:
            cb.on_fit_start(run)
        train_one_epoch(run, 0)
    finally:
        run.close()
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def test_clip_grad_bounds_the_total_norm_of_the_gradients_applied(tmp_path, monkeypatch):
    """--clip-grad X: every optimiser step applies gradients whose total L2 norm is at most X, where the same
    steps' gradients before clipping (what an unclipped run applies) are larger."""
    import tudui.engine.trainer as trainer

    applied, before = [], []
    clip = trainer.torch.nn.utils.clip_grad_norm_

    def recorded_clip(params, max_norm, *a, **k):
        before.append(float(clip(params, max_norm, *a, **k)))  # torch returns the norm before clipping
        return before[-1]

    monkeypatch.setattr(trainer.torch.nn.utils, "clip_grad_norm_", recorded_clip)

    class AppliedNorm(Callback):
        def on_fit_start(self, run):
            def hook(optimizer, args, kwargs):
                grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                applied.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                                              for g in grads]))))
            run.optimizer.register_step_pre_hook(hook)

    _epoch_of(TrainConfig(data=["digits"], model="mnist-cnn", subset=128, batch_size=32, clip_grad=0.05,
                          plots=False, tensorboard=False, project=str(tmp_path)), [AppliedNorm()])
    assert len(applied) == len(before) == 4  # every step clipped
    assert all(n > 0.05 for n in before)  # unclipped, these steps would apply more
    assert all(n <= 0.05 * (1 + 1e-5) for n in applied) and max(applied) > 0.05 * 0.99, applied


def test_accumulate_n_equals_one_step_of_an_n_times_larger_batch(tmp_path):
    """--accumulate 4 --batch-size 16 takes the steps of --batch-size 64: the same images per step (one seeded
    order), the mean loss over them, the same schedule, so the same weights up to float rounding. mnist-cnn has no
    BatchNorm (in training mode it normalises each micro-batch by its own statistics, which a 64-image batch cannot
    reproduce), no dropout, and --augment none draws no per-batch randomness; SGD because Adam's first steps are
    about sign(gradient), where a gradient near zero turns rounding into a full step."""
    opts = dict(data=["digits"], model="mnist-cnn", subset=128, augment="none", optimizer="sgd", lr=0.05,
                plots=False, tensorboard=False, project=str(tmp_path))
    small = _epoch_of(TrainConfig(**opts, batch_size=16, accumulate=4, name="acc"))
    big = _epoch_of(TrainConfig(**opts, batch_size=64, name="big"))
    plain = _epoch_of(TrainConfig(**opts, batch_size=16, name="plain"))  # 8 small steps: another result
    for k in big:
        assert torch.allclose(small[k], big[k], rtol=1e-4, atol=1e-6), (k, (small[k] - big[k]).abs().max())
    assert any(not torch.allclose(plain[k], big[k], rtol=1e-4, atol=1e-6) for k in big)
