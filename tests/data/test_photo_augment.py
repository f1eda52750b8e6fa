"""Photo augmentation on whole batches: every image its own crop, flip, rotation and colour; labels stay aligned."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tudui.data.augment import center_crop_batch, resized_crop_batch, sample_boxes
from tudui.data.images import decode_image


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_image_gets_its_own_crop():
    """32 copies of one image come out as 32 different crops (one parameter draw per image, not per batch)."""
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, (3, 40, 40), dtype=np.uint8))
    x = img.expand(32, -1, -1, -1).contiguous()
    out = resized_crop_batch(x, 32, flip=False, generator=_gen())
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.uint8
    flat = out.flatten(1)
    distinct = {tuple(r.tolist()) for r in flat}
    assert len(distinct) == 32
    again = resized_crop_batch(x, 32, flip=False, generator=_gen())
    assert torch.equal(out, again)  # all randomness from the generator: reproducible (and exact on --resume)


def test_labels_stay_with_their_images():
    """Each image is one flat colour that encodes its label; after crops, flips, rotation and no jitter every output
    is still its own label's colour (inside the crop: rotation may blacken corners)."""
    labels = torch.randint(0, 6, (64,), generator=_gen(1))
    x = (labels * 40 + 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 48, 48).contiguous()
    out = resized_crop_batch(x, 32, rotate=10, generator=_gen(2))
    centre = out[:, :, 12:20, 12:20].float().mean((1, 2, 3))  # the centre is inside the image at any small angle
    assert torch.allclose(centre, (labels * 40 + 20).float(), atol=0.5)


def test_full_scale_square_crop_without_flip_is_the_image_itself():
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8, generator=_gen(3))
    out = resized_crop_batch(x, 24, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, generator=_gen())
    assert torch.equal(out, x)
    src = x.repeat(16, 1, 1, 1)
    mirrored = resized_crop_batch(src, 24, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True, generator=_gen(4))
    is_same = (mirrored == src).flatten(1).all(1)
    is_mirror = (mirrored == src.flip(3)).flatten(1).all(1)
    assert bool((is_same | is_mirror).all()) and is_same.any() and is_mirror.any()  # both occur, nothing else


def test_crop_boxes_follow_the_scale_and_ratio_ranges():
    """Each image's box is read back from ramps (channel 0 = column index, channel 1 = row index, 1 level per pixel
    of a 256-px image): its width and height in pixels give its area fraction and aspect ratio."""
    n, side, out_side = 300, 256, 32
    ramp = torch.arange(side, dtype=torch.uint8)
    x = torch.stack([ramp.view(1, -1).expand(side, side), ramp.view(-1, 1).expand(side, side),
                     torch.zeros(side, side, dtype=torch.uint8)]).expand(n, -1, -1, -1).contiguous()
    for lo, hi in [(0.08, 0.3), (0.5, 1.0)]:
        out = resized_crop_batch(x, out_side, scale=(lo, hi), generator=_gen(5)).float()
        # sampled at box/out_side spacing: the range of sampled coordinates is box * (out_side - 1) / out_side
        w = (out[:, 0].amax((1, 2)) - out[:, 0].amin((1, 2))) * out_side / (out_side - 1) / side
        h = (out[:, 1].amax((1, 2)) - out[:, 1].amin((1, 2))) * out_side / (out_side - 1) / side
        area, ratio = w * h, w / h
        assert area.min() >= lo * 0.93 and area.max() <= hi * 1.07, (lo, hi, area.min(), area.max())
        assert ratio.min() >= 0.75 * 0.93 and ratio.max() <= 4 / 3 * 1.07
        assert area.max() - area.min() > 0.6 * (hi - lo)  # spread over the range, not one value


def test_colour_jitter_changes_each_image_differently():
    x = torch.full((16, 3, 20, 20), 128, dtype=torch.uint8)
    x[:, 0] = 200
    plain = resized_crop_batch(x, 16, flip=False, generator=_gen(7))
    jit = resized_crop_batch(x, 16, flip=False, jitter=0.4, generator=_gen(7))
    assert torch.equal(plain, x[:, :, :16, :16])  # a flat image: every crop is the same colour
    means = jit.float().mean((2, 3))  # (16, 3)
    assert len({tuple(m.round().tolist()) for m in means}) == 16 and (means != plain.float().mean((2, 3))).any()


