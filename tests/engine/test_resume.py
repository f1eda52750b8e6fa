"""Exact resume after SIGKILL, kill during a save, SIGTERM and the printed resume command, finished runs."""
from __future__ import annotations

import csv
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import Child, sigkill_after_line
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
# Tiny and deterministic: 400 digits (8x8), the course's MNIST CNN, 7 steps per epoch, CPU only.
TRAIN = ["train", "--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "400",
         "--device", "cpu", "--deterministic"]
TIMING = ("epoch_time_s", "images_per_s")


def metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.fixture(autouse=True)
def _restore_determinism():
    """--deterministic switches torch to deterministic algorithms process-wide; undo it for other tests."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def cli_here(*args) -> int:
    """The CLI's own function, in this process (a subprocess costs seconds of CPU just to import torch)."""
    return tudui_main([str(a) for a in args])


def test_sigkill_in_epoch_2_then_resume_is_bitwise_identical(tmp_path):
    assert cli_here(*TRAIN, "--epochs", "3", "--project", tmp_path, "--name", "full") == 0

    # The same run, killed while epoch 2 trains. The slow-save hook (1 s before each rename) guarantees that
    # epoch 2's checkpoint cannot land before the kill.
    sigkill_after_line(*TRAIN, "--epochs", "3", "--project", tmp_path, "--name", "killed", line="epoch 1/3")
    killed = tmp_path / "killed"
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1  # killed during epoch 2, before its checkpoint
    assert len(metric_rows(killed)) == 1

    assert cli_here("train", "--resume", killed) == 0

    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (tmp_path / "full", killed))
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["state"].items():  # optimizer buffers (AdamW moments by default)
        assert st.keys() == b["optimizer"]["state"][k].keys()
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][k][name])), (k, name)
    assert metric_rows(tmp_path / "full") == metric_rows(killed)
    assert [r["epoch"] for r in metric_rows(killed)] == ["1", "2", "3"]


def test_kill_during_save_keeps_the_previous_last_pt(tmp_path):
    child = Child(*TRAIN, "--epochs", "2", "--project", tmp_path, "--name", "k", env={"TUDUI_TEST_SLOW_SAVE": "3"})
    run_dir, deadline = tmp_path / "k", time.monotonic() + 120
    try:
        # last.pt (epoch 0) exists once the first save is renamed; the next temp file is epoch 1's save in progress.
        while not ((run_dir / "last.pt").is_file() and list(run_dir.glob(".last.pt.*.tmp"))):
            assert child.proc.poll() is None and time.monotonic() < deadline, child.err[-2000:]
            time.sleep(0.05)
        child.send(signal.SIGKILL)
        child.wait(60)
    finally:
        child.kill()
    assert list(run_dir.glob(".last.pt.*.tmp"))  # the half-done save was never renamed over last.pt
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_sigterm_stops_prints_resume_command_that_works(tmp_path, capsys):
    child = Child(*TRAIN, "--epochs", "3", "--project", tmp_path, "--name", "t")
    try:
        child.wait_for_line("epoch 1/3")
        child.send(signal.SIGTERM)
        rc = child.wait(120)
    finally:
        child.kill()
    err = child.err
    assert rc == 143, err
    assert "SIGTERM" in err and "Resume with:" in err
    command = err.split("Resume with:")[1].strip().splitlines()[0]
    argv = shlex.split(command)
    assert argv[:3] == ["tudui", "train", "--resume"]
    epoch = load_checkpoint(tmp_path / "t" / "last.pt")["epoch"]
    assert epoch in (1, 2)  # stopped after a step of epoch 2 (or right after its checkpoint)

    assert cli_here(*argv[1:]) == 0
    assert f"resuming {tmp_path / 't'} at epoch {epoch + 1}/3" in capsys.readouterr().out
    assert [row["epoch"] for row in metric_rows(tmp_path / "t")] == ["1", "2", "3"]

    assert cli_here(*argv[1:]) == 0  # a finished run says so instead of training again
    out = capsys.readouterr().out
    assert "already finished" in out and "epoch 1/" not in out


