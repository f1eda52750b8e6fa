"""Property-based: the stratified hold-out (data/split.stratified_split) for arbitrary labels, fractions and seeds."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from tudui.data.split import stratified_split

PROPS = settings(max_examples=100, deadline=None)

# Labels: any non-negative ints (not necessarily 0..K-1, classes may be missing), many repeats of a few values.
labels = st.lists(st.integers(0, 7) | st.integers(0, 10_000), min_size=1, max_size=300)
fractions = st.floats(0.001, 0.999, allow_nan=False, exclude_min=False)
seeds = st.integers(0, 2**32 - 1)


@PROPS
@given(labels, fractions, seeds)
def test_stratified_split_partitions_every_class_by_the_fraction(targets, fraction, seed):
    targets = np.array(targets, dtype=np.int64)
    keep, held = stratified_split(targets, fraction, seed)

    # The two parts are disjoint, cover every index once, sorted index arrays.
    assert np.intersect1d(keep, held).size == 0
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(targets)))
    assert keep.tolist() == sorted(keep.tolist()) and held.tolist() == sorted(held.tolist())

    for c in np.unique(targets):
        n = int((targets == c).sum())
        n_held = int((targets[held] == c).sum())
        # Each class's share is within one item of the fraction: the nearest whole number ...
        assert abs(n_held - n * fraction) <= 1, (c, n, n_held)
        if n == 1:
            assert n_held == 0  # a single sample trains
        else:
            # ... except that a class of 2 or more keeps at least one on each side (then it is 1 or n-1)
            assert 1 <= n_held <= n - 1, (c, n, n_held)
            if n_held not in (1, n - 1):
                assert abs(n_held - n * fraction) <= 0.5, (c, n, n_held)

    # Deterministic for a seed: the same call gives the same parts.
    again = stratified_split(targets.copy(), fraction, seed)
    assert np.array_equal(keep, again[0]) and np.array_equal(held, again[1])
