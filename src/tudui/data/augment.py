"""Strong training augmentation on whole batches, every image with its own random parameters.

    policy_batch   RandAugment / TrivialAugment: each image draws its own operations and magnitudes
    erase_batch    random erasing (a rectangle of noise, per image with probability p)
    mix_batch      mixup / cutmix with soft targets, a partner and a mixing weight per image

Why hand-written rather than Kornia or torchvision: Kornia 0.9's `RandAugment` draws the n operations once per
batch (only the signs vary per image), and torchvision v2's random transforms draw one set of parameters per call,
so on a batch tensor every image gets the same ops. Per-image draws are what make these policies work, and doing
them image by image through PIL is what the memory-resident path exists to avoid (many times slower:
benchmarks/README.md). Here every operation is a masked tensor op on the batch; the geometric ones share one
`affine_grid` + `grid_sample` per slot. All randomness comes from the given generator, so `--resume` is exact.

Images are (B, C, H, W) uint8 in and out (the layout every loader yields); operations run in float [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Operation names; the colour operation is left out for 1-channel images, nothing here flips the image
# (flips are `augment_batch`'s, and only where the DataSpec allows them).
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
INTENSITY = ("identity", "brightness", "contrast", "sharpness", "posterize", "solarize", "autocontrast")
COLOUR = ("color",)
MAX_MAG = {"rotate": 30.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 0.45, "translate_y": 0.45,
           "brightness": 0.9, "contrast": 0.9, "sharpness": 0.9, "color": 0.9, "posterize": 4.0, "solarize": 1.0}
SIGNED = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "contrast", "sharpness",
          "color"}


def policy_ops(channels: int) -> tuple[str, ...]:
    return GEOMETRIC + INTENSITY + (COLOUR if channels == 3 else ())


def _uniform(n: int, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """b + factor * (a - b) per image (torchvision's enhance ops): factor (N,)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _intensity(name: str, x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """One intensity operation on float images x (N, C, H, W) in [0, 1]; mag (N,) signed magnitudes."""
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + mag)
    if name == "contrast":
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), 1 + mag)
    if name == "color":
        return _blend(x, _gray(x), 1 + mag)
    if name == "sharpness":
        c = x.shape[1]
        k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(c, 1, 3, 3), groups=c)
        return _blend(x, blurred, 1 + mag)
    if name == "posterize":
        bits = (8 - mag.round()).clamp(1, 8).view(-1, 1, 1, 1)  # mag 0..4 bits removed
        step = 2.0 ** (8 - bits)
        return torch.floor(x * 255 / step) * step / 255
    if name == "solarize":
        threshold = (1 - mag).view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 1 - x, x)
    if name == "autocontrast":
        lo = x.amin((2, 3), keepdim=True)
        hi = x.amax((2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    return x  # identity


def _affine(names: list[str], x: torch.Tensor, mags: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """All geometric ops of one slot as one per-image 2x3 matrix, applied with a single grid_sample (zero fill)."""
    n = x.shape[0]
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(n, 1, 1)  # (N, 2, 3), normalised coordinates
    for name, mag, mask in zip(names, mags, masks):
        m = torch.where(mask, mag, torch.zeros_like(mag))
        t = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(n, 1, 1)
        if name == "rotate":
            a = m * math.pi / 180
            t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
        elif name == "shear_x":
            t[:, 0, 1] = m
        elif name == "shear_y":
            t[:, 1, 0] = m
        elif name == "translate_x":
            t[:, 0, 2] = 2 * m  # a fraction of the width; normalised coordinates span 2
        elif name == "translate_y":
            t[:, 1, 2] = 2 * m
        theta = torch.cat([t[:, :, :2] @ theta[:, :, :2], (t[:, :, :2] @ theta[:, :, 2:]) + t[:, :, 2:]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def policy_batch(x: torch.Tensor, policy: str, generator: torch.Generator | None = None, num_ops: int = 2,
                 magnitude: float = 9 / 30, ops: tuple[str, ...] | None = None) -> torch.Tensor:
    """RandAugment (num_ops operations at a fixed magnitude, drawn per image) or TrivialAugment (one operation at a
    uniformly random magnitude per image). Operations of one slot run in a fixed order, each on the images that
    drew it; x (B, C, H, W) uint8 -> same. `ops`: the operations drawn from (default: all of `policy_ops`)."""
    b, c = x.shape[:2]
    dev = x.device
    ops = ops or policy_ops(c)
    slots = num_ops if policy == "randaugment" else 1
    out = x.float() / 255
    for _ in range(slots):
        choice = torch.randint(0, len(ops), (b,), device=dev, generator=generator)  # (B,) an op per image
        level = torch.full((b,), magnitude, device=dev) if policy == "randaugment" else _uniform(b, dev, generator)
        sign = torch.where(_uniform(b, dev, generator) < 0.5, -1.0, 1.0)
        mags = {name: level * MAX_MAG.get(name, 0.0) * (sign if name in SIGNED else 1.0) for name in ops}
        masks = {name: choice == k for k, name in enumerate(ops)}
        geo = [n for n in GEOMETRIC if n in masks and masks[n].any()]
        if geo:
            out = _affine(geo, out, [mags[n] for n in geo], [masks[n] for n in geo])
        for name in ops:
            if name in GEOMETRIC or name == "identity" or not masks[name].any():
                continue
            idx = masks[name].nonzero().squeeze(1)
            out[idx] = _intensity(name, out[idx], mags[name][idx])
    return (out * 255).round_().clamp_(0, 255).to(torch.uint8)


def _boxes(b: int, h: int, w: int, area: torch.Tensor, aspect: torch.Tensor, generator, device) -> tuple:
    """Per-image rectangles of `area` (fraction) and `aspect` (h/w), clipped to the image: (top, left, bottom, right)."""
    bh = (area * aspect).sqrt().mul(h).round().clamp(1, h)
    bw = (area / aspect).sqrt().mul(w).round().clamp(1, w)
    top = (_uniform(b, device, generator) * (h - bh + 1)).floor()
    left = (_uniform(b, device, generator) * (w - bw + 1)).floor()
    return top, left, top + bh, left + bw


def _box_mask(top, left, bottom, right, h: int, w: int) -> torch.Tensor:
    """(B, 1, H, W) bool: inside each image's rectangle."""
    rows = torch.arange(h, device=top.device).view(1, h, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, w)
    inside = (rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1)) & \
        (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1))
    return inside[:, None]


def erase_batch(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random erasing (timm's 'pixel' mode): with probability p per image, a rectangle of 2-33% of its area and
    aspect ratio 0.3-3.3 is replaced by uniform noise. x (B, C, H, W) uint8 -> same."""
    if p <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    chosen = _uniform(b, dev, generator) < p
    area = 0.02 + _uniform(b, dev, generator) * (0.33 - 0.02)
    aspect = torch.exp(math.log(0.3) + _uniform(b, dev, generator) * (math.log(3.3) - math.log(0.3)))
    mask = _box_mask(*_boxes(b, h, w, area, aspect, generator, dev), h, w) & chosen.view(-1, 1, 1, 1)
    noise = torch.randint(0, 256, x.shape, device=dev, generator=generator, dtype=torch.uint8)
    return torch.where(mask, noise, x)


def _beta(alpha: float, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), as a ratio of two Gamma draws. torch's Gamma sampler takes no generator, so
    these come from torch's global CPU generator, which every checkpoint saves for an exact --resume."""
    g = torch.distributions.Gamma(torch.full((2, n), float(alpha)), torch.ones(2, n)).sample()
    return (g[0] / (g[0] + g[1])).to(device)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, prob: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup / CutMix with a partner and a weight per image; returns (x, soft targets (B, K) summing to one).

    x (B, C, H, W) float (normalised), y (B,) int64. Each image is mixed with probability `prob`; when both
    alphas are set, half of the mixed images use CutMix. CutMix's weight is the area actually kept.
    """
    b, _, h, w = x.shape
    dev = x.device
    # (B,) classes -> one-hot; (B, K) multi-hot targets are mixed as they are (both images' labels, weighted)
    target = y.to(x.dtype) if y.is_floating_point() else F.one_hot(y, num_classes).to(x.dtype)
    if (mixup <= 0 and cutmix <= 0) or prob <= 0:
        return x, target
    partner = torch.randperm(b, device=dev, generator=generator)
    mixed = _uniform(b, dev, generator) < prob
    use_cut = torch.zeros(b, dtype=torch.bool, device=dev)
    if cutmix > 0:
        use_cut = mixed & ((_uniform(b, dev, generator) < 0.5) if mixup > 0 else torch.ones_like(mixed))
    lam = torch.ones(b, device=dev, dtype=x.dtype)
    if mixup > 0:
        lam = torch.where(mixed & ~use_cut, _beta(mixup, b, generator, dev).to(x.dtype), lam)
    if cutmix > 0:
        cut_lam = _beta(cutmix, b, generator, dev).to(x.dtype)
        area = (1 - cut_lam).clamp(0, 1)
        top, left, bottom, right = _boxes(b, h, w, area, torch.ones_like(area), generator, dev)
        box = _box_mask(top, left, bottom, right, h, w) & use_cut.view(-1, 1, 1, 1)
        kept = 1 - box.flatten(1).float().mean(1)  # the weight of the image's own pixels, as pasted
        lam = torch.where(use_cut, kept.to(x.dtype), lam)
    lam4 = lam.view(-1, 1, 1, 1)
    blended = lam4 * x + (1 - lam4) * x[partner]
    if cutmix > 0:
        blended = torch.where(box, x[partner], torch.where(use_cut.view(-1, 1, 1, 1), x, blended))
    target = lam[:, None] * target + (1 - lam[:, None]) * target[partner]
    return blended, target


# --- photos: random-resized-crop on whole batches -----------------------------------------------------------------
def resized_crop_batch(x: torch.Tensor, size: int, scale: tuple[float, float] = (0.25, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, rotate: float = 0.0,
                       jitter: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random-resized-crop (torchvision's RandomResizedCrop), horizontal flip, small rotation and colour jitter, each
    image with its own random parameters, as one affine_grid + grid_sample for the whole batch.

    x: (B, C, L, L) uint8, L at least about `size` (the cache keeps each photo's centre square at the evaluation
    resize side, 256 for 224: the margin the crops are cut from). Returns (B, C, size, size) uint8.

    Per image: an area fraction in `scale` and an aspect ratio (log-uniform in `ratio`); torchvision's 10 tries for a
    box that fits run at once, and an image none of whose tries fit takes the whole square. The box's position is
    uniform over where it fits. `flip` mirrors half the images; `rotate` turns each by a uniform angle in
    [-rotate, rotate] degrees around the box's centre (corners beyond the image are black, as torchvision fills);
    `jitter` scales brightness, contrast and saturation by factors uniform in [1 - jitter, 1 + jitter].
    Bilinear sampling: the crop is resampled with at most L/size (1.14 at 256 -> 224) of downscaling, little enough
    that no antialiasing filter is needed.
    """
    b, c, _, _ = x.shape
    dev = x.device
    tries = 10
    area = scale[0] + _uniform(b * tries, dev, generator).view(b, tries) * (scale[1] - scale[0])
    log_r = math.log(ratio[0]) + _uniform(b * tries, dev, generator).view(b, tries) * math.log(ratio[1] / ratio[0])
    r = log_r.exp()
    w, h = (area * r).sqrt(), (area / r).sqrt()  # fractions of the side, (B, tries)
    fits = (w <= 1) & (h <= 1)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros(b, dtype=torch.long, device=dev))
    w = torch.where(fits.any(1), w.gather(1, first[:, None])[:, 0], torch.ones(b, device=dev))
    h = torch.where(fits.any(1), h.gather(1, first[:, None])[:, 0], torch.ones(b, device=dev))
    # centre in normalised coordinates [-1, 1]: the box spans 2w of the image's 2
    cx = (2 * _uniform(b, dev, generator) - 1) * (1 - w)
    cy = (2 * _uniform(b, dev, generator) - 1) * (1 - h)
    sx = w * torch.where(_uniform(b, dev, generator) < 0.5, -1.0, 1.0) if flip else w
    angle = (2 * _uniform(b, dev, generator) - 1) * math.radians(rotate) if rotate > 0 else torch.zeros(b, device=dev)
    out = sample_boxes(x, size, cx, cy, sx, h, angle) / 255
    if jitter > 0:
        def factor() -> torch.Tensor:
            return 1 + (2 * _uniform(b, dev, generator) - 1) * jitter
        out = _blend(out, torch.zeros_like(out), factor())  # brightness
        out = _blend(out, _gray(out).mean((1, 2, 3), keepdim=True).expand_as(out), factor())  # contrast
        if c == 3:
            out = _blend(out, _gray(out), factor())  # saturation
    return (out * 255).round_().clamp_(0, 255).to(torch.uint8)


def sample_boxes(x: torch.Tensor, size: int, cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor,
                 angle: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's box resampled to size x size (bilinear, black beyond the image): (B, C, size, size) float 0-255.

    Boxes in normalised coordinates, all (B,): centre (cx, cy) in [-1, 1] and half-sides (w, h) as fractions of the
    image's (w = h = 1, centre 0: the whole image; a negative w mirrors it); `angle` turns the box about its centre
    (radians). A box of `width` x `height` pixels at (`left`, `top`) of a W x H image: cx = (2 left + width) / W - 1,
    w = width / W (and the same for y).
    """
    b, c = x.shape[:2]
    angle = torch.zeros_like(cx) if angle is None else angle
    cos, sin = angle.cos(), angle.sin()
    # output (u, v) in [-1, 1]^2 -> input: centre + R(angle) @ diag(w, h) @ (u, v)
    theta = torch.stack([torch.stack([cos * w, -sin * h, cx], 1), torch.stack([sin * w, cos * h, cy], 1)], 1)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def center_crop_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size x size of (B, C, L, L) images (torchvision's CenterCrop: the corner rounds half away)."""
    side = x.shape[-1]
    if side == size:
        return x
    top = int(round((side - size) / 2.0))
    return x[..., top:top + size, top:top + size].contiguous()