def test_ctrl_c_stops_after_the_step_with_exit_130(tmp_path):
    child = Child(*TRAIN, "--epochs", "3", "--project", tmp_path, "--name", "c")
    try:
        child.wait_for_line("epoch 1/3")
        child.send(signal.SIGINT)
        rc = child.wait(120)
    finally:
        child.kill()
    assert rc == 130, child.err
    assert "SIGINT received: stopping after the current step" in "".join(child.stdout)
    assert "SIGINT: training stopped" in child.err and f"tudui train --resume {tmp_path / 'c'}" in child.err
    assert "Traceback" not in child.err
    assert load_checkpoint(tmp_path / "c" / "last.pt")["epoch"] in (1, 2)


def test_a_second_ctrl_c_quits_at_once(tmp_path):
    """The first Ctrl-C waits for the step (here: a checkpoint save slowed to 60 s); the second does not wait."""
    child = Child(*TRAIN, "--epochs", "1", "--project", tmp_path, "--name", "q", env={"TUDUI_TEST_SLOW_SAVE": "60"})
    run_dir, deadline = tmp_path / "q", time.monotonic() + 120
    try:
        while not list(run_dir.glob(".last.pt.*.tmp")):  # the first save (before step 1) is sleeping before its rename
            assert child.proc.poll() is None and time.monotonic() < deadline, child.err[-2000:]
            time.sleep(0.05)
        child.send(signal.SIGINT)
        child.wait_for_line("SIGINT received")
        start = time.monotonic()
        child.send(signal.SIGINT)
        rc = child.wait(30)
        quit_s = time.monotonic() - start
    finally:
        child.kill()
    assert rc == 130 and child.err.strip().splitlines()[-1] == "interrupted", child.err
    assert quit_s < 15  # the save still had most of its 60 s to sleep
    assert "Resume with" not in child.err and "Traceback" not in child.err
    assert sorted(p.name for p in run_dir.iterdir() if "last.pt" in p.name) == []  # the unfinished save left nothing


def test_resume_rules(tmp_path, capsys):
    """Only --epochs (raised) may change; raising it continues the run and stretches the schedule."""
    assert cli_here(*TRAIN, "--epochs", "1", "--project", tmp_path, "--name", "r") == 0
    run = tmp_path / "r"
    assert cli_here("train", "--resume", run, "--lr", "0.5") == 2
    assert "--lr cannot change when resuming" in capsys.readouterr().err
    assert cli_here("train", "--resume", run, "--epochs", "2") == 0
    out = capsys.readouterr().out
    assert "schedule now spans 2 epochs" in out and "epoch 2/2" in out
    assert [row["epoch"] for row in metric_rows(run)] == ["1", "2"]
    assert cli_here("train", "--resume", tmp_path / "nothing") == 2
    assert "no such run directory" in capsys.readouterr().err


def test_library_resume_continues_the_run_like_the_cli(tmp_path):
    """`tudui.train(resume=run_dir, epochs=N)` resolves the run's own config.yaml, as `tudui train --resume` does."""
    import tudui
    from tudui.engine.callbacks import Callback

    class CrashAfterEpoch1(Callback):  # a crash after epoch 1's checkpoint, like a power cut
        def on_epoch_end(self, run, row, val):
            if run.epoch == 1:
                raise RuntimeError("simulated crash")

    opts = dict(data="digits", model="mnist-cnn", batch_size=64, subset=400, device="cpu", deterministic=True,
                epochs=3, project=str(tmp_path), plots=False, tensorboard=False)
    full = tudui.train(name="full", **opts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tudui.train(name="crashed", callbacks=[CrashAfterEpoch1()], **opts)
    crashed = tmp_path / "crashed"
    assert load_checkpoint(crashed, prefer="last")["epoch"] == 1

    resumed = tudui.train(resume=str(crashed), epochs=3)
    assert resumed.run_dir == crashed  # the same directory, not a new exp<N>
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full.run_dir, crashed))
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert metric_rows(full.run_dir) == metric_rows(crashed)
