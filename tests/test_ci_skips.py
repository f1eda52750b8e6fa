"""tests/conftest.py's CI rule: with CI=true only the skips in ALLOWED_SKIPS stay skips, every other one fails.

Checked on a generated test folder run by a separate pytest (its conftest takes the two hooks from ours), with CI set
and unset.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import ALLOWED_SKIPS, in_ci

REPO = Path(__file__).resolve().parents[1]

TESTS = '''
import pytest

def test_gpu():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.skipif(True, reason="root writes into read-only folders; the simulated test above covers it")
def test_root_read_only():
    pass

def test_peers():
    pytest.skip("Ultralytics' environment .venv-peers is made by `make bench`")

def test_missing_dependency():
    pytest.importorskip("tudui_surely_not_an_installed_module")

def test_missing_data():
    pytest.skip("Fashion-MNIST not installed: run `make data` (apt-get install dataset-fashion-mnist)")

@pytest.mark.skipif(True, reason="chromium not installed (apt-get install chromium)")
def test_missing_browser():
    pass

def test_missing_font():
    pytest.skip("no CJK font installed: `make install` installs fonts-wqy-microhei where apt-get is usable")

def test_passes():
    pass

@pytest.mark.xfail(reason="an expected failure stays one")
def test_xfail():
    assert False
'''


def run_pytest(folder: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    return forkserver.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *files],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\npytest.importorskip('tudui_surely_not_an_installed_module')\n\ndef test_x():\n    pass\n")
    return tmp_path


def outcomes(stdout: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR/SKIPPED/XFAIL, from -v's one line per test."""
    return dict(re.findall(r"^test_generated\.py::(\w+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL)", stdout, re.M))


def test_the_allowed_skips_are_the_ones_ci_may_have():
    reasons = " | ".join(ALLOWED_SKIPS)
    for kept in ("needs a CUDA GPU", "root writes into read-only folders", ".venv-peers is made by `make bench`"):
        assert kept in reasons
    for broken in ("not installed", "could not import", "font", "chromium", "Fashion-MNIST"):
        assert broken not in reasons  # a missing dependency, data, browser or font is never allowed


def test_ci_turns_every_other_skip_into_a_failure(folder):
    r = run_pytest(folder, "true", "test_generated.py")
    got = outcomes(r.stdout)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert got == {"test_gpu": "SKIPPED", "test_root_read_only": "SKIPPED", "test_peers": "SKIPPED",
                   "test_missing_dependency": "FAILED", "test_missing_data": "FAILED",
                   "test_missing_browser": "ERROR", "test_missing_font": "FAILED", "test_passes": "PASSED",
                   "test_xfail": "XFAIL"}, r.stdout[-3000:]
    assert "skipped under CI=true" in r.stdout and "ALLOWED_SKIPS" in r.stdout
    assert "tudui_surely_not_an_installed_module" in r.stdout  # the failure says what was missing


def test_without_ci_a_skip_is_a_skip(folder):
    r = run_pytest(folder, None, "test_generated.py", "test_module_skip.py")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"\b1 passed, 8 skipped, 1 xfailed\b", r.stdout), r.stdout[-3000:]


@pytest.mark.parametrize("value, ci", [("true", True), ("1", True), ("TRUE", True), ("false", False), ("0", False),
                                       ("", False)])
def test_what_counts_as_ci(monkeypatch, value, ci):
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_ci_fails_a_module_that_skips_at_import(folder):
    r = run_pytest(folder, "true", "test_module_skip.py")
    assert r.returncode != 0 and "skipped under CI=true" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
