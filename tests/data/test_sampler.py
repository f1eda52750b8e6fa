"""--balance sampler (data/sampler.py): class frequencies of the draws, one draw shared by every loader path and by
the ranks of a torchrun job, each rank a disjoint share; the imbalance ratio and what --balance auto picks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tudui.data import make_loader
from tudui.data.loaders import MappedLoader, MemoryLoader
from tudui.data.sampler import (BalancedSampler, auto_balance, epoch_order, imbalance_ratio, rank_share,
                                sample_weights)
from tudui.data.spec import DataSpec
from tudui.data.split import Split

COUNTS = [900, 300, 90, 9]  # a long tail: 100x from the largest class to the smallest
SPEC = DataSpec(classes=["a", "b", "c", "d"], img_size=4, channels=1, mean=[0.5], std=[0.25], hflip=False)


def _targets(counts=COUNTS) -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))


@pytest.mark.parametrize("kind, power", [("inverse", 1.0), ("sqrt", 0.5)])
def test_the_draws_follow_the_class_weights(kind, power):
    """inverse: every class drawn about equally often; sqrt: in proportion to the square root of its images. Over
    ten epochs (13,000 draws) each class's share is within 1.5 points of the expected one (the binomial standard
    deviation is under 0.4 points), where plain shuffling gives the smallest class 0.7%."""
    targets = _targets()
    w = sample_weights(targets, 4, kind)
    drawn = torch.cat([epoch_order(len(targets), 5, e, w) for e in range(10)])
    share = np.bincount(targets[drawn.numpy()], minlength=4) / len(drawn)
    expected = np.array(COUNTS, dtype=float) ** (1 - power)
    assert share == pytest.approx(expected / expected.sum(), abs=0.015)
    assert len(drawn) == 10 * len(targets)  # an epoch is as long as without the sampler


def test_an_epochs_draw_is_a_pure_function_of_seed_and_epoch():
    """The same (seed, epoch) gives the same draw whatever was drawn before (what --resume relies on); another epoch
    or seed another draw; without weights it is MemoryLoader's permutation as it always was."""
    w = sample_weights(_targets(), 4, "inverse")
    torch.manual_seed(123)  # the global generator plays no part
    first = epoch_order(len(w), 1, 4, w)
    for e in range(4):
        epoch_order(len(w), 1, e, w)
    torch.manual_seed(99)
    assert torch.equal(epoch_order(len(w), 1, 4, w), first)
    assert not torch.equal(epoch_order(len(w), 1, 5, w), first)
    assert not torch.equal(epoch_order(len(w), 2, 4, w), first)
    g = torch.Generator().manual_seed(1 * 100_003 + 4)
    assert torch.equal(epoch_order(len(w), 1, 4), torch.randperm(len(w), generator=g))


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_takes_a_disjoint_share_of_one_global_draw(world):
    """rank_share, as every loader path calls it: the ranks' positions of the one draw never overlap, all ranks get
    as many, and together they are the draw (less the ragged end), each rank's in the draw's order."""
    order = epoch_order(1299, 0, 2, sample_weights(_targets(), 4, "inverse"))
    positions = torch.arange(len(order))
    shares = [rank_share(positions, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    taken = torch.cat(shares)
    assert len(set(taken.tolist())) == len(taken) == len(order) // world * world
    for r, s in enumerate(shares):
        assert torch.equal(rank_share(order, r, world), order[s])
        sampler = BalancedSampler(sample_weights(_targets(), 4, "inverse"), seed=0, rank=r, world_size=world)
        sampler.set_epoch(2)
        assert list(sampler) == order[s].tolist()


def _folder(tmp_path, targets) -> Split:
    """Class folders of 4x4 PNGs whose pixel is the image's index (so a batch names the images drawn)."""
    paths = []
    for i, t in enumerate(targets):
        p = tmp_path / str(t) / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(p)
        paths.append(str(p))
    return Split(SPEC.classes, np.asarray(targets, dtype=np.int64), paths=paths, origin=str(tmp_path))


@pytest.mark.parametrize("world", [1, 2])
def test_memory_mapped_and_dataloader_paths_draw_the_same_images(tmp_path, world):
    """The in-memory loader, the memory-mapped one and the DataLoader of files give every rank the same images in
    the same order for an epoch, rare classes drawn far more often than their share of the data."""
    targets = _targets([120, 40, 12, 4])
    split = _folder(tmp_path, targets)
    images = np.arange(len(targets), dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2)  # (N, 4, 4, 1)
    w = sample_weights(targets, 4, "inverse")
    for rank in range(world):
        memory = MemoryLoader(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(targets), 8, True,
                              seed=7, rank=rank, world_size=world, weights=w)
        mapped = MappedLoader(images, targets, 8, True, torch.device("cpu"), seed=7, rank=rank, world_size=world,
                              weights=w)
        files = make_loader(split, SPEC, 8, True, torch.device("cpu"), seed=7, rank=rank, world_size=world,
                            sampler_weights="inverse")
        seen = []
        for loader in (memory, mapped, files):
            getattr(loader, "set_epoch", getattr(getattr(loader, "sampler", None), "set_epoch", None))(3)
            batches = list(loader)
            seen.append(([int(v) for x, _ in batches for v in x[:, 0, 0, 0]], [int(v) for _, y in batches for v in y]))
        assert seen[0] == seen[1] == seen[2]
        index, labels = seen[0]
        assert labels == targets[index].tolist()
        assert labels.count(3) > 3 * 4 / len(targets) * len(labels)  # the rarest class: over 3x its share


def test_the_imbalance_ratio_and_what_auto_picks():
    assert imbalance_ratio([900, 300, 0, 9]) == 100.0  # a class without images is not the smallest
    assert imbalance_ratio([50, 50]) == 1.0 and imbalance_ratio([]) == 1.0
    mode, why = auto_balance(COUNTS)
    assert mode == "logit-adjust" and "100.0x" in why
    assert auto_balance([100, 10])[0] == "none"  # 10x is not over 10
    assert auto_balance([101, 10])[0] == "logit-adjust"
