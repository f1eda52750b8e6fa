"""The store of model files trained with here: written atomically, no entry lost to concurrent writers, a damaged
store read as empty with a warning."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from tudui.core import trust

from tests import forkserver

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "trusted-code"


def sha(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_remembered_contents_are_trusted_and_nothing_else(store, tmp_path):
    assert trust.store_dir() == store
    assert not trust.is_trusted(sha(1))  # no store yet: nothing is trusted, nothing is created
    assert not store.exists()
    assert trust.remember(tmp_path / "model.py", sha(1))
    assert trust.is_trusted(sha(1)) and not trust.is_trusted(sha(2)) and not trust.is_trusted("../" + sha(1))
    assert sorted(p.name for p in store.iterdir()) == [f"{sha(1)}.json"]  # no temp file left behind


def test_two_processes_recording_at_once_lose_no_entry(store):
    # Two trainings finishing at the same moment: each writes 40 entries as fast as it can, at the same time.
    script = ("import hashlib, sys; from tudui.core import trust\n"
              "for i in range(40): trust.remember('m.py', hashlib.sha256(f'{sys.argv[1]}-{i}'.encode()).hexdigest())")
    env = {"PYTHONPATH": str(REPO / "src"), "TUDUI_CACHE": str(store.parent), "PATH": "/usr/bin:/bin"}
    procs = [forkserver.Popen([sys.executable, "-c", script, who], env=env) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    want = {hashlib.sha256(f"{who}-{i}".encode()).hexdigest() for who in "ab" for i in range(40)}
    assert all(trust.is_trusted(s) for s in want)
    assert {p.name for p in store.iterdir()} == {f"{s}.json" for s in want}


def test_a_corrupt_entry_is_ignored_with_a_warning(store, capsys):
    trust.remember("model.py", sha(1))
    (store / f"{sha(1)}.json").write_bytes(b"\x00\xff garbage")
    assert not trust.is_trusted(sha(1))
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1 and str(store) in err
    (store / f"{sha(2)}.json").write_text('{"sha256": "%s"}' % sha(3))  # an entry for other contents
    assert not trust.is_trusted(sha(2)) and "corrupt" in capsys.readouterr().err
    assert trust.remember("model.py", sha(1)) and trust.is_trusted(sha(1))  # training again repairs it


def test_a_store_that_is_a_file_is_empty_and_unwritable_with_warnings(store, capsys):
    store.parent.mkdir(parents=True)
    store.write_text("not a folder")
    assert not trust.is_trusted(sha(1))
    assert "treated as empty" in capsys.readouterr().err
    assert trust.remember("model.py", sha(1)) is False  # training goes on; the warning says what to do later
    err = capsys.readouterr().err
    assert err.startswith("warning: cannot record model.py") and "--model-file" in err and err.count("\n") == 1
