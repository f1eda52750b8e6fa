"""Property-based: how every loader make_loader builds (in memory, memory-mapped cache rows, files) shards the data
over 1-5 torchrun ranks, called directly for each rank (no processes).

Each image's one pixel is its index (mod 256) and its target is its index, so a batch tells which samples it holds
and whether images and labels stayed together.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from tudui.data.cache import map_rows
from tudui.data.loaders import make_loader
from tudui.data.spec import DataSpec, Layout
from tudui.data.split import Split

N_MAX = 70
KINDS = ("memory", "mapped", "files")
PROPS = settings(max_examples=50, deadline=None)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """N_MAX one-pixel grey images, pixel i % 256: as PNG files, and as a memory-mapped cache file."""
    root = tmp_path_factory.mktemp("shards")
    pixels = (np.arange(N_MAX) % 256).astype(np.uint8).reshape(N_MAX, 1, 1, 1)  # (N, H, W, C)
    paths = []
    for i in range(N_MAX):
        paths.append(str(root / f"{i:03d}.png"))
        Image.fromarray(pixels[i, :, :, 0]).save(paths[-1])
    (root / "rows.bin").write_bytes(pixels.tobytes())
    return paths, root / "rows.bin", pixels


def loader_for(kind: str, sources, n: int, batch: int, train: bool, rank: int, world: int, seed: int):
    paths, rows, pixels = sources
    spec = DataSpec(classes=[str(i) for i in range(n)], img_size=1, channels=1, mean=[0.5], std=[0.5])
    targets = np.arange(n, dtype=np.int64)
    if kind == "memory":
        split, in_memory = Split(spec.classes, targets, images=pixels[:n].copy()), True
    elif kind == "mapped":
        split, in_memory = Split(spec.classes, targets, images=map_rows(rows, N_MAX, Layout(1, 1))[:n]), False
    else:
        split, in_memory = Split(spec.classes, targets, paths=paths[:n]), False
    return make_loader(split, spec, batch, train, torch.device("cpu"), seed=seed, rank=rank, world_size=world,
                       in_memory=in_memory)


def epoch_batches(loader, epoch: int) -> list[list[int]]:
    """The targets of each batch of `epoch`, the epoch set as the trainer sets it (trainer.image_feed)."""
    getattr(loader, "set_epoch", getattr(getattr(loader, "sampler", None), "set_epoch", lambda e: None))(epoch)
    out = []
    for x, y in loader:
        assert x.dtype == torch.uint8 and x.shape == (len(y), 1, 1, 1) and y.dtype == torch.int64
        assert torch.equal(x.flatten().long(), y % 256)  # each image arrives with its own label
        out.append(y.tolist())
    assert len(out) == len(loader)  # len() counts what iterating yields
    return out


shapes = st.tuples(st.integers(1, N_MAX), st.integers(1, 24), st.integers(1, 5))  # (samples, batch, ranks)


@PROPS
@given(kind=st.sampled_from(KINDS), shape=shapes, seed=st.integers(0, 10_000), epochs=st.integers(1, 3))
def test_training_shards_are_disjoint_equal_and_seeded(sources, kind, shape, seed, epochs):
    n, batch, world = shape
    per_rank = n // world  # the ragged end of the permutation (n % world samples) is left out of the epoch
    steps = per_rank // batch if per_rank >= batch else (1 if per_rank else 0)  # a ragged last batch is dropped
    loaders = [loader_for(kind, sources, n, batch, True, r, world, seed) for r in range(world)]
    again = [loader_for(kind, sources, n, batch, True, r, world, seed) for r in range(world)]
    for epoch in range(epochs):
        ranks = [epoch_batches(loader, epoch) for loader in loaders]
        seen = [i for batches in ranks for b in batches for i in b]
        assert len(seen) == len(set(seen)) and set(seen) <= set(range(n))  # no sample twice, across ranks
        for batches in ranks:
            # equal steps on every rank (DDP needs that), full batches, at least one step per rank's sample count
            assert len(batches) == steps, (len(batches), steps)
            assert all(len(b) == min(batch, per_rank) for b in batches)
        # the same (seed, epoch) gives the same batches on a fresh loader (a resumed run, another rank's view)
        assert [epoch_batches(loader, epoch) for loader in again] == ranks


@PROPS
@given(kind=st.sampled_from(KINDS), shape=shapes)
def test_evaluation_shards_hold_every_sample_exactly_once(sources, kind, shape):
    n, batch, world = shape
    ranks = [epoch_batches(loader_for(kind, sources, n, batch, False, r, world, 0), 0) for r in range(world)]
    seen = sorted(i for batches in ranks for b in batches for i in b)
    assert seen == list(range(n))  # nothing padded in (it would be counted twice in the summed metrics), none lost
    for r, batches in enumerate(ranks):
        assert [i for b in batches for i in b] == list(range(r, n, world))  # every world-th sample, in order
        assert all(len(b) == batch for b in batches[:-1])


@PROPS
@given(shape=shapes, seed=st.integers(0, 10_000), epoch=st.integers(0, 5))
def test_memory_mapped_rows_give_the_in_memory_batches(sources, shape, seed, epoch):
    """MappedLoader promises the MemoryLoader's batches (same shuffle, shards and ragged ends)."""
    n, batch, world = shape
    for train in (True, False):
        for r in range(world):
            a, b = (epoch_batches(loader_for(k, sources, n, batch, train, r, world, seed), epoch)
                    for k in ("memory", "mapped"))
            assert a == b
