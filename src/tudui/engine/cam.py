"""Class-activation maps: where in an image a model's evidence for a class lies (`tudui explain`).

The methods are pytorch-grad-cam's (PyPI `grad-cam`, the `explain` extra), looked up by name in METHODS, and Captum's
occlusion (occlusion_maps), which reads no layer. What tudui adds is the choice of the layer the map is read from, for
any model it can load:

- a convolutional net (tudui's, torchvision's, timm's CNNs, a user's `file.py:Name`): the last module, in the order
  the forward pass runs them, whose output is a (B, C, H, W) map with more than one position and the input's aspect,
  and on which the class score depends (its gradient is not zero), an average pool aside (its map is the one before
  it, blurred: at 56 px `fast`'s head pools its 7x7 map to 3x3; on benchmarks/trust.py's mosaics Grad-CAM from the
  3x3 put 37.5% of its mass on the right quadrant against 45.3% from the 7x7, and 219 of its 1,000 maps were all
  zero against 3);
- a transformer (timm's ViT, DeiT, ...): the last module whose output is (B, N, D) tokens, N being a square patch
  grid plus a few prefix tokens (class, registers), D the width most token outputs share, and whose patch tokens
  the class score depends on. With a class token that is the last block's `norm1` (after it, the patch tokens
  only reach the class token through nothing but per-token layers); its tokens are reshaped to the
  (B, D, grid, grid) map the methods expect.

Maps are computed at the model's input size, one per image, each scaled to [0, 1] (the library's own scaling).
`sanity_check` is Adebayo et al. 2018's cascading randomisation: the layers' weights re-initialised from the top of
the net down, the map recomputed after each, and compared with the trained model's by Spearman rank correlation.
"""
from __future__ import annotations

import contextlib
import copy
import math
import types
from unittest import mock
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import TuduiError
from ..core.modes import CAM_METHODS, INPUT_METHODS

# --method NAME -> pytorch-grad-cam's class of that name (core/modes.py); INPUT_METHODS' are Captum's, built by
# occlusion_maps
METHODS = CAM_METHODS
MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens before a ViT's patch tokens
AVERAGE_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)  # never the layer chosen: they only blur the map before them


def _library():
    try:
        import pytorch_grad_cam
    except ImportError:
        raise TuduiError("class-activation maps need pytorch-grad-cam: pip install 'tudui[explain]' "
                         "(or pip install grad-cam)") from None
    return pytorch_grad_cam


@dataclass
class Layer:
    """The layer a map is read from: its name in `model.named_modules()`, the module, its output's shape for one
    image, and for token outputs the function that turns (B, N, D) tokens into a (B, D, g, g) map."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the map this layer gives."""
        if self.reshape is None:
            return self.shape[-2], self.shape[-1]
        g = math.isqrt(self.shape[0] - _prefix(self.shape[0]))
        return g, g


def _prefix(n: int) -> int:
    """Prefix tokens of a sequence of n tokens: the fewest p <= MAX_PREFIX_TOKENS leaving a square grid of at
    least 2x2 patches; -1 when there is none."""
    for p in range(MAX_PREFIX_TOKENS + 1):
        g = math.isqrt(max(n - p, 0))
        if g >= 2 and g * g == n - p:
            return p
    return -1


