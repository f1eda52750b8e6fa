"""Run directories: one live training per folder, names that stay inside --project, one-line errors for folders that
cannot be used (a file, a dangling link, read-only, also mid-run)."""
from __future__ import annotations

import errno
import os
import signal
import tempfile

import pytest

import tudui
from tests.conftest import Child
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint
from tudui.core.errors import TuduiError
from tudui.core.files import RUN_LOCK
from tudui.engine.callbacks import Callback

TINY = ["--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "400", "--device", "cpu",
        "--no-tensorboard", "--no-plots"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_second_training_in_a_live_run_directory_is_refused_with_its_pid(tmp_path, capsys):
    # A long run (a slow save after every epoch) with --exist-ok; a second one with the same name used to write
    # into the same folder (results.csv interleaved, one run's config.yaml beside the other's last.pt).
    first = Child("train", *TINY, "--epochs", "3", "--project", tmp_path, "--name", "same", "--exist-ok",
                  env={"TUDUI_TEST_SLOW_SAVE": "3"})  # 3 s before each checkpoint lands: still running below
    run = tmp_path / "same"
    try:
        first.wait_for_line("epoch 1/3")
        before = (run / "results.csv").read_text()
        assert tudui_main(["train", *TINY, "--epochs", "1", "--project", str(tmp_path), "--name", "same",
                           "--exist-ok"]) == 2
        err = one_error_line(capsys)
        assert f"in use by another training (process {first.proc.pid}" in err and str(run) in err
        assert tudui_main(["train", "--resume", str(run)]) == 2  # resuming a run that is still training: the same
        assert f"process {first.proc.pid}" in one_error_line(capsys)
        assert (run / "results.csv").read_text().startswith(before)  # nothing of the refused runs got in
        assert (run / RUN_LOCK).read_text().strip() == str(first.proc.pid)
        first.send(signal.SIGKILL)  # the process this test started; the kernel drops its lock, the file stays
        first.wait(60)
    finally:
        first.kill()
    assert (run / RUN_LOCK).exists()
    assert tudui_main(["train", "--resume", str(run)]) == 0  # a killed run's lock is taken over
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert not (run / RUN_LOCK).exists()  # released when the run ended


@pytest.mark.parametrize("name", ["../escaped", "..", ".", "a/b", "ABS", "two\nlines", "\x1b[2Jred", "x" * 300])
def test_a_name_is_one_folder_inside_the_project(tmp_path, capsys, name):
    project = tmp_path / "deep" / "runs"
    name = str(tmp_path / "abs") if name == "ABS" else name  # absolute, but inside this test's folder
    assert tudui_main(["train", *TINY, "--epochs", "1", "--project", str(project), "--name", name]) == 2
    err = one_error_line(capsys)
    assert "--name" in err and "\x1b" not in err  # printed safely: no terminal escape code, no second line
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written anywhere, not even --project


def test_user_given_paths_are_printed_without_control_characters(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --project (runs/) lands here, not in the checkout
    assert tudui_main(["train", "--data", str(tmp_path / "x\x1b[2J\nforged: ok")]) == 2
    err = one_error_line(capsys)
    assert "\\x1b[2J\\nforged: ok" in err


def test_run_folders_that_cannot_be_used_are_one_line_errors(tmp_path, capsys):
    def train(*extra) -> int:
        return tudui_main(["train", *TINY, "--epochs", "1", *map(str, extra)])

    (tmp_path / "file").write_text("not a folder")
    assert train("--project", tmp_path / "file") == 2
    assert "is a file" in one_error_line(capsys)
    assert train("--project", tmp_path / "file" / "runs") == 2
    assert "is a file" in one_error_line(capsys)

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "exp").symlink_to(tmp_path / "gone")
    assert train("--project", tmp_path / "runs", "--name", "exp", "--exist-ok") == 2
    assert "does not exist" in one_error_line(capsys)
    assert not (tmp_path / "gone").exists()


def test_a_read_only_project_is_one_line_error(tmp_path, capsys, monkeypatch):
    """Simulated (tests run as root, for whom chmod does not bite): mkdir under the project fails with EROFS."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert tudui_main(["train", *TINY, "--project", str(ro / "runs")]) == 2
    err = one_error_line(capsys)
    assert "Read-only file system" in err and "writable --project" in err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders; the simulated test above covers it")
def test_a_read_only_project_really(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert tudui_main(["train", *TINY, "--project", str(ro)]) == 2
        assert "Permission denied" in one_error_line(capsys)
    finally:
        ro.chmod(0o755)


def test_a_run_directory_made_read_only_mid_run_says_how_to_resume(tmp_path, monkeypatch):
    run = tmp_path / "r"
    real_mkstemp = tempfile.mkstemp
    state = {"read_only": False}

    class ReadOnlyAfterEpoch1(Callback):  # as `chmod -w runs/r` while epoch 2 trains
        def on_epoch_end(self, run_, row, val):
            state["read_only"] = True

    def mkstemp(*args, dir=None, **kwargs):  # atomic_path's temp file in the run directory
        if state["read_only"] and dir is not None and os.path.samefile(dir, run):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    opts = dict(data="digits", model="mnist-cnn", batch_size=64, subset=400, device="cpu", epochs=3,
                project=str(tmp_path), name="r", plots=False, tensorboard=False)
    with pytest.raises(TuduiError) as e:
        tudui.train(callbacks=[ReadOnlyAfterEpoch1()], **opts)
    msg = str(e.value)
    assert "\n" not in msg and "Permission denied" in msg and "last.pt holds epoch 1" in msg
    assert f"tudui train --resume {run}" in msg
    state["read_only"] = False  # writable again: the printed way on works
    assert tudui_main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_a_run_that_fails_in_set_up_leaves_no_folder_behind(tmp_path, capsys):
    """`tudui train --data typo` in a fresh folder left an empty runs/ there: the folders a failed set-up created
    (--project and those above it that were new, and the run directory) are removed; a project that existed stays."""
    project = tmp_path / "new" / "runs"
    assert tudui_main(["train", "--data", str(tmp_path / "no-such-folder"), "--project", str(project)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    assert tudui_main(["train", "--data", str(tmp_path / "no-such-folder"), "--project", str(tmp_path / "kept")]) == 2
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_a_taken_name_gets_its_number_after_a_dash(tmp_path):
    # `run1` a second time used to become run12, which reads as run twelve
    from tudui.core.files import make_run_dir

    names = [make_run_dir(tmp_path, "run1", False).name for _ in range(3)]
    names += [make_run_dir(tmp_path, None, False).name for _ in range(2)]
    assert names == ["run1", "run1-2", "run1-3", "exp", "exp-2"]


def test_exist_ok_removes_the_earlier_runs_tensorboard_events_and_says_so(tmp_path, capsys):
    # The earlier run's events stayed beside the new run's, so TensorBoard drew one run with steps 1, 2, 1, 2, 3.
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "same"
    with SummaryWriter(str(run)) as w:  # what an earlier training in this folder left
        for step in (1, 2):
            w.add_scalar("step/train_loss", 1.0, step)
    args = ["train", *TINY, "--epochs", "1", "--project", str(tmp_path), "--name", "same", "--exist-ok"]
    assert tudui_main(args) == 0
    out = capsys.readouterr().out
    assert f"note: removed 1 TensorBoard event file(s) of the earlier run in {run}" in out
    assert list(run.glob("events.out.tfevents.*")) == []  # --no-tensorboard (TINY): this run writes none
