"""data/loaders.py: len() of the in-memory loader is counted without drawing the permutation, and must agree with
the batches it yields for every size, batch, rank and split; the memory-mapped loader's resident-memory bound."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tudui.data.cache import map_rows
from tudui.data.loaders import MappedLoader, MemoryLoader
from tudui.data.spec import Layout


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,batch", [(23, 4), (23, 5), (3, 4), (30, 30), (31, 10)])
def test_len_is_the_number_of_batches_yielded(train, world, n, batch):
    for rank in range(world):
        loader = MemoryLoader(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), batch,
                              train, seed=1, rank=rank, world_size=world)
        assert len(loader) == sum(1 for _ in loader), (rank, len(loader))


def test_the_memory_mapped_loader_stays_at_a_few_batches_of_resident_memory(tmp_path):
    """docs/photos.md: a training set over --memory-limit-mb trains from its cache entry a batch at a time and the
    resident memory stays at a batch or two, whatever the size of the data. An epoch over 48 MiB of cache rows in
    1 MiB batches: the entry's pages resident in this process (RssFile) grow by at most the batches in flight, and
    its whole resident set (psutil) by well under the data (what it grows by is the allocator's slack, ~10 MiB)."""
    from tests.memory import peak_rss_growth_mb, rss_file_bytes  # psutil: a declared dev dependency

    layout, n, batch = Layout(1, 128), 3072, 64  # 16 KiB rows, 48 MiB in all, 1 MiB batches
    path = tmp_path / "rows.u8"
    row_values = (np.arange(n, dtype=np.int64) % 251).astype(np.uint8)  # row i is all (i % 251): checkable
    with open(path, "wb") as f:
        for start in range(0, n, 512):
            f.write(np.repeat(row_values[start:start + 512], layout.row_bytes).tobytes())
    loader = MappedLoader(map_rows(path, n, layout), np.arange(n), batch, True, torch.device("cpu"), seed=3)

    def epoch() -> tuple[int, bool]:
        seen, right = 0, True
        for x, y in loader:  # x: (B, 1, 128, 128) uint8 out of the entry; y: the rows' indices
            seen += len(x)
            right &= bool((x == (y % 251).to(torch.uint8).view(-1, 1, 1, 1)).all())
        return seen, right

    for x, y in itertools.islice(loader, 2):  # torch's kernels for these ops paged in (library code is RssFile too)
        assert bool((x == (y % 251).to(torch.uint8).view(-1, 1, 1, 1)).all())
    loader.images.release()
    (seen, right), file_grown = peak_rss_growth_mb(epoch, rss_file_bytes)
    assert seen == n and right  # the whole epoch was read, each image from its own row
    batch_mb = batch * layout.row_bytes / 2**20
    assert file_grown <= 4 * batch_mb, f"{file_grown:.0f} MiB of the entry's pages stayed resident in an epoch"
    (seen, _), grown = peak_rss_growth_mb(epoch)
    assert seen == n and grown < 32, f"resident memory grew by {grown:.0f} MiB over an epoch of 48 MiB"


def test_a_finished_run_and_an_evaluation_leave_no_dataloader_worker_behind(tmp_path, fmnist_folders):
    """The worker processes of a run's file loaders end with the run (not at some later garbage collection, which
    waited 5 s per worker), and a loader read once lets its workers go at the end of its pass."""
    import multiprocessing
    import threading

    import tudui
    from tudui.cli import main as tudui_main

    def feeders() -> set[threading.Thread]:  # the threads that feed a worker's queue while it lives
        return {t for t in threading.enumerate() if t.name == "QueueFeederThread"}

    before = feeders()  # an earlier test in this pytest process may have left its own: this run's are what counts
    r = tudui.train(data=str(fmnist_folders), model="mnist-cnn", epochs=2, memory="off", cache="off", workers=2,
                    plots=False, tensorboard=False, project=str(tmp_path), name="w")
    assert r.val["n"] == 200  # the val/ folder, read from its files by the workers each epoch
    assert multiprocessing.active_children() == []
    # Queue.close() (torch's worker shutdown) signals each queue's feeder thread and returns; the thread ends a moment
    # later on its own, which a loaded machine can see (one CI run did). A feeder of a live worker would not end at
    # all, and the workers themselves are checked gone just above.
    for thread in feeders() - before:
        thread.join(timeout=10)
    assert not feeders() - before
    assert tudui_main(["eval", str(r.best), "--data", str(fmnist_folders / "val"), "--workers", "2", "--cache", "off",
                       "--out", str(tmp_path / "eval")]) == 0
    assert multiprocessing.active_children() == []
