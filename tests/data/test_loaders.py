"""data/loaders.py: len() of the in-memory loader is counted without drawing the permutation, and must agree with
the batches it yields for every size, batch, rank and split."""
from __future__ import annotations

import pytest
import torch

from tudui.data.loaders import MemoryLoader


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,batch", [(23, 4), (23, 5), (3, 4), (30, 30), (31, 10)])
def test_len_is_the_number_of_batches_yielded(train, world, n, batch):
    for rank in range(world):
        loader = MemoryLoader(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), batch,
                              train, seed=1, rank=rank, world_size=world)
        assert len(loader) == sum(1 for _ in loader), (rank, len(loader))
