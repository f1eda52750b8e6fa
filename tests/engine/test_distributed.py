"""engine/distributed.py without a second process: sharding, the launcher command, torchrun's environment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from tudui.data import make_loader
from tudui.data.loaders import MemoryLoader
from tudui.data.split import Split
from tudui.data.spec import DataSpec
from tudui.core import device
from tudui.engine import distributed, launcher
from tudui.engine.evaluate import evaluate
from tudui.core.errors import TuduiError

SPEC = DataSpec(classes=["a", "b"], img_size=4, channels=1, mean=[0.5], std=[0.25], hflip=False)


def _memory(n: int, train: bool, rank: int, world: int, batch: int = 4) -> MemoryLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()  # pixel = index
    return MemoryLoader(images, torch.zeros(n, dtype=torch.int64), batch, train, seed=3, rank=rank, world_size=world)


def _seen(loader) -> list[int]:
    return [int(v) for x, _ in loader for v in x[:, 0, 0, 0]]


@pytest.mark.parametrize("world", [2, 3])
def test_memory_loader_train_shards_are_disjoint_equal_and_reshuffled(world):
    shards = []
    for r in range(world):
        loader = _memory(23, True, r, world)
        loader.set_epoch(1)
        shards.append(_seen(loader))
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) > 0  # same number of steps on every rank
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))  # no image on two ranks
    loader = _memory(23, True, 0, world)
    loader.set_epoch(2)
    assert _seen(loader) != shards[0]


def test_memory_loader_eval_gives_every_sample_to_exactly_one_rank():
    seen = sorted(i for r in range(2) for i in _seen(_memory(23, False, r, 2)))
    assert seen == list(range(23))


def test_file_loader_eval_has_no_padding_and_train_is_disjoint(tmp_path):
    from PIL import Image

    paths = []
    for i in range(11):  # 11 files over 2 ranks: DistributedSampler would pad to 12
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4), i * 20, dtype=np.uint8)).save(p)
        paths.append(str(p))
    split = Split(["a", "b"], np.arange(11) % 2, paths=paths)
    evals = [make_loader(split, SPEC, 4, False, torch.device("cpu"), rank=r, world_size=2) for r in range(2)]
    seen = sorted(int(v) for ld in evals for x, _ in ld for v in x[:, 0, 0, 0])
    assert seen == [i * 20 for i in range(11)]
    trains = [make_loader(split, SPEC, 2, True, torch.device("cpu"), rank=r, world_size=2) for r in range(2)]
    for ld in trains:
        ld.sampler.set_epoch(1)
    a, b = (set(ld.sampler) for ld in trains)
    assert len(a) == len(b) == 5 and not a & b


def test_launch_command_drops_nproc_and_uses_a_free_port():
    argv = ["train", "--data", "digits", "--nproc", "2", "--epochs", "1", "--nproc=3"]
    cmd = launcher.launch_command(argv, 2)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd[6:] == ["-m", "tudui", "train", "--data", "digits", "--epochs", "1"]
    with pytest.raises(TuduiError, match="at least 1"):
        launcher.launch(argv, 0)


def test_world_and_device_from_torchrun_environment(monkeypatch):
    assert device.world() == device.World() and not device.world().enabled
    for k, v in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert device.world() == device.World(3, 1, 4, 2)
    assert device.select_device("cpu") == torch.device("cpu")
    with pytest.raises(TuduiError, match="mps"):
        device.select_device("mps")
    if not torch.cuda.is_available():
        assert device.select_device("auto") == torch.device("cpu")
        with pytest.raises(TuduiError, match="not available"):
            device.select_device("cuda")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(TuduiError, match="torchrun"):
        device.world()


@pytest.fixture
def one_rank_group(tmp_path):
    """A real gloo process group of one rank, to exercise the collective code paths in-process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_collective_helpers_in_a_group(one_rank_group):
    with pytest.raises(TuduiError, match="taken"):
        distributed.on_main(lambda: (_ for _ in ()).throw(TuduiError("name taken")))
    assert distributed.on_main(lambda a: a + 1, 1) == 2
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    kept, ddp = distributed.wrap(model, torch.device("cpu"))
    assert kept is model and isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    assert not any(k.startswith("module.") for k in kept.state_dict())
    with pytest.raises(TuduiError, match="--sync-bn needs CUDA"):
        distributed.wrap(model, torch.device("cpu"), sync_bn=True)
    # A rank whose share of the split is empty contributes zeros instead of failing.
    empty = _memory(1, False, 0, 1)
    empty.targets = empty.targets[:0]
    r = evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)), empty, SPEC,
                             torch.device("cpu"), torch.nn.CrossEntropyLoss())
    assert r["n"] == 0 and r["confusion"] == [[0, 0], [0, 0]]


@pytest.mark.parametrize("how", ["torchrun", "nproc"])
def test_lr_auto_is_refused_for_several_processes_before_the_job_starts(how, tmp_path, monkeypatch, capsys):
    """`--lr auto` (a range test in one process) under torchrun, or with --nproc 2: one `error:` line, before any
    process group, data or run directory. Under torchrun this is rank 0 as torchrun starts it (its environment)."""
    from tudui import api, cli

    if how == "torchrun":
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(api, "launch", lambda *a, **k: pytest.fail("torchrun was started"))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("a process group was started"))
    argv = ["train", "--data", "digits", "--lr", "auto", "--project", str(tmp_path / "runs")]
    assert cli.main(argv + (["--nproc", "2"] if how == "nproc" else [])) == 2
    out, err = capsys.readouterr()
    assert err == ("error: --lr auto runs in one process, not in a job of 2; run `tudui lr-find` with the same "
                   "options first and pass the --lr it suggests\n"), err
    assert out == "" and not (tmp_path / "runs").exists()
