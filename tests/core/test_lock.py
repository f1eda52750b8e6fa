"""core/lock.py: one live holder, its PID in the refusal, a killed holder's lock taken over at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests import forkserver
from tests.conftest import REPO, kill_tree
from tudui.core.console import shown
from tudui.core.lock import FileLock, Locked

HOLD = """
import sys, time
from tudui.core.lock import FileLock
lock = FileLock(sys.argv[1]).acquire(blocking=False)
print("held", flush=True)
time.sleep(120)
"""


def _holder(path) -> subprocess.Popen:
    proc = forkserver.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder(path)
    try:
        with pytest.raises(Locked) as e:
            FileLock(path).acquire(blocking=False)
        assert e.value.pid == proc.pid
        proc.send_signal(signal.SIGKILL)  # the process this test started; its lock file stays behind
        proc.wait(30)
    finally:
        kill_tree(proc)
    assert path.read_text().strip() == str(proc.pid)
    lock = FileLock(path).acquire(blocking=False, grace_s=0)  # the kernel dropped the dead process's lock
    assert path.read_text().strip() == str(os.getpid())
    lock.release()
    assert not path.exists()  # released: nothing left in the folder


def test_one_process_at_a_time_and_the_file_is_removed(tmp_path):
    path = tmp_path / "y.lock"
    with FileLock(path):
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(Locked):  # a second holder in the same process: a different open file, refused too
            FileLock(path).acquire(blocking=False)
    assert not path.exists()
    with FileLock(path):  # and again
        pass


def test_shown_escapes_control_characters_only():
    assert shown("runs/exp 类别") == "runs/exp 类别"
    assert shown("a\nb\x1b[31mc\x7f") == "a\\nb\\x1b[31mc\\x7f"
    assert shown(os.fsdecode(b"caf\xe9")) == "caf\\xe9"  # a Latin-1 file name: its byte, not a broken character
    assert "\n" not in shown("x\r\n\u2028y") and "\x1b" not in shown("\x1b")
