"""Ctrl-C and SIGTERM outside the epochs: while setting up, during the final evaluation, during an export. Each test
starts the CLI in a subprocess (with a slow step patched in, so the signal lands where it is meant to) and sends
signals only to that process."""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import Child
from tudui.cli import main as tudui_main
from tudui.core.checkpoint import load_checkpoint
from tudui.core.files import RUN_LOCK

TINY = ["--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "400", "--device", "cpu",
        "--no-tensorboard"]

# The CLI with one function made slow: it prints MARK when called, then sleeps (a signal interrupts the sleep the
# way it would interrupt the real work).
SLOW = """
import sys, time
import {module} as m
real = m.{name}
def slow(*args, **kwargs):
    if {when}:
        print("MARK", flush=True)
        time.sleep(120)
    return real(*args, **kwargs)
m.{name} = slow
from tudui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def slow_cli(*args, module: str, name: str, when: str = "True") -> Child:
    return Child(*args, code=SLOW.format(module=module, name=name, when=when))


def stop_at_mark(child: Child, sig: int) -> tuple[int, float]:
    """(exit status, seconds from the signal to the exit) for a child stopped once it prints MARK."""
    try:
        child.wait_for_line("MARK", timeout=180)
        child.send(sig)
        start = time.monotonic()
        rc = child.wait(60)
        return rc, time.monotonic() - start
    finally:
        child.kill()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_the_final_evaluation_stops_it_and_resume_finishes_it(tmp_path, capsys, sig, code):
    # Before: the first signal printed "stopping" and was ignored until the whole evaluation had run (exit 0); a
    # second one lost metrics.json and the pictures for good (--resume: "already finished").
    child = slow_cli("train", *TINY, "--epochs", "2", "--project", tmp_path, "--name", "f",
                     module="tudui.engine.trainer", name="evaluate", when="'mistakes' in kwargs")
    rc, took = stop_at_mark(child, sig)
    run = tmp_path / "f"
    assert rc == code and took < 30, child.err  # promptly: the evaluation had 120 s of sleep left
    assert "Traceback" not in child.err
    assert "final evaluation" in child.err and f"tudui train --resume {run}" in child.err
    assert not (run / "metrics.json").exists() and not list(run.glob(".*.tmp")) and not (run / RUN_LOCK).exists()
    rows = (run / "results.csv").read_text()

    assert tudui_main(["train", "--resume", str(run)]) == 0  # the evaluation alone
    out = capsys.readouterr().out
    assert "now its final evaluation" in out and "epoch 1/2" not in out and "done: best epoch" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["val"]["top1"] > 0 and metrics["val"]["confusion"]
    assert (run / "confusion_matrix.png").is_file() and (run / "curves.png").is_file()
    assert (run / "results.csv").read_text() == rows and load_checkpoint(run / "last.pt")["epoch"] == 2
    assert tudui_main(["train", "--resume", str(run)]) == 0  # now it is finished
    assert "already finished" in capsys.readouterr().out


def test_sigterm_while_setting_up_stops_with_a_message_and_leaves_nothing(tmp_path):
    # Before: SIGTERM outside the epoch loop ended the process without a word.
    child = slow_cli("train", *TINY, "--epochs", "2", "--project", tmp_path, "--name", "s",
                     module="tudui.engine.setup", name="build_data")
    rc, took = stop_at_mark(child, signal.SIGTERM)
    assert rc == 143 and took < 30, child.err
    assert "SIGTERM" in child.err and "setting up" in child.err and "Traceback" not in child.err
    assert not (tmp_path / "s").exists()  # the empty run directory made for it is gone again


def test_sigterm_during_an_export_leaves_no_temporary_file(tmp_path, tiny_model):
    # Before: SIGTERM ended the process on the spot and the export's .tmp file stayed beside the destination.
    out = tmp_path / "m.torchscript"
    child = slow_cli("export", tiny_model, "--format", "torchscript", "--out", out,
                     module="tudui.inference.export", name="_reload")  # the temp file is written, not yet checked
    rc, took = stop_at_mark(child, signal.SIGTERM)
    assert rc == 143 and took < 30, child.err
    assert child.err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in child.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


LAUNCH = """
import sys
from tudui.engine import launcher
# torchrun stands in as a process that says when it is told to stop
launcher.launch_command = lambda argv, nproc: [sys.executable, "-c", '''
import signal, sys, time
def stop(*_):
    print("torchrun got SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("MARK", flush=True)
time.sleep(120)
''']
from tudui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_to_a_multi_process_launch_reaches_torchrun(tmp_path):
    # Before: `tudui train --nproc 2` died on SIGTERM and left torchrun and its workers running without it.
    import psutil

    child = Child("train", "--data", "digits", "--nproc", "2", "--project", tmp_path, code=LAUNCH)
    launched: list = []
    try:
        child.wait_for_line("MARK", timeout=180)
        launched = psutil.Process(child.proc.pid).children(recursive=True)  # the stand-in torchrun
        child.send(signal.SIGTERM)
        rc = child.wait(60)
        assert rc == 143, child.err
        assert "torchrun got SIGTERM" in "".join(child.stdout)
        _, alive = psutil.wait_procs(launched, timeout=30)
        assert not alive
    finally:
        child.kill()
        for p in launched:  # what this test launched, should it be left over
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
