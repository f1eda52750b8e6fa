"""The benchmark scripts' pure helpers (the scripts themselves run with --quick in test_quick.py)."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _common as C  # noqa: E402
import time_to_accuracy as tta  # noqa: E402


def test_first_time_is_the_first_epoch_at_or_above_the_accuracy():
    rows = [{"time_s": 10.0, "acc": 0.80}, {"time_s": 20.0, "acc": 0.93}, {"time_s": 30.0, "acc": 0.92},
            {"time_s": 40.0, "acc": 0.95}]
    assert tta.first_time(rows, 0.93) == 20.0
    assert tta.first_time(rows, 0.94) == 40.0
    assert tta.first_time(rows, 0.96) is None


def test_long_options_are_typed_like_yaml():
    assert tta.parse_options(["epochs=30", "label-smoothing=0.1", "amp=true", "optimizer=adamw"]) == \
        {"epochs": 30, "label_smoothing": 0.1, "amp": True, "optimizer": "adamw"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        tta.parse_options(["epochs"])


def test_clock_leaves_out_paused_time():
    clock = C.Clock()
    clock.pause()
    frozen = clock.now()
    time.sleep(0.05)
    assert clock.now() == frozen  # stopped while paused
    clock.resume()
    counted, real = clock.now(), time.perf_counter() - clock.start
    assert counted <= real - 0.05  # the 50 ms pause is left out
