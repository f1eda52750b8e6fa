"""Faults a long run meets: a full disk, two runs racing for one name, a rank killed under torchrun."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests import forkserver
from tests.conftest import REPO, kill_tree
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint

TINY = ["--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "400", "--device", "cpu",
        "--no-tensorboard"]


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one_and_resume_works(tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):  # the 4th checkpoint write (epoch 2's last.pt) finds the disk full
        calls.append(f)
        if len(calls) == 4:
            enospc()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert tudui_main(["train", *TINY, "--epochs", "3", "--no-plots", "--project", str(tmp_path), "--name", "r"]) == 2
    err = capsys.readouterr().err
    run = tmp_path / "r"
    assert err.startswith("error: cannot write ") and str(run / "last.pt") in err and "MiB free" in err
    assert err.count("\n") == 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous good file, intact
    assert not list(run.glob(".*.tmp"))  # no half-written file left behind
    monkeypatch.setattr(torch, "save", real_save)
    assert tudui_main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_full_disk_during_export_and_plots(tmp_path, monkeypatch, capsys, tiny_model):
    import onnx
    from matplotlib.figure import Figure

    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(onnx, "save", enospc)
    assert tudui_main(["export", str(tiny_model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "no space left" in err and err.count("\n") == 1
    assert out.read_bytes() == b"previous export" and not list(tmp_path.glob(".*.tmp"))

    monkeypatch.setattr(Figure, "savefig", enospc)  # pictures never cost a run: a warning, and the run completes
    assert tudui_main(["train", *TINY, "--epochs", "1", "--project", str(tmp_path), "--name", "p"]) == 0
    err = capsys.readouterr().err
    assert "warning: could not draw" in err and "no space left" in err
    assert load_checkpoint(tmp_path / "p" / "best.pt")["epoch"] == 1


def _popen(*args, env=None):
    env = os.environ.copy() | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | \
        forkserver.FORK_CHILDREN | (env or {})
    return forkserver.Popen([sys.executable, "-m", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_two_runs_racing_for_one_name_get_two_directories(tmp_path):
    procs = [_popen("tudui", "train", *TINY, "--epochs", "1", "--no-plots", "--project", tmp_path, "--name", "same",
                    "--seed", str(seed)) for seed in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    dirs = sorted(d.name for d in tmp_path.iterdir())
    assert dirs == ["same", "same-2"]
    seeds = {load_checkpoint(tmp_path / d / "best.pt")["config"]["seed"] for d in dirs}
    assert seeds == {1, 2}  # each run wrote its own directory; nothing was overwritten


def _child_with_rank(parent: int, rank: int, deadline: float):
    """The psutil.Process of the torchrun worker with RANK=rank, searched among `parent`'s own descendants only
    (forkserver.descendants: any other process on the machine, another job's rank 1 included, is never a candidate).
    A rank forked from the tests' fork server carries its RANK and LOCAL_RANK in the server's note of it; a real one
    in its environment."""
    import psutil

    while time.monotonic() < deadline:
        forks = forkserver.family()
        for pid in forkserver.descendants(parent, forks):
            try:
                p = psutil.Process(pid)
                env = forks[pid] if pid in forks else p.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if env.get("RANK") == str(rank) and env.get("LOCAL_RANK") == str(rank):
                return p
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} found among the job's processes")


def test_a_killed_rank_ends_the_job_and_resume_continues(tmp_path):
    proc = _popen("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tudui", "train", *TINY,
                  "--epochs", "4", "--no-plots", "--project", tmp_path, "--name", "ddp",
                  env={"TUDUI_TEST_SLOW_SAVE": "0.5"})
    deadline = time.monotonic() + 180
    run = tmp_path / "ddp"
    try:
        while not ((run / "results.csv").is_file() and len((run / "results.csv").read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        _child_with_rank(proc.pid, 1, deadline).send_signal(signal.SIGKILL)  # psutil: never a reused PID
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        ended_after = time.monotonic() - killed_at
    finally:
        kill_tree(proc)  # the launcher and its workers, if anything is left
    assert proc.returncode != 0
    assert ended_after < 60, ended_after  # the whole job ended, not a rank left waiting for its dead peer
    assert "rank: 1" in err or "local_rank: 1" in err or "rank 1" in err, err[-3000:]
    ckpt = load_checkpoint(run / "last.pt")
    assert 1 <= ckpt["epoch"] < 4
    r = forkserver.run([sys.executable, "-m", "tudui", "train", "--resume", str(run), "--nproc", "2"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env=os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"} |
                       forkserver.FORK_CHILDREN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["epoch"] == 4
