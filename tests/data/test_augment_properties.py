"""Property-based: the rectangles of random erasing, CutMix and random-resized-crop (data/augment.py) for arbitrary
image sizes, batch sizes and ranges: inside the image, of the drawn area and aspect, and CutMix's weight equal to the
area it really pasted."""
from __future__ import annotations

import math
import types
from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from tudui.data import augment

PROPS = settings(max_examples=40, deadline=None)

sides = st.integers(1, 48)
batches = st.integers(1, 12)
seeds = st.integers(0, 2**31 - 1)


def spy(target, name: str):
    """Patch `target.name` with a wrapper that records each call's (args, result); returns the list of calls."""
    calls, real = [], getattr(target, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, out))
        return out
    return calls, mock.patch.object(target, name, wrapper)


@PROPS
@given(b=batches, c=st.sampled_from([1, 3]), h=sides, w=sides, seed=seeds)
def test_erase_boxes_lie_inside_and_have_the_drawn_area_and_aspect(b, c, h, w, seed):
    x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    calls, patch = spy(augment, "_boxes")
    with patch:
        out = augment.erase_batch(x, 1.0, torch.Generator().manual_seed(seed))
    [(args, (top, left, bottom, right))] = calls
    area, aspect = args[3], args[4]
    # the configured ranges: 2-33% of the image, aspect (h/w) 0.3-3.3
    assert bool(((area >= 0.02) & (area <= 0.33)).all())
    assert bool(((aspect >= 0.3 - 1e-6) & (aspect <= 3.3 + 1e-6)).all())
    bh, bw = bottom - top, right - left
    assert bool(((top >= 0) & (left >= 0) & (bottom <= h) & (right <= w) & (bh >= 1) & (bw >= 1)).all())  # inside
    # the drawn height and width, to the nearest pixel, unless that is less than one pixel or more than the image
    want_h, want_w = (area * aspect).sqrt() * h, (area / aspect).sqrt() * w
    assert bool(((bh - want_h).abs() <= 0.5 + 1e-4).logical_or(bh == 1).logical_or(bh == h).all())
    assert bool(((bw - want_w).abs() <= 0.5 + 1e-4).logical_or(bw == 1).logical_or(bw == w).all())
    # with p = 1 each image is erased inside its box and nowhere else
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1)) &
              (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1)))[:, None].expand_as(x)
    assert torch.equal(out[~inside], x[~inside])


@PROPS
@given(b=batches, h=sides, w=sides, mixup=st.sampled_from([0.0, 0.2, 1.0]), cutmix=st.floats(0.1, 2.0), seed=seeds)
def test_cutmix_weight_is_the_pasted_area_and_mixup_the_blend(b, h, w, mixup, cutmix, seed):
    # Image i is the constant i + 1, label i of b classes: each output pixel tells which images made it.
    y = torch.arange(b)
    x = (y.double() + 1).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    with torch.random.fork_rng():  # the Beta draws come from torch's global generator: seeded here, restored after
        torch.manual_seed(seed)
        out, t = augment.mix_batch(x, y, b, mixup, cutmix, 1.0, torch.Generator().manual_seed(seed))
    assert torch.allclose(t.sum(1), torch.ones(b, dtype=t.dtype))
    for i in range(b):
        own = t[i, i].item()
        partners = [j for j in range(b) if j != i and t[i, j] > 0]
        assert len(partners) <= 1
        if not partners:  # mixed with itself (or a mixup weight of 1): the image unchanged, its own label
            assert torch.allclose(out[i], x[i]) and own == 1.0
            continue
        j = partners[0]
        pasted = out[i] == j + 1
        if bool(((out[i] == i + 1) | pasted).all()) and bool(pasted.any()) and not math.isclose(own, 1.0):
            # CutMix: a rectangle of the partner, and the weight is exactly the fraction not pasted
            assert math.isclose(own, 1 - pasted[0].double().mean().item(), rel_tol=0, abs_tol=1e-6), (own, i, j)
            rows, cols = pasted[0].any(1).nonzero().squeeze(1), pasted[0].any(0).nonzero().squeeze(1)
            assert bool(pasted[0][rows.min():rows.max() + 1, cols.min():cols.max() + 1].all())  # one rectangle
            assert torch.equal(pasted[0], pasted[1])  # the same box in every channel
        else:
            # mixup: every pixel own * (i + 1) + (1 - own) * (j + 1)
            assert mixup > 0
            assert torch.allclose(out[i], torch.full_like(out[i], own * (i + 1) + (1 - own) * (j + 1)), atol=1e-5)
        assert math.isclose(t[i, j].item(), 1 - own, abs_tol=1e-6)


# torch.nn.functional as augment sees it, in a namespace of its own: a spy on its affine_grid leaves torch's as it is
FUNCTIONAL = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
ranges = st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted)
ratios = st.tuples(st.floats(0.2, 5.0), st.floats(0.2, 5.0)).map(sorted)


@PROPS
@given(b=batches, side=st.integers(1, 32), size=st.integers(1, 16), scale=ranges, ratio=ratios, flip=st.booleans(),
       rotate=st.sampled_from([0.0, 15.0]), seed=seeds)
def test_resized_crop_boxes_lie_inside_with_area_and_ratio_in_range(b, side, size, scale, ratio, flip, rotate, seed):
    """The box of each image is read from the affine matrix resized_crop_batch gives affine_grid: in normalised
    coordinates the output square maps to centre (cx, cy) + R(angle) @ diag(+-w, h), w and h fractions of the side."""
    x = torch.zeros(b, 3, side, side, dtype=torch.uint8)
    calls, patch = spy(FUNCTIONAL, "affine_grid")
    with patch, mock.patch.object(augment, "F", FUNCTIONAL):
        out = augment.resized_crop_batch(x, size, scale=tuple(scale), ratio=tuple(ratio), flip=flip, rotate=rotate,
                                         generator=torch.Generator().manual_seed(seed))
    assert out.shape == (b, 3, size, size) and out.dtype == torch.uint8
    [((theta, shape), _)] = calls
    theta = theta.double()
    w = theta[:, :, 0].norm(dim=1)  # columns of R @ diag(sx, h): lengths |sx| = w and h
    h = theta[:, :, 1].norm(dim=1)
    cx, cy = theta[:, 0, 2], theta[:, 1, 2]
    eps = 1e-5
    assert bool(((w > 0) & (w <= 1 + eps) & (h > 0) & (h <= 1 + eps)).all())
    # the box's centre keeps the (unrotated) box inside the image
    assert bool(((cx.abs() <= 1 - w + eps) & (cy.abs() <= 1 - h + eps)).all())
    whole = ((w - 1).abs() < eps) & ((h - 1).abs() < eps)  # no try fitted: the whole square
    area, r = w * h, w / h
    in_range = (area >= scale[0] * (1 - eps)) & (area <= scale[1] * (1 + eps)) & \
        (r >= ratio[0] * (1 - eps)) & (r <= ratio[1] * (1 + eps))
    assert bool((in_range | whole).all()), (area, r)
    if rotate == 0:
        assert bool((theta[:, 0, 1].abs() < eps).all() & (theta[:, 1, 0].abs() < eps).all())
        if not flip:
            assert bool((theta[:, 0, 0] > 0).all())
