"""A benchmark script's --quick smoke run, for tests/benchmarks/test_quick.py and test_serve_load.py (quick_run).

A script runs in the test's own interpreter, as `python benchmarks/SCRIPT --quick` would run it (its folder first on
sys.path, `__main__`, its argv): a child interpreter would cost each of them seconds of importing torch. What it
changes for the whole process is put back: the environment (photos.py sets TUDUI_CACHE), sys.path, sys.argv, the
working folder, the bf16 speed figure kept per process, and (conftest) torch's threads and determinism flags. The
Python processes a script starts with subprocess.run or Popen (`python -m tudui train` runs whose peak memory it
reads, servers under load, ...) are forks of the tests' fork server where they can be (tests/forkserver.py), and so
are the Python processes those start (FORK_CHILDREN: torchrun's ranks): their figures mean nothing in a smoke test,
their seconds of import did.
"""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

from tests import forkserver
from tests.benchmarks.tables import check_report

from tudui.engine import choices

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def quick_run(script, extra, request, tmp_path, capfd, monkeypatch, expect: str | None = None,
              fmnist: bool = True) -> str:
    """Run `script --quick [extra]` as `python benchmarks/SCRIPT` would, in this interpreter; its output. `expect`: a
    line its final report must contain, whose tables are then read back in full (tables.check_report); `fmnist`:
    skip with the install hint where the real Fashion-MNIST is absent. `request`, `tmp_path`, `capfd` and
    `monkeypatch` are the calling test's fixtures."""
    if fmnist:
        request.getfixturevalue("fmnist")  # skips with the install hint when Fashion-MNIST is absent
    env = dict(os.environ)
    os.environ.update(forkserver.FORK_CHILDREN)  # torchrun's ranks (ddp_cpu.py) are forks too
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--quick", *extra, "--workdir", str(tmp_path / "work")])
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])
    monkeypatch.setattr(subprocess, "run", forkserver.routed(subprocess.run, forkserver.run, {
        "capture_output", "text", "timeout", "env", "cwd", "check", "stdout", "stderr"}))
    monkeypatch.setattr(subprocess, "Popen", forkserver.routed(subprocess.Popen, forkserver.Popen, {
        "stdout", "stderr", "stdin", "text", "env", "cwd"}))
    try:
        runpy.run_path(str(BENCH / script), run_name="__main__")
        code = 0
    except SystemExit as e:  # sys.exit(message) on failure, sys.exit(0) or sys.exit(main()) at the end
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else e.code)
    finally:
        os.environ.clear()
        os.environ.update(env)
        # a figure measured while the script had unpinned it (amp_speed.py) is kept per process: forget it, or every
        # later test of this worker would train in bf16 on a CPU with bf16 units
        choices.bf16_speedup.cache_clear()
    out, err = capfd.readouterr()  # the script's prints and its children's output alike
    assert code == 0, out[-3000:] + err[-3000:] + str(code)
    assert "--quick smoke test" in out, out[-3000:]
    if expect is not None:
        assert expect in out, out[-3000:]
        check_report(script, out)  # every table: the rows it must have, finite and plausible figures
    return out
