"""Batched augmentation: every image draws its own parameters, labels stay with their images, soft targets sum to 1."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

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


# --- each policy operation against torchvision ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """scikit-learn's two sample photos (china.jpg, flower.jpg), centre 400x400 resized to 48x48: (2, 3, 48, 48) uint8."""
    from sklearn.datasets import load_sample_image

    imgs = [torch.from_numpy(load_sample_image(f).copy()).permute(2, 0, 1) for f in ("china.jpg", "flower.jpg")]
    return torch.stack([TF.resize(TF.center_crop(i, [400, 400]), [48, 48], antialias=True) for i in imgs])


# The largest magnitude of each operation in torchvision's RandAugment (its _AUGMENTATION_SPACE; the top of a
# 31-bin range), written out here rather than read from tudui. Translation: a fraction of the side; torchvision's is
# 150/331 = 0.453 (150 pixels of a 331-pixel ImageNet image), which tudui rounds to 0.45: pinned as tudui's.
TV_MAX = {"rotate": 30.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 0.45, "translate_y": 0.45, "brightness": 0.9,
          "contrast": 0.9, "sharpness": 0.9, "color": 0.9, "posterize": 4.0, "solarize": 1.0}
TV_SIGNED = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "contrast", "sharpness", "color"}
BILINEAR = InterpolationMode.BILINEAR  # tudui's geometric ops sample bilinearly (torchvision's RandAugment: nearest)


def _tv_affine(x: torch.Tensor, **kw) -> torch.Tensor:
    args = {"angle": 0.0, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0], **kw}
    return TF.affine(x, **args, interpolation=BILINEAR)


# torchvision.transforms.v2.functional's counterpart of each operation at the signed magnitude m, as torchvision's
# RandAugment calls it (transforms/v2/_auto_augment.py), on the same uint8 images. torchvision's Equalize is not in
# tudui's table. A new operation in tudui's table fails test_each_policy_op_matches_torchvision until it has a row.
REFERENCE = {
    "identity": lambda x, m: x,
    "rotate": lambda x, m: TF.rotate(x, m, interpolation=BILINEAR),
    # About the image centre. torchvision's RandAugment shears about the top-left corner (center=[0, 0], PIL's
    # convention), which moves the sheared image by up to m x side / 2: tudui's keeps the image centred, in view.
    "shear_x": lambda x, m: _tv_affine(x, shear=[math.degrees(math.atan(m)), 0.0]),
    "shear_y": lambda x, m: _tv_affine(x, shear=[0.0, math.degrees(math.atan(m))]),
    # m: a fraction of the side (torchvision's RandAugment truncates the shift to whole pixels; tudui shifts by
    # fractions of a pixel, which the bilinear reference reproduces).
    "translate_x": lambda x, m: _tv_affine(x, translate=[m * x.shape[-1], 0.0]),
    "translate_y": lambda x, m: _tv_affine(x, translate=[0.0, m * x.shape[-2]]),
    "brightness": lambda x, m: TF.adjust_brightness(x, 1 + m),
    "contrast": lambda x, m: TF.adjust_contrast(x, 1 + m),
    "color": lambda x, m: TF.adjust_saturation(x, 1 + m),
    "sharpness": lambda x, m: TF.adjust_sharpness(x, 1 + m),
    "posterize": lambda x, m: TF.posterize(x, 8 - round(m)),  # m: bits removed
    "solarize": lambda x, m: TF.solarize(x, 255 * (1 - m)),  # inverts what is at least 1 - m of white
    "autocontrast": lambda x, m: TF.autocontrast(x),
}


@pytest.mark.parametrize("name", list(dict.fromkeys(policy_ops(1) + policy_ops(3))))
def test_each_policy_op_matches_torchvision(name, fmnist, photos):
    """RandAugment's default magnitude (9 of 30) through policy_batch with a table of this one operation: every image
    is torchvision's result for one of the two signs, to 1 grey level (torchvision's uint8 results are truncated,
    its grey means floored and its grids built in its own arithmetic; tudui works in float and rounds once), and
    both signs occur. Sharpness is compared inside a 1-pixel border: torchvision's blur is a 'valid' convolution
    that leaves the outermost pixels as they were, tudui blurs them against a replicated edge."""
    assert name in REFERENCE, f"policy op {name!r} has no torchvision counterpart in REFERENCE"
    gray = torch.from_numpy(fmnist[1].images[:4].copy()).permute(0, 3, 1, 2)  # (4, 1, 28, 28) Fashion-MNIST test images
    m = 9 / 30 * TV_MAX.get(name, 0.0)
    signs = (1, -1) if name in TV_SIGNED else (1,)
    for images in (gray, photos):
        if name not in policy_ops(images.shape[1]):
            continue
        x = images.repeat(4, 1, 1, 1)  # each image four times: both signs get drawn
        out = policy_batch(x, "randaugment", torch.Generator().manual_seed(0), num_ops=1, ops=(name,))
        border = 1 if name == "sharpness" else 0
        inside = (..., slice(border, x.shape[-2] - border), slice(border, x.shape[-1] - border))
        # (signs, B): each image's largest difference from torchvision's result for each sign, in grey levels
        diff = torch.stack([(out.float() - REFERENCE[name](x, s * m).float()).abs()[inside].amax((1, 2, 3))
                            for s in signs])
        best, drawn = diff.min(0)
        assert best.max() <= 1, f"{name} ({images.shape[1]} channels): {best.tolist()} grey levels off"
        assert set(drawn.tolist()) == set(range(len(signs))), f"{name}: not every sign drawn"
