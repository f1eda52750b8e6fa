"""Data folders as the file system really gives them: special files, link loops, names that are not UTF-8.

Each command runs as a user would (a child process) under a timeout, so a regression fails instead of hanging.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import forkserver
from tests.conftest import REPO

TINY = ["--model", "fast", "--img-size", "8", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
        "--no-tensorboard", "--no-plots"]
DATA_LIMIT = 4 << 30  # bytes of data segment a command may use: a reader of /dev/zero hits it in seconds


def tudui(*args, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m tudui ARGS` with this checkout's sources, a timeout and (POSIX) a bound on its memory (a fork of the
    tests' fork server, tests/forkserver.py)."""
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"} | (env or {})
    return forkserver.run([sys.executable, "-m", "tudui", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, rlimit_data=DATA_LIMIT if os.name == "posix" else None)


def images(folder, n: int, value: int) -> None:
    """`n` small grey PNGs in `folder`, about `value` bright (two classes of different brightness)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    for i in range(n):
        Image.fromarray(np.clip(rng.normal(value, 20, (8, 8)), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX FIFOs and /dev/zero")
def test_special_files_are_skipped_by_train_predict_and_data_check(tmp_path):
    """A FIFO named x.png hung train and predict silently; a link x.png -> /dev/zero read without end."""
    data = tmp_path / "data"
    images(data / "dark", 4, 40)
    images(data / "light", 4, 210)
    os.mkfifo(data / "dark" / "fifo.png")
    (data / "light" / "zero.png").symlink_to("/dev/zero")
    skipped = "warning: skipped 2 file(s) that are not regular files"
    out = tudui("train", "--data", data, *TINY, "--val-split", "0.25", "--project", tmp_path / "runs", "--name", "r")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count(skipped) == 1 and "fifo.png (a FIFO)" in out.stderr and "6 train / 2 val" in out.stdout
    model = tmp_path / "runs" / "r" / "best.pt"
    out = tudui("predict", model, data)
    assert out.returncode == 0 and out.stderr.startswith(skipped) and "zero.png" not in out.stdout, out.stderr
    assert out.stdout.count(".png ") == 8
    out = tudui("predict", model, data / "dark" / "fifo.png")
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"error: {data / 'dark' / 'fifo.png'} is a FIFO, not an image file or a folder"]
    out = tudui("data", "check", data)
    assert out.returncode == 0 and out.stderr.count(skipped) == 1 and "Traceback" not in out.stderr


def test_a_link_back_into_the_dataset_does_not_relabel_it(tmp_path):
    """`tshirt/again -> ..` listed every trouser image again as a tshirt (120 images became 4,920, and training
    reported 98.78% without a word)."""
    images(tmp_path / "data" / "trouser", 4, 40)
    images(tmp_path / "data" / "tshirt", 4, 210)
    (tmp_path / "data" / "tshirt" / "again").symlink_to("..")
    out = tudui("train", "--data", tmp_path / "data", *TINY, "--val-split", "0.25", "--project", tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "6 train / 2 val" in out.stdout  # 8 images, each once
    assert "warning: did not follow 1 folder link(s)" in out.stderr and "tshirt/again -> .." in out.stderr


def test_names_that_are_not_utf8(tmp_path, capsys):
    """A class folder b'caf\\xe9' stopped training with a UnicodeEncodeError traceback (and with --cache off trained
    a model the server answered 500 for): one line names it; a file so named in a good class folder trains.
    In-process (tudui.cli.main) but for the one command whose point is a child's strict UTF-8 stdout."""
    from tudui.cli import main

    def here(*args) -> tuple[int, str, str]:
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    root = os.fsencode(tmp_path / "data")
    try:
        os.makedirs(root + b"/caf\xe9")
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    images(tmp_path / "data" / os.fsdecode(b"caf\xe9"), 4, 40)
    images(tmp_path / "data" / "tea", 4, 210)
    for cache in ("auto", "off"):
        rc, _, err = here("train", "--data", tmp_path / "data", *TINY, "--cache", cache, "--project", tmp_path / "runs")
        assert rc == 2 and "Traceback" not in err, err[-2000:]
        assert err.splitlines() == [
            f"error: class folder {tmp_path}/data/caf\\xe9 has a name that is not UTF-8 text (the \\x escapes are its "
            "undecodable bytes); rename it in UTF-8, e.g. with `convmv -f latin1 -t utf-8`"]
    os.rename(root + b"/caf\xe9", root + b"/cafe")
    os.rename(root + b"/cafe/0.png", root + b"/cafe/caf\xe9.png")
    rc, out, err = here("train", "--data", tmp_path / "data", *TINY, "--val-split", "0.25", "--project",
                        tmp_path / "runs", "--name", "ok")
    assert rc == 0 and "6 train / 2 val" in out and "cache built" in out, err
    # a desktop locale's stdout is strict UTF-8: the file's name is printed escaped, not as a traceback
    child = tudui("predict", tmp_path / "runs" / "ok", tmp_path / "data" / "cafe", "--json",
                  env={"PYTHONIOENCODING": "utf-8:strict"})
    assert child.returncode == 0 and "caf\\udce9.png" in child.stdout and "Traceback" not in child.stderr, child.stderr
    # a model trained before such class names were refused: one line when it is loaded, not a 500 per request
    import torch

    ckpt = torch.load(tmp_path / "runs" / "ok" / "best.pt", weights_only=True)
    ckpt["data"]["classes"] = [os.fsdecode(b"caf\xe9"), "tea"]
    torch.save(ckpt, tmp_path / "latin1.pt")
    for cmd in (["predict", tmp_path / "latin1.pt", tmp_path / "data" / "tea"], ["serve", tmp_path / "latin1.pt",
                                                                                 "--port", "0"]):
        rc, _, err = here(*cmd)
        assert rc == 2 and err.splitlines() == [
            "error: this model's class name 'caf\\xe9' is not UTF-8 text, so it cannot be shown or served; rename "
            "the class folder in UTF-8 and train again"], err