def tokens_to_map(prefix: int, grid: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, N, D) tokens -> (B, D, grid, grid): the prefix tokens dropped, the patch tokens laid out row by row
    (timm's patch order)."""
    def reshape(t: torch.Tensor) -> torch.Tensor:
        patches = t[:, prefix:, :]
        return patches.reshape(t.shape[0], grid, grid, t.shape[-1]).permute(0, 3, 1, 2)
    return reshape


def _is_map(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """(C, H, W) with more than one position and the input's aspect (a square input: H == W), at most its size."""
    if len(shape) != 3:
        return False
    _, h, w = shape
    return h * w > 1 and h * size[1] == w * size[0] and h <= size[0]


def _trace(model: nn.Module, x: torch.Tensor, score_of: Callable[[torch.Tensor], torch.Tensor]) -> list[dict]:
    """Every module's output for `x` in the order the forward pass finishes them, with the gradient of
    `score_of(logits)` with respect to it (one forward and one backward pass)."""
    seen: list[dict] = []

    def hook(name):
        def record(module, inputs, output):
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            entry = {"name": name, "module": module, "shape": tuple(output.shape[1:]), "grad": None}
            seen.append(entry)
            output.register_hook(lambda g: entry.__setitem__("grad", g.detach()))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # gradients reach every layer even with frozen weights
            score_of(model(x)).backward()
    finally:
        for h in handles:
            h.remove()
    return seen


def find_layer(model: nn.Module, x: torch.Tensor) -> Layer:
    """The layer maps are read from by default (see the module docstring), for `x`: (1, C, H, W) normalised."""
    model.eval()
    entries = _trace(model, x, lambda logits: logits.float().max(1).values.sum())
    size = (x.shape[-2], x.shape[-1])
    maps = [e for e in entries if _is_map(e["shape"], size)]
    # an average pool's map is the map before it blurred (fast's head pools 7x7 to 3x3 at 56 px): read the sharper one
    maps = [e for e in maps if not isinstance(e["module"], AVERAGE_POOLS)] or maps
    tokens = [e for e in entries if len(e["shape"]) == 2 and _prefix(e["shape"][0]) >= 0]
    if tokens:  # a transformer: its own width is the one most token outputs have
        width = Counter(e["shape"][1] for e in tokens).most_common(1)[0][0]
        tokens = [e for e in tokens if e["shape"][1] == width]
        last_map = max((entries.index(e) for e in maps), default=-1)
        if entries.index(tokens[-1]) > last_map:  # tokens come after the last spatial map: read the tokens
            for e in reversed(tokens):
                p = _prefix(e["shape"][0])
                if e["grad"] is not None and e["grad"][:, p:].abs().sum() > 0:
                    g = math.isqrt(e["shape"][0] - p)
                    return Layer(e["name"], e["module"], e["shape"], tokens_to_map(p, g))
    for e in reversed(maps):
        if e["grad"] is not None and e["grad"].abs().sum() > 0:
            return Layer(e["name"], e["module"], e["shape"])
    raise TuduiError("this model has no layer with a spatial output (a (C, H, W) map of more than one position, "
                     "or transformer tokens on a square patch grid) for a map to be read from; name one with "
                     "--layer NAME")


def named_layer(model: nn.Module, x: torch.Tensor, name: str) -> Layer:
    """The layer called `name` (as in `model.named_modules()`: 'features.7', 'blocks.5.norm1'), checked to give a
    map; a name that does not exist or gives none is one error line listing the nearest names."""
    import difflib

    modules = dict(model.named_modules())
    if name not in modules or not name:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else \
            "; leave --layer out to have it chosen, or see `tudui summary CHECKPOINT` for the layers"
        raise TuduiError(f"--layer {name!r}: this model has no layer of that name{hint}")
    model.eval()
    entries = [e for e in _trace(model, x, lambda logits: logits.float().max(1).values.sum()) if e["name"] == name]
    if not entries:
        raise TuduiError(f"--layer {name!r} is not run by this model's forward pass (or gives no tensor); "
                         "name another layer, or leave --layer out")
    e = entries[-1]
    if _is_map(e["shape"], (x.shape[-2], x.shape[-1])) or (len(e["shape"]) == 3 and e["shape"][1] * e["shape"][2] > 1):
        return Layer(name, e["module"], e["shape"])
    if len(e["shape"]) == 2 and (p := _prefix(e["shape"][0])) >= 0:
        return Layer(name, e["module"], e["shape"], tokens_to_map(p, math.isqrt(e["shape"][0] - p)))
    raise TuduiError(f"--layer {name!r} gives a {'x'.join(map(str, e['shape']))} output per image, which is no "
                     "spatial map; name a layer with a (C, H, W) output or transformer tokens, or leave --layer out")


def choose_layer(model: nn.Module, x: torch.Tensor, name: str | None = None,
                 method: str | None = None) -> Layer | None:
    """`named_layer` when a name is given, else `find_layer`; None for a `method` that reads no layer (INPUT_METHODS),
    where naming one is a TuduiError."""
    if method in INPUT_METHODS:
        if name is not None:
            raise TuduiError(f"--layer names the layer a map is read from, and --method {method} reads none (it "
                             "covers parts of the input); drop --layer, or use another --method")
        return None
    return find_layer(model, x[:1]) if name is None else named_layer(model, x[:1], name)


@contextlib.contextmanager
def _quiet_score_cam():
    """Score-CAM draws a tqdm bar per image on stderr: none while tudui computes its maps."""
    from pytorch_grad_cam import score_cam

    with mock.patch.object(score_cam, "tqdm", types.SimpleNamespace(tqdm=lambda it, **kw: it)):
        yield


def class_maps(model: nn.Module, x: torch.Tensor, classes: list[int], method: str, layer: Layer,
               batch_size: int = 32) -> np.ndarray:
    """(B, C, H, W) normalised images and a class index per image -> (B, H, W) float32 maps in [0, 1], at the
    input's size, by `method` (a METHODS name) from `layer`. The images go through in chunks of `batch_size`, so
    memory stays that of one chunk whatever B is (the methods keep every layer's output and gradient for the whole
    input at once)."""
    if method not in METHODS:
        raise TuduiError(f"--method takes one of {', '.join(METHODS)}, got {method!r}")
    if len(x) > batch_size:
        return np.concatenate([class_maps(model, x[i:i + batch_size], classes[i:i + batch_size], method, layer,
                                          batch_size) for i in range(0, len(x), batch_size)])
    if method in INPUT_METHODS:
        return occlusion_maps(model, x, classes, batch_size)
    lib = _library()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    params = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)  # the methods hook the layer's output gradient: frozen weights would give none
    try:
        with getattr(lib, METHODS[method])(model=model, target_layers=[layer.module],
                                           reshape_transform=layer.reshape) as cam, _quiet_score_cam():
            cam.batch_size = batch_size  # Score-CAM's masked images per forward pass (its default: 16)
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def occlusion_maps(model: nn.Module, x: torch.Tensor, classes: list[int], batch_size: int = 32) -> np.ndarray:
    """--method occlusion, Captum's Occlusion: (B, C, H, W) normalised images -> (B, H, W) float32 maps in [0, 1].
    A window a quarter of the shorter side (all channels), moved by half of it (7x7 positions at any size), is set
    to 0, the normalised mean; each pixel gets the mean drop of the class's logit over the windows covering it.
    Drops below 0 (evidence against the class) are cut to 0 and each map divided by its largest value; a map with no
    drop stays all zero. It reads no layer, so a head that gives each position its own weights (fast-mlp's before
    its hidden layer slid over the map) does not hide where the evidence is: on benchmarks/trust.py's mosaics 55.7%
    of its mass fell on the label's quadrant against 41.1% for Grad-CAM (benchmarks/README.md). Cost: 49 forward
    passes per image."""
    try:
        from captum.attr import Occlusion
    except ImportError:
        raise TuduiError("--method occlusion needs Captum: pip install 'tudui[explain]' (or pip install captum)") \
            from None
    c, h, w = x.shape[1:]
    window = max(1, round(min(h, w) / 4))
    stride = max(1, window // 2)
    model.eval()
    with torch.no_grad():  # each forward pass holds len(x) images per window position: at most about batch_size
        drops = Occlusion(model).attribute(x, target=[int(k) for k in classes], baselines=0.0,
                                           sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                           perturbations_per_eval=max(1, batch_size // max(1, len(x))))
    maps = drops.float().sum(1).clamp_min(0).cpu().numpy()  # (B, H, W)
    top = maps.reshape(len(maps), -1).max(1)[:, None, None] if len(maps) else np.zeros((0, 1, 1))
    return (maps / np.where(top > 0, top, 1)).astype(np.float32)


def mistake_maps(model: nn.Module, items: list, spec, method: str, device: torch.device | str = "cpu") -> list:
    """Each of the most confidently wrong images ((probability, (H, W, C) uint8, true, predicted), engine/metrics'
    TopMistakes) with its map of the class it was taken for appended: `tudui eval --cam` and `tudui train --cam`."""
    from ..data import normalize

    if not items:
        return []
    x = normalize(torch.from_numpy(np.stack([m[1] for m in items])).permute(0, 3, 1, 2).to(device), spec)
    maps = class_maps(model, x, [m[3] for m in items], method, choose_layer(model, x, method=method))
    return [tuple(m) + (c,) for m, c in zip(items, maps)]


def peak(m: np.ndarray) -> tuple[int, int]:
    """(x, y) of a map's largest value (the first, row by row, on a tie)."""
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(x), int(y)


def box_share(m: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """The share of a map's mass inside `box` = (x0, y0, x1, y1) in the map's pixels (x1, y1 exclusive, clipped to
    the map); 0 for an all-zero map."""
    h, w = m.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
    y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    total = float(m.sum())
    return float(m[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0


def region_of(size: tuple[int, int], region: tuple[float, float, float, float],
              shown: tuple[int, int] = (224, 1024)) -> tuple[tuple[int, int], float]:
    """((width, height), scale) a map is drawn at over `region` (x0, y0, x1, y1: the part of an image of `size`
    the model saw): the region scaled so its longer side is between shown[0] and shown[1] pixels."""
    rw, rh = region[2] - region[0], region[3] - region[1]
    longest = max(rw, rh)
    scale = min(shown[1], max(shown[0], longest)) / longest
    return (max(1, round(rw * scale)), max(1, round(rh * scale))), scale


def resample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) map resized to size = (width, height), bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return out[0, 0].clamp_(min=0).numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (ties get their mean rank). A flat map ranks nothing: 0 beside
    a map that is not flat, NaN when both are flat."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan if np.ptp(a) == np.ptp(b) else 0.0
    return float(spearmanr(a, b).statistic)


def _own_parameter_modules(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Modules holding parameters of their own, from the output back to the input (the reverse of the order the
    forward pass runs them; modules it does not run come last)."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
               for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    ran = list(dict.fromkeys(reversed(order)))
    rest = [n for n, m in model.named_modules() if n not in ran and any(True for _ in m.parameters(recurse=False))]
    return [(n, modules[n]) for n in ran + rest]


def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise one module's own weights at random: normal with the spread of PyTorch's default initialisation
    (He-uniform's standard deviation for weights of two or more dimensions), normalisation layers' scales and
    shifts drawn around 1 and 0, their running statistics reset."""
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) * (1 / math.sqrt(fan_in)))
            elif name == "weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.reset_running_stats()


def sanity_check(model: nn.Module, x: torch.Tensor, classes: list[int], method: str, layer_name: str | None,
                 seed: int = 0) -> list[tuple[str, float]]:
    """Cascading randomisation (Adebayo et al. 2018) on a copy of `model`: for each module with weights, from the
    output down, its weights randomised (those above it stay randomised) and the maps of `x` for `classes`
    recomputed from the layer named `layer_name`; returns (module name, mean Spearman correlation with the
    trained model's maps over the images). A map that means something changes as its layers lose their training:
    correlations near 1 all the way down say the map shows the input, not what the model learnt."""
    def layer_of(net: nn.Module) -> Layer | None:  # an INPUT_METHODS map reads no layer (layer_name None)
        return named_layer(net, x[:1], layer_name) if layer_name is not None else None

    original = class_maps(model, x, classes, method, layer_of(model))
    net = copy.deepcopy(model).cpu().eval()
    x = x.cpu()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for name, module in _own_parameter_modules(net, x):
        randomize(module, generator)
        maps = class_maps(net, x, classes, method, layer_of(net))
        rhos = [spearman(a, b) for a, b in zip(original, maps)]
        finite = [r for r in rhos if not math.isnan(r)]
        out.append((name, float(np.mean(finite)) if finite else math.nan))
    return out


def read_from(layer: str | None) -> str:
    """Where a map comes from, in words: 'from layer NAME', or 'of the input' (None: INPUT_METHODS read no layer)."""
    return "of the input" if layer is None else f"from layer {layer}"


@dataclass
class Explanation:
    """One image's map: what it explains (class, its probability), where the map peaks and how much of it lies in
    the box asked about, in the pixels of the image as given; the PNG drawn. `error`: why the image was not read."""

    source: str
    class_name: str | None = None
    probability: float | None = None
    peak: tuple[int, int] | None = None  # (x, y)
    box_share: float | None = None
    png: str | None = None
    map: np.ndarray | None = None  # (H, W) in [0, 1] at the model's input size
    error: str | None = None

    def to_dict(self) -> dict:
        out = {"source": self.source, "error": self.error, "class": self.class_name, "probability": self.probability,
               "peak": list(self.peak) if self.peak else None, "png": self.png}
        return out | ({"box_share": self.box_share} if self.box_share is not None else {})


@dataclass
class Explained:
    """What `tudui.explain` returns: a map per image, the layer and method they came from, the grid drawn, and
    with sanity=True the cascading-randomisation correlations ((layer randomised down to, mean Spearman))."""

    images: list[Explanation]
    method: str
    layer: str | None  # None: a map of the input itself (INPUT_METHODS)
    out: str
    grid: str | None = None
    sanity: list[tuple[str, float]] | None = None

    @property
    def origin(self) -> str:
        """'from layer NAME', or 'of the input' (read_from)."""
        return read_from(self.layer)

    def to_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer, "grid": self.grid,
                "images": [e.to_dict() for e in self.images],
                **({"sanity": [{"randomised_down_to": n, "spearman": r} for n, r in self.sanity]}
                   if self.sanity is not None else {})}
