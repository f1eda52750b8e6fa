"""Class imbalance on the data side: the imbalance ratio, what `--balance auto` picks from it, and the balanced
sampler (`--balance sampler`).

The sampler draws each epoch's training images with replacement, an image of class c with probability proportional
to 1 / n_c (`--sampler-weights inverse`: every class equally often) or 1 / sqrt(n_c) (`sqrt`: the rare classes
raised, less repeated), as many draws as there are images. An epoch's draw is a pure function of (seed, epoch): the
generator is seeded as MemoryLoader seeds its shuffle, so `--resume` redraws the same epoch bit for bit, and under
torchrun every rank makes the same global draw and takes every world_size-th position of it (`rank_share`): the
ranks' shares are disjoint parts of one draw, as their shares of the shuffle are. The in-memory, memory-mapped and
DataLoader paths (data/loaders.py) and the cached-feature head training (engine/features.py) take the same draws.
"""
from __future__ import annotations

import numpy as np
import torch

# largest class / smallest class (of those with images) from which data is long-tailed: `tudui data check` warns,
# --best-by auto ranks epochs by balanced accuracy and --balance auto adjusts the logits
LONG_TAILED = 10.0
SAMPLER_WEIGHTS = {"inverse": 1.0, "sqrt": 0.5}  # --sampler-weights: the power of 1 / n_c


def imbalance_ratio(counts) -> float:
    """Images of the largest class / images of the smallest class that has any (1.0 for no data)."""
    c = np.asarray(counts)
    present = c[c > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def auto_balance(counts) -> tuple[str, str]:
    """(the mode --balance auto picks for training-set class `counts`, why). Long-tailed data gets logit-adjust:
    of the three remedies it alone repeats no image (the sampler shows the rarest class's few images again and
    again) and leaves the loss's scale alone (class weights multiply the rare classes' gradients by up to the
    ratio). On long-tailed Fashion-MNIST (ratio 100) it gained most in tudui's default run: +3.2 points of balanced
    accuracy over none (with smoothing 0.2, engine/choices.resolve_smoothing), class weights +2.1, the sampler +1.2
    (benchmarks/README.md)."""
    r = imbalance_ratio(counts)
    if r > LONG_TAILED:
        return "logit-adjust", (f"the largest class has {r:.1f}x the images of the smallest, over {LONG_TAILED:g}: "
                                "log class priors added to the logits in training")
    return "none", f"the largest class has {r:.1f}x the images of the smallest, at most {LONG_TAILED:g}"


def sample_weights(targets, num_classes: int, kind: str) -> torch.Tensor:
    """(N,) float64 drawing weight of each image: 1 / n_c ** power of its class (SAMPLER_WEIGHTS[kind])."""
    t = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    counts = torch.bincount(t, minlength=num_classes).to(torch.float64)
    per_class = counts.clamp_min(1) ** -SAMPLER_WEIGHTS[kind]
    return per_class[t]


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) int64 indices of training epoch `epoch`: a permutation (weights None), or n draws with replacement in
    proportion to `weights`; a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def rank_share(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's positions of the global `order`: every world_size-th from `rank`, the ragged end dropped so every
    rank gets as many (DDP steps together). Positions, not images: shares never overlap, and with the sampler an
    image drawn twice may train on two ranks as it would train twice in one process."""
    per_rank = len(order) // world_size
    return order[rank:per_rank * world_size:world_size]


class BalancedSampler(torch.utils.data.Sampler):
    """The DataLoader path's sampler (data/loaders.file_loader): this rank's share of epoch_order's draw."""

    def __init__(self, weights: torch.Tensor, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.weights, self.seed, self.rank, self.world_size = weights, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights) // self.world_size

    def __iter__(self):
        order = epoch_order(len(self.weights), self.seed, self.epoch, self.weights)
        return iter(rank_share(order, self.rank, self.world_size).tolist())
