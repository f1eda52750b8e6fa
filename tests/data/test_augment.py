"""Batched augmentation: every image draws its own parameters, labels stay with their images, soft targets sum to 1."""
from __future__ import annotations

import pytest
import torch

from tudui.data.augment import erase_batch, mix_batch, policy_batch, policy_ops


def same_images(n=64, c=1, side=16):
    """n copies of one smooth image: any difference after augmentation comes from per-image parameters."""
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img = ((x + y) * 255 // (2 * side - 2)).to(torch.uint8)
    return img.expand(n, c, side, side).contiguous()


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_policies_draw_per_image(policy):
    x = same_images()
    out = policy_batch(x, policy, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    distinct = {bytes(o.numpy().tobytes()) for o in out}
    assert len(distinct) > 16  # one set of parameters per batch would give a single distinct output


def test_no_colour_op_on_one_channel_and_repeatable():
    assert "color" not in policy_ops(1) and "color" in policy_ops(3)
    x = same_images(8, 3)
    a = policy_batch(x, "randaugment", torch.Generator().manual_seed(3))
    b = policy_batch(x, "randaugment", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_erase_changes_about_p_of_the_images_each_its_own_box():
    x = torch.zeros(400, 1, 16, 16, dtype=torch.uint8)
    out = erase_batch(x, 0.5, torch.Generator().manual_seed(0))
    changed = (out != 0).flatten(1).any(1)
    assert 0.4 < changed.float().mean() < 0.6
    boxes = {tuple((out[i, 0] != 0).nonzero().amin(0).tolist()) for i in changed.nonzero().squeeze(1)[:50]}
    assert len(boxes) > 10
    assert torch.equal(erase_batch(x, 0.0), x)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_sum_to_one_and_match_the_pixels(mixup, cutmix):
    # Image i is the constant value i: a mixed pixel reveals which images and in what proportion went into it.
    n, k = 32, 32
    y = torch.arange(n)
    x = y.float().view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    xm, t = mix_batch(x, y, k, mixup, cutmix, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(t.sum(1), torch.ones(n))
    # the mean pixel of image i equals sum_j t[i, j] * j: targets and pixels describe the same mixture
    assert torch.allclose(xm.mean((1, 2, 3)), (t * torch.arange(k).float()).sum(1), atol=1e-4)
    assert (t.max(1).values < 1).sum() > n // 4  # most images were really mixed


def test_mix_prob_zero_leaves_batch_and_gives_one_hot():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    xm, t = mix_batch(x, y, 3, 0.4, 1.0, 0.0, torch.Generator())
    assert torch.equal(xm, x) and torch.equal(t.argmax(1), y) and torch.equal(t.sum(1), torch.ones(4))
