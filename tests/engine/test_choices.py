"""--amp auto and --workers auto: what they settle to, and that the run's first line says so."""
from __future__ import annotations

import json

import pytest
import torch

import tudui
from tudui.core import device as core_device
from tudui.core.config import TrainConfig
from tudui.core.device import auto_workers, cpu_bf16_flags
from tudui.data import DataSpec
from tudui.engine import choices
from tudui.models import create_model

INFO = """processor\t: 0
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_bf16_flags(INFO) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(INFO.replace(" avx512_bf16 amx_bf16", "")) == []
    assert cpu_bf16_flags("") == []


def _spec(size: int, channels: int = 3) -> DataSpec:
    return DataSpec(classes=list("abcd"), img_size=size, channels=channels, mean=[0.5] * channels,
                    std=[0.25] * channels)


@pytest.mark.parametrize("model, size, batch, flags, own, want", [
    ("fast", 28, 128, ["avx512_bf16"], None, "bf16"),  # the CPU's measured speed-up decides, not AMX alone
    ("resnet18", 64, 128, ["amx_bf16"], None, "bf16"),  # 148 M multiply-adds x 128 / 11.2 M weights = 1695 per step
    ("resnet18", 64, 128, [], None, "off"),  # no native bf16: emulated bf16 is slower than fp32
    ("resnet18", 16, 128, ["amx_bf16"], 0.71, "off"),  # 16 M x 128 / 11.2 M = 178: the model measures itself
    ("resnet18", 32, 64, ["avx512_bf16"], 1.12, "bf16"),  # 212 per weight: 1.10-1.12x on the AMD EPYC
    ("fast", 8, 64, ["amx_bf16"], 0.97, "off"),  # 0.25 M x 64 / 43 k = 373 (10 classes: 368, measured 0.97x)
    ("mobilenet_v3_small", 224, 128, ["amx_bf16"], None, "off"),  # depthwise convolutions: measured slower in bf16
    ("fast", 28, 128, ["amx_bf16"], None, "bf16"),  # 2.57 M x 128 / 47 k = 7,029 (RGB): 1 channel measured 1.66x
])
def test_amp_auto_on_a_cpu(monkeypatch, model, size, batch, flags, own, want):
    monkeypatch.setattr(choices, "cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(choices, "bf16_speedup", lambda: 1.9)  # as measured on the AMD EPYC and the Xeon
    measured = []  # only models with few multiply-adds per weight are measured themselves
    monkeypatch.setattr(choices, "model_bf16_speedup", lambda *a: measured.append(a) or own)
    cfg = TrainConfig(batch_size=batch)
    assert cfg.amp == "auto"
    note = choices.resolve_amp(cfg, create_model(model, 4, 3, size), _spec(size), torch.device("cpu"))
    assert cfg.amp == want and note.startswith(f"amp {want} (auto: ")
    assert bool(measured) == (own is not None)
    if measured:
        assert measured[0][1:] == ((3, size, size), batch, True) and f"measured {own:.2f}x fp32" in note


def test_a_model_measures_its_own_bf16_speed_and_is_left_as_it_was(monkeypatch, tmp_path):
    monkeypatch.delenv(choices.PIN_ENV, raising=False)  # measure for real
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path))
    torch.manual_seed(5)
    model = create_model("fast", 4, 3, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    speedup = choices.model_bf16_speedup(model, (3, 8, 8), 16, True)
    assert 0.01 < speedup < 100  # a ratio of two measured step times (its value is the machine's)
    after = model.state_dict()  # weights and BatchNorm statistics as they were, no gradients left, same random state
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)
    kept = json.loads((tmp_path / "bf16_speedup.json").read_text(encoding="utf-8"))
    assert len(kept) == 1 and next(iter(kept)).endswith(" 3x8x8 batch 16")
    monkeypatch.setattr(choices, "_measure_model", lambda *a: pytest.fail("measured again"))
    assert choices.model_bf16_speedup(model, (3, 8, 8), 16, True) == speedup  # kept per machine and architecture
    monkeypatch.setattr(choices, "_measure_model", lambda *a: 1.3)  # another architecture is measured on its own
    assert choices.model_bf16_speedup(create_model("fast-wide", 4, 3, 8), (3, 8, 8), 16, True) == 1.3
    assert len(json.loads((tmp_path / "bf16_speedup.json").read_text(encoding="utf-8"))) == 2


def test_a_model_that_cannot_be_stepped_on_random_inputs_keeps_fp32(tmp_path, monkeypatch):
    monkeypatch.delenv(choices.PIN_ENV, raising=False)  # measure for real
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path))

    class Picky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            raise ValueError("wants a dict")

    assert choices.model_bf16_speedup(Picky(), (3, 8, 8), 4, False) == 0.0


def test_amp_auto_keeps_fp32_where_bf16_units_measure_no_faster(monkeypatch):
    monkeypatch.setattr(choices, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(choices, "bf16_speedup", lambda: 1.02)  # bf16 units, no gain: some CPUs measure so
    cfg = TrainConfig(batch_size=128)
    note = choices.resolve_amp(cfg, create_model("fast", 4, 3, 28), _spec(28), torch.device("cpu"))
    assert cfg.amp == "off" and "1.02x fp32 on this CPU" in note


def test_bf16_speedup_is_measured_once_per_machine_and_leaves_the_seeded_state_alone(monkeypatch, tmp_path):
    monkeypatch.delenv(choices.PIN_ENV, raising=False)  # measure for real
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    choices.bf16_speedup.cache_clear()
    speedup = choices.bf16_speedup()
    assert 0.01 < speedup < 100  # a ratio of two measured step times (its value is the machine's)
    assert torch.equal(torch.get_rng_state(), before)  # the run's initial weights do not depend on the probe
    kept = json.loads((tmp_path / "bf16_speedup.json").read_text(encoding="utf-8"))
    assert list(kept.values()) == [speedup]
    # a later process reads the kept figure instead of measuring again (which could land on the other side of a
    # threshold and train the same command differently)
    choices.bf16_speedup.cache_clear()
    monkeypatch.setattr(choices, "_measure_bf16_speedup", lambda: pytest.fail("measured again"))
    assert choices.bf16_speedup() == speedup
    (tmp_path / "bf16_speedup.json").write_text("not json", encoding="utf-8")  # a damaged file is measured anew
    choices.bf16_speedup.cache_clear()
    monkeypatch.setattr(choices, "_measure_bf16_speedup", lambda: 1.5)
    assert choices.bf16_speedup() == 1.5
    choices.bf16_speedup.cache_clear()


@pytest.mark.parametrize("flags, speedup, amp, device, want", [
    (["avx512_bf16", "amx_bf16"], 1.7, "auto", "cpu", "fast-wide"),  # fast-wide in bf16 takes fast's fp32 time
    (["avx512_bf16", "amx_bf16"], 1.02, "auto", "cpu", "fast-mlp"),  # AMX measuring no faster: fast-wide costs 2.4x
    (["avx512_bf16", "amx_bf16"], 1.7, "off", "cpu", "fast-mlp"),  # fp32 asked for
    (["avx512_bf16"], 1.9, "auto", "cpu", "fast-mlp"),  # AMD EPYC: fast-wide took 11 s per epoch, fast-mlp 6.5 s
    ([], None, "auto", "cpu", "fast-mlp"),
    ([], None, "auto", "mps", "fast-mlp"),
])
def test_model_auto_follows_what_the_device_computes_fast(monkeypatch, flags, speedup, amp, device, want):
    monkeypatch.setattr(choices, "cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(choices, "bf16_speedup", lambda: speedup)
    cfg = TrainConfig(amp=amp)
    assert cfg.model == "auto"
    assert choices.resolve_model(cfg, torch.device(device)).startswith(f"model {want} (auto: ")
    assert cfg.model == want
    named = TrainConfig(model="cifar-net")
    assert choices.resolve_model(named, torch.device(device)) is None and named.model == "cifar-net"


def test_explicit_amp_is_kept_and_old_configs_still_read():
    cfg = TrainConfig(amp="bf16")
    assert choices.resolve_amp(cfg, create_model("fast", 4, 3, 28), _spec(28), torch.device("cpu")) == "amp bf16"
    assert TrainConfig(amp=True).amp == "on" and TrainConfig(amp=False).amp == "off"  # config.yaml of older runs


def test_auto_workers_is_the_cores_available_at_most_eight(monkeypatch):
    monkeypatch.setattr(core_device, "available_cores", lambda: 2)
    assert auto_workers("auto") == 2 and auto_workers(0) == 0 and auto_workers(3) == 3
    monkeypatch.setattr(core_device, "available_cores", lambda: 64)
    assert auto_workers("auto") == 8 and auto_workers("auto", processes=16) == 4
    assert TrainConfig().workers == "auto" and TrainConfig(workers="2").workers == 2
    with pytest.raises(tudui.TuduiError, match="--workers takes a number of processes or auto"):
        TrainConfig(workers="many")


def test_the_first_line_says_what_auto_chose(tmp_path, capsys, monkeypatch, fmnist_folders):
    import yaml

    monkeypatch.setattr(choices, "cpu_bf16_flags", lambda: [])
    monkeypatch.setattr(core_device, "available_cores", lambda: 2)
    tudui.train(data="digits", model="fast", epochs=1, subset=128, batch_size=64, plots=False, tensorboard=False,
                project=str(tmp_path), name="mem")
    first = capsys.readouterr().out.splitlines()[0]
    assert "amp off (auto: no native bf16 on this CPU)" in first
    assert "augment none (flips would change this data's labels" in first
    assert "worker" not in first  # nothing is read from files
    assert yaml.safe_load((tmp_path / "mem" / "config.yaml").read_text())["amp"] == "off"  # concrete, for --resume
    assert "model fast" not in first  # a named model is not an auto choice
    tudui.train(data="digits", epochs=1, subset=128, batch_size=64, plots=False, tensorboard=False,
                project=str(tmp_path), name="auto-model")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("tudui ") and "model fast-mlp (auto: CPU without AMX)" in first
    assert yaml.safe_load((tmp_path / "auto-model" / "config.yaml").read_text())["model"] == "fast-mlp"
    tudui.train(data=str(fmnist_folders), model="fast", epochs=1, subset=64, batch_size=32, cache="off", plots=False,
                tensorboard=False, project=str(tmp_path), name="files")
    first = capsys.readouterr().out.splitlines()[0]
    assert "train from files; val from files" in first and "2 DataLoader worker(s) (auto)" in first


class FakeClock:
    """A clock that only moves when a fake training step runs: step(bf16) takes the next duration of its precision."""

    def __init__(self, fp32: list[float], bf16: list[float]) -> None:  # milliseconds
        self.now, self.left = 0.0, {False: [t / 1000 for t in fp32], True: [t / 1000 for t in bf16]}
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self, bf16: bool) -> None:
        self.steps += 1
        self.now += self.left[bf16].pop(0)


def test_the_bf16_measurement_is_the_median_of_paired_rounds():
    # one warm-up round, then five rounds; in two of them the machine was busy during one step only (x10)
    fp32 = [9.0, 2.0, 20.0, 2.0, 2.0, 2.0]
    bf16 = [9.0, 1.0, 1.0, 1.0, 10.0, 1.0]
    clock = FakeClock(fp32, bf16)
    ratio = choices.median_speedup(clock.step, 1.15, rounds=5, warmup=1, clock=clock)
    assert ratio == 2.0  # ratios 2, 20, 2, 0.2, 2: the busy moments do not move the median
    assert clock.steps == 12  # far from the threshold: no more rounds
    # a slow model: a set of rounds stops once its time budget has passed (here after two rounds of 2 s)
    clock = FakeClock([2000.0] * 6, [1000.0] * 6)
    assert choices.median_speedup(clock.step, 1.15, rounds=5, warmup=1, budget_s=3.0, clock=clock) == 2.0
    assert clock.steps == 2 + 2 * 2


def test_a_bf16_measurement_near_its_threshold_is_measured_again():
    near = [1.2] * 16  # every round 1.2x: within 15% of 1.15
    clock = FakeClock([1.2] * 2 + near, [1.0] * 18)
    assert choices.median_speedup(clock.step, 1.15, rounds=5, warmup=1, clock=clock) == pytest.approx(1.2)
    assert clock.steps == 2 + 2 * 5 * (1 + choices.MORE_ROUNDS)  # two more sets of five rounds
    # the first set near the threshold by chance (1.25x), the later sets clear of it (1.6x): the median of all decides
    fp32 = [1.0, 1.25, 1.25, 1.25, 1.6, 1.6] + [1.6] * 5
    clock = FakeClock(fp32, [1.0] * 11)
    assert choices.median_speedup(clock.step, 1.15, rounds=5, warmup=1, clock=clock) == pytest.approx(1.6)
    assert clock.steps == 2 + 2 * 10  # one more set: 1.6x lies clear of 1.15, so no third


def test_a_pinned_bf16_figure_replaces_every_measurement(monkeypatch, tmp_path):
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path))
    monkeypatch.setenv(choices.PIN_ENV, "1.7")
    monkeypatch.setattr(choices, "_measure_model", lambda *a, **k: pytest.fail("measured"))
    choices.bf16_speedup.cache_clear()
    try:
        assert choices.bf16_speedup() == 1.7
        assert choices.model_bf16_speedup(create_model("fast", 4, 3, 8), (3, 8, 8), 16, True) == 1.7
        assert not (tmp_path / "bf16_speedup.json").exists()
        monkeypatch.setenv(choices.PIN_ENV, "fast")
        choices.bf16_speedup.cache_clear()
        with pytest.raises(tudui.TuduiError, match="TUDUI_BF16_SPEEDUP='fast': expected a positive"):
            choices.bf16_speedup()
    finally:
        choices.bf16_speedup.cache_clear()


def test_a_config_yaml_replays_the_auto_choices_without_measuring(tmp_path, monkeypatch, capsys):
    """A run with --model auto and --amp auto records what they chose; --config and --resume train that again even
    where the machine would now measure the opposite."""
    import yaml

    from tudui.cli import main as cli_main

    monkeypatch.setattr(choices, "cpu_bf16_flags", lambda: ["avx512_bf16", "amx_bf16"])
    monkeypatch.setattr(choices, "bf16_speedup", lambda: 1.7)  # a quiet machine: bf16 wins
    monkeypatch.setattr(choices, "model_bf16_speedup", lambda *a: 1.5)
    small = dict(data="digits", epochs=1, subset=128, batch_size=64, plots=False, tensorboard=False,
                 project=str(tmp_path))
    first = tudui.train(**small, name="auto")
    kept = yaml.safe_load((first.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert (kept["model"], kept["amp"]) == ("fast-wide", "bf16")
    assert torch.load(first.best, weights_only=True)["arch"]["name"] == "fast-wide"

    measured = []  # the same machine, now busy: every measurement would say fp32 and fast-mlp
    monkeypatch.setattr(choices, "bf16_speedup", lambda: measured.append("cpu") or 0.5)
    monkeypatch.setattr(choices, "model_bf16_speedup", lambda *a: measured.append("model") or 0.5)
    assert (choices.resolve_model(TrainConfig(), torch.device("cpu")) or "").startswith("model fast-mlp")
    measured.clear()
    capsys.readouterr()
    again = tudui.train(config_file=first.run_dir / "config.yaml", project=str(tmp_path), name="replay")
    assert cli_main(["train", "--config", str(first.run_dir / "config.yaml"), "--name", "replay-cli"]) == 0
    resumed = tudui.train(resume=str(first.run_dir), epochs=2)
    assert measured == []
    for run_dir in (again.run_dir, tmp_path / "replay-cli", resumed.run_dir):
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        assert (cfg["model"], cfg["amp"]) == ("fast-wide", "bf16"), run_dir
    assert torch.load(again.best, weights_only=True)["arch"]["name"] == "fast-wide"
    assert capsys.readouterr().out.count("amp bf16") >= 3  # each run's first line says the precision it trains in