def test_center_crop_batch_matches_the_decoders_crop(tmp_path):
    """A centre crop of the cached square equals decoding with torchvision's Resize + CenterCrop geometry."""
    img = np.random.default_rng(8).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    path = tmp_path / "sq.png"
    Image.fromarray(img).save(path)
    square = torch.from_numpy(decode_image(path, 3, 30, 1.0)).permute(2, 0, 1)[None]
    assert torch.equal(center_crop_batch(square, 24)[0].permute(1, 2, 0), torch.from_numpy(img[3:27, 3:27]))
    assert torch.equal(center_crop_batch(square, 30), square)


def test_resample_matches_interpolate_when_only_scaling():
    """A full-scale crop to a smaller size is a plain bilinear resize (F.interpolate without antialiasing)."""
    x = torch.randint(0, 256, (2, 3, 36, 36), dtype=torch.uint8, generator=_gen(9))
    out = resized_crop_batch(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, generator=_gen())
    want = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False).round().clamp(0, 255)
    assert (out.float() - want).abs().max() <= 1


# --- against torchvision's resized_crop --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_squares():
    """side -> scikit-learn's two sample photos (china.jpg, flower.jpg), centre 400x400 resized to side x side:
    (2, 3, side, side) uint8, the cache's centre squares."""
    from sklearn.datasets import load_sample_image

    imgs = [torch.from_numpy(load_sample_image(f).copy()).permute(2, 0, 1) for f in ("china.jpg", "flower.jpg")]
    return lambda side: torch.stack([TF.resize(TF.center_crop(i, [400, 400]), [side, side], antialias=True)
                                     for i in imgs])


def _tv_crop(x, top, left, height, width, size, antialias=False):
    return TF.resized_crop(x, top, left, height, width, [size, size], interpolation=InterpolationMode.BILINEAR,
                           antialias=antialias).float()


def _box_crop(x, top, left, height, width, size):
    """sample_boxes on one pixel box for every image (the conversion its docstring gives), rounded like the crops."""
    side, b = x.shape[-1], x.shape[0]

    def full(v):
        return torch.full((b,), float(v))

    out = sample_boxes(x, size, full((2 * left + width) / side - 1), full((2 * top + height) / side - 1),
                       full(width / side), full(height / side))
    return out.round().clamp(0, 255)


def test_resized_crop_batch_is_torchvisions_resized_crop(photo_squares):
    """The whole 256-pixel square cropped to 224 (the cache's square; scale and ratio 1 fix the box): torchvision's
    bilinear resized_crop to 1 grey level at every pixel (float grids, rounding), each image mirrored or not.
    torchvision's default antialias=True differs by under a grey level on average: tudui resamples without an
    antialiasing filter, as the docstring says, since its crops shrink by at most 256/224."""
    x = photo_squares(256).repeat(4, 1, 1, 1)
    out = resized_crop_batch(x, 224, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True, generator=_gen(3)).float()
    want = _tv_crop(x, 0, 0, 256, 256, 224)
    plain = (out - want).abs().amax((1, 2, 3))
    mirrored = (out - TF.horizontal_flip(want)).abs().amax((1, 2, 3))
    assert torch.minimum(plain, mirrored).max() <= 1
    assert (plain <= 1).any() and (mirrored <= 1).any()  # both kinds drawn
    unflipped = plain <= 1
    assert (out[unflipped] - _tv_crop(x, 0, 0, 256, 256, 224, antialias=True)[unflipped]).abs().mean() < 1


@pytest.mark.parametrize("side, box, size", [
    (256, (5, 20, 240, 236), 224),  # shrinks, as the random crops of the cached squares do at large scales
    (64, (3, 7, 50, 56), 40),  # shrinks more, a box of another aspect
    (64, (10, 14, 40, 32), 48),  # enlarges, as small-scale crops do
])
def test_a_fixed_box_is_torchvisions_resized_crop(photo_squares, side, box, size):
    """sample_boxes (the resampling resized_crop_batch draws its boxes for) on a fixed pixel box against torchvision's
    resized_crop with the same box, bilinear, no antialiasing: 1 grey level inside a 1-pixel frame. The frame
    differs where the crop enlarges: torchvision crops first, so its outermost samples, which fall outside the box's
    outer pixel centres, repeat the box's edge pixels; tudui samples the whole image and blends in the pixels just
    outside the box (the image's own content there, or black beyond the image's edge)."""
    x = photo_squares(side)
    diff = (_box_crop(x, *box, size) - _tv_crop(x, *box, size)).abs()
    assert diff[..., 1:-1, 1:-1].max() <= 1
    if size <= min(box[2:]):  # shrinking: no sample falls outside the box, the frame agrees too
        assert diff.max() <= 1
