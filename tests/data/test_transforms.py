"""Batched augmentation and normalisation match torchvision's per-image semantics."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from tudui.data import DataSpec, augment_batch, eval_transforms, model_logits, normalize
from tudui.core.errors import TuduiError


def test_normalize_matches_totensor_normalize():
    spec = DataSpec(["a", "b"], 6, 3, [0.2, 0.4, 0.6], [0.1, 0.2, 0.3])
    arr = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    ref = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])(
        Image.fromarray(arr))
    ours = normalize(torch.from_numpy(arr).permute(2, 0, 1)[None], spec)[0]
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(eval_transforms(spec)(Image.fromarray(arr)), ref, atol=1e-6)


def test_normalize_keeps_each_specs_own_constants():
    """The constants are made once per (mean, std, device): two specs in turn must not share them."""
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    a, b = DataSpec(["a"], 2, 1, [0.5], [0.25]), DataSpec(["a"], 2, 1, [0.0], [1.0])
    for _ in range(2):
        assert torch.allclose(normalize(x, a), torch.full((1, 1, 2, 2), 2.0))
        assert torch.allclose(normalize(x, b), torch.ones(1, 1, 2, 2))


def test_augment_is_translation_with_zero_fill():
    x = torch.arange(1, 1 + 2 * 8 * 8, dtype=torch.int64).remainder(250).add(1).to(torch.uint8).view(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        y = augment_batch(x, pad=2, flip=False, generator=g)
        assert y.shape == x.shape and y.dtype == torch.uint8
        for b in range(2):
            # find the shift that explains y: every non-zero pixel is the source pixel shifted
            ok = False
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    ref = torch.zeros_like(x[b, 0])
                    src = x[b, 0]
                    ys, xs = slice(max(0, dy), 8 + min(0, dy)), slice(max(0, dx), 8 + min(0, dx))
                    yd, xd = slice(max(0, -dy), 8 + min(0, -dy)), slice(max(0, -dx), 8 + min(0, -dx))
                    ref[yd, xd] = src[ys, xs]
                    ok |= torch.equal(ref, y[b, 0])
            assert ok


def test_flip_and_identity():
    x = torch.randint(0, 255, (64, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(augment_batch(x, 0, False), x)
    y = augment_batch(x, 0, True, torch.Generator().manual_seed(1))
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(64)]
    same = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same)) and 10 < sum(flipped) < 54


def test_flip_tta_averages_each_image_with_its_mirror():
    spec = DataSpec(classes=["a", "b"], img_size=4, channels=1, mean=[0.0], std=[1.0], hflip=True, tta=True)
    calls = []

    def model(x):  # "logits": the first two pixels of the top row
        calls.append(len(x))
        return x[:, 0, 0, :2].clone()

    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    mirrored = x[:, 0, 0, [3, 2]]  # the first two pixels of the mirrored top row
    assert torch.equal(model_logits(model, x, spec), (x[:, 0, 0, :2] + mirrored) / 2)
    assert calls == [2, 2]
    for off in (dataclasses.replace(spec, tta=False), dataclasses.replace(spec, hflip=False)):
        assert torch.equal(model_logits(model, x, off), x[:, 0, 0, :2])  # one plain pass


def test_spec_round_trip_keeps_tta_and_old_specs_load():
    spec = DataSpec(classes=["a"], img_size=4, channels=1, mean=[0.5], std=[0.5], tta=True)
    assert DataSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "tta"}  # written before flip TTA existed
    assert DataSpec.from_dict(old).tta is False


def test_with_tta_overrides_and_refuses_where_flips_change_the_label():
    spec = DataSpec(classes=["a"], img_size=4, channels=1, mean=[0.5], std=[0.5], hflip=True, tta=True)
    assert spec.with_tta(None) is spec and spec.flip_tta
    assert spec.with_tta(False).flip_tta is False
    digits = dataclasses.replace(spec, hflip=False, tta=False)
    assert digits.with_tta(False).flip_tta is False
    with pytest.raises(TuduiError, match="--no-hflip"):
        digits.with_tta(True)


def test_eval_transforms_print_what_the_decode_step_does():
    """print(eval_transforms(spec)) says the size, channels and crop of the decode step (not an object address)."""
    grey = repr(eval_transforms(DataSpec(["a", "b"], 28, 1, [0.5], [0.5])))
    assert "Decode(any image -> 1x28x28 uint8: grey, squashed to 28x28)" in grey and " at 0x" not in grey
    photo = repr(eval_transforms(DataSpec(["a", "b"], 224, 3, [0.5] * 3, [0.5] * 3, crop_pct=0.875)))
    assert "3x224x224 uint8: RGB, short side resized to 256, centre crop 224x224 (crop_pct 0.875)" in photo
