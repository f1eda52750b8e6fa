"""TensorBoard event files of a tiny real run, read back with tensorboard's EventAccumulator."""
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tudui
from tudui.core.config import TrainConfig
from tudui.api import default_callbacks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """640 digits (8x8) -> 10 steps of 64 per epoch; epoch 1, a killed partial epoch 2, then --resume to 2 epochs.
    The default --log-every 50 is more than a whole run: the loss is still logged 4 times an epoch or more."""
    from torch.utils.tensorboard import SummaryWriter

    project = tmp_path_factory.mktemp("tb")
    first = tudui.train(data="digits", model="mnist-cnn", epochs=1, batch_size=64, subset=640,
                        plots=False, project=str(project), name="r")
    with SummaryWriter(str(first.run_dir)) as w:  # what a process killed in epoch 2 would have left behind
        for step in (12, 14, 16):
            w.add_scalar("step/train_loss", 99.0, step)
    return tudui.train(resume=str(first.run_dir), epochs=2)  # the library's resume, as `tudui train --resume`


def test_scalars_images_graph_and_hparams(tiny_run):
    ea = EventAccumulator(str(tiny_run.run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    steps_per_epoch = 640 // 64
    total = 2 * steps_per_epoch
    assert [e.step for e in ea.Scalars("step/train_loss")] == list(range(2, total + 1, 2))  # every 10 // 4 steps
    for tag in ("epoch/train_loss", "epoch/train_objective", "epoch/val_loss", "epoch/val_top1", "epoch/val_top5",
                "epoch/lr"):
        assert [e.step for e in ea.Scalars(tag)] == [1, 2], tag
    history = tiny_run.history
    assert [e.value for e in ea.Scalars("epoch/val_top1")] == pytest.approx([r["val_top1"] for r in history])
    assert [e.value for e in ea.Scalars("epoch/lr")] == pytest.approx([r["lr"] for r in history])
    assert all(math.isfinite(e.value) and e.value != 99.0 for e in ea.Scalars("step/train_loss"))  # purged
    img = ea.Images("train/first_batch")
    assert len(img) == 2 and img[0].width >= 8 * 8 and img[0].height >= 8 * 8
    # ^ 64 images of 8x8 in a grid, once per process (first fit and resume); hparams likewise, the last is final
    labelled = ea.Images("train/first_batch_labels")  # the same batch drawn by matplotlib with class names
    assert len(labelled) == 2 and labelled[0].width > 400 and labelled[0].height > 100
    assert tags["graph"] and any(n.op.startswith("aten::") for n in ea.Graph().node)
    assert ea.Scalars("hparam/test_top1")[-1].value == pytest.approx(tiny_run.test["top1"])
    assert ea.Scalars("hparam/val_top1")[-1].value == pytest.approx(tiny_run.val["top1"])


def test_hparams_session_is_in_the_run_itself(tiny_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(tiny_run.run_dir), size_guidance={"tensors": 0})
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in content and "_hparams_/session_start_info" in content
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["model"].string_value == "mnist-cnn" and hp["batch_size"].number_value == 64
    assert len(list(tiny_run.run_dir.iterdir())) == len([p for p in tiny_run.run_dir.iterdir() if p.is_file()])


def test_flags_choose_the_callbacks():
    names = lambda cfg: [type(c).__name__ for c in default_callbacks(cfg)]  # noqa: E731
    assert names(TrainConfig()) == ["TensorBoardCallback", "PlotsCallback"]
    assert names(TrainConfig(tensorboard=False, plots=False)) == []
    assert default_callbacks(TrainConfig(log_every=3))[0].log_every == 3


def test_loss_is_logged_every_log_every_steps_and_at_least_4_times_an_epoch():
    from tudui.reporting.tensorboard import log_interval

    assert log_interval(50, 48) == 12  # a course-sized run: 4 points an epoch, not one point every 50 steps
    assert log_interval(50, 1000) == 50 and log_interval(3, 48) == 3  # --log-every where it is the more frequent
    assert log_interval(50, 3) == 1 and log_interval(0, 48) == 1
