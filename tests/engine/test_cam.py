"""Class-activation maps (engine/cam.py): the layer chosen for each kind of model tudui loads (its own nets,
torchvision's, timm's ViT with its tokens laid out on the patch grid, a user's file), the maps' size and meaning,
and the cascading-randomisation sanity check on a trained model."""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("pytorch_grad_cam")

from tudui.core.errors import TuduiError  # noqa: E402
from tudui.engine import cam  # noqa: E402
from tudui.models import create_model  # noqa: E402


def _net(name: str, channels: int, size: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, classes, channels, size).eval()


@pytest.mark.parametrize("name, channels, size, layer, shape", [
    ("fast", 1, 28, "11", (128, 3, 3)),           # the last stage's ReLU: 3x3, before the average pool
    ("fast", 1, 8, "8", (128, 2, 2)),             # at 8 px the last stage pools to 1x1: its 2x2 conv before that
    ("fast-mlp", 1, 28, "11", (128, 3, 3)),       # at 28 px the hidden layer's one window gives 1x1: no map
    ("fast-mlp", 1, 56, "14", (256, 5, 5)),       # at 56 px the hidden layer's ReLU on each of the 5x5 windows
    ("fast", 1, 56, "11", (128, 7, 7)),           # a head without a hidden layer: its average pool (3x3) blurs the 7x7
    ("fast-wide", 1, 56, "14", (256, 5, 5)),      # fast-mlp's head at 32-64-128 channels
    ("cifar-net", 3, 32, "5", (64, 4, 4)),        # the course's net: its last conv's pooled map
    ("resnet18", 3, 64, "layer4", (512, 2, 2)),   # torchvision: the last stage
])
def test_the_last_spatial_layer_is_chosen(name, channels, size, layer, shape):
    net = _net(name, channels, size)
    chosen = cam.find_layer(net, torch.randn(1, channels, size, size))
    assert (chosen.name, chosen.shape, chosen.reshape) == (layer, shape, None)


def test_a_vit_is_read_from_its_last_blocks_tokens_on_the_patch_grid():
    pytest.importorskip("timm")
    net = _net("timm:test_vit", 3, 64)  # patch 16: a 4x4 grid and a class token
    x = torch.randn(2, 3, 64, 64)
    chosen = cam.find_layer(net, x[:1])
    last = len(net.blocks) - 1
    # after the last block's norm1 the patch tokens reach the class token through nothing but per-token layers
    assert chosen.name == f"blocks.{last}.norm1" and chosen.shape == (17, net.embed_dim) and chosen.grid == (4, 4)
    # the reshape lays patch i at row i // 4, column i % 4 (timm's patch order), without the class token
    tokens = torch.arange(17.0)[None, :, None].expand(1, 17, 2)
    grid = chosen.reshape(tokens)
    assert grid.shape == (1, 2, 4, 4) and grid[0, 0, 1, 2] == 1 + 1 * 4 + 2
    maps = cam.class_maps(net, x, [0, 2], "gradcam", chosen)
    assert maps.shape == (2, 64, 64) and all(np.ptp(m) > 0 for m in maps)


def test_a_users_model_from_a_file(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        from torch import nn

        class Mine(nn.Module):
            def __init__(self, num_classes, in_channels=1):
                super().__init__()
                self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
                self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
                self.head = nn.Linear(16, num_classes)

            def forward(self, x):
                return self.head(self.body(self.stem(x)).mean((2, 3)))
    '''))
    net = create_model(f"{tmp_path / 'mine.py'}:Mine", 3, 1, 16).eval()
    chosen = cam.find_layer(net, torch.randn(1, 1, 16, 16))
    assert chosen.name == "body" and chosen.shape == (16, 8, 8)  # the Sequential ends after its ReLU


def test_a_named_layer_and_bad_names():
    net = _net("fast", 1, 28)
    x = torch.randn(1, 1, 28, 28)
    assert cam.choose_layer(net, x, "7").shape == (32, 7, 7)
    with pytest.raises(TuduiError, match=r"--layer 'features\.7': this model has no layer of that name"):
        cam.choose_layer(net, x, "features.7")
    with pytest.raises(TuduiError, match="no spatial map"):
        cam.choose_layer(net, x, "13")  # the classifier: (10,) per image


@pytest.mark.parametrize("method", list(cam.METHODS))
def test_every_method_gives_maps_at_the_input_size(method):
    if method in cam.INPUT_METHODS:
        pytest.importorskip("captum")
    net = _net("fast", 1, 16)
    x = torch.randn(3, 1, 16, 16)
    maps = cam.class_maps(net, x, [0, 1, 2], method, cam.find_layer(net, x[:1]))
    assert maps.shape == (3, 16, 16) and maps.dtype == np.float32 and 0 <= maps.min() and maps.max() <= 1 + 1e-6


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_many_images_go_through_in_chunks_with_the_maps_of_one_pass(method, monkeypatch):
    """Memory is that of one chunk whatever the count (occlusion's window positions included): the maps are the ones a
    single pass gives, and no forward pass holds more than batch_size images."""
    if method in cam.INPUT_METHODS:
        pytest.importorskip("captum")
    net = _net("fast-mlp", 1, 56)
    x = torch.randn(7, 1, 56, 56)
    layer = cam.find_layer(net, x[:1])
    whole = cam.class_maps(net, x, [0, 1, 2, 0, 1, 2, 0], method, layer, batch_size=8)
    seen = []
    net.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
    chunked = cam.class_maps(net, x, [0, 1, 2, 0, 1, 2, 0], method, layer, batch_size=3)
    assert np.allclose(whole, chunked, atol=1e-5) and max(seen) <= 3


def test_the_map_follows_the_evidence():
    """A net whose class-1 score is the mean of the bottom-right quarter of its input: the map for class 1 lies
    there."""
    class Corner(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)
            nn.init.ones_(self.conv.weight)

        def forward(self, x):
            m = self.conv(x)  # (B, 1, 16, 16)
            return torch.stack([m.mean((1, 2, 3)), m[:, :, 8:, 8:].mean((1, 2, 3))], 1)

    x, net = torch.rand(1, 1, 16, 16) + 0.5, Corner()
    m = cam.class_maps(net, x, [1], "layercam", cam.find_layer(net, x))[0]
    assert cam.box_share(m, (8, 8, 16, 16)) > 0.95 and cam.peak(m)[0] >= 8 and cam.peak(m)[1] >= 8


def test_occlusion_covers_a_quarter_of_the_side_moved_by_half_of_it():
    """--method occlusion (Captum's Occlusion): at 16 px the window is 4 px and moves by 2, set to the normalised
    mean (0). A class whose score is one pixel (10, 10) of an all-ones image drops only for the windows that cover
    that pixel (those starting at 8 and 10 on each axis), so the map is positive on rows and columns 8 to 13 alone,
    peaks on the 4x4 block every such window covers (10-11) and is 1 there; no layer is read."""
    class OnePixel(nn.Module):
        def forward(self, x):
            return torch.stack([x[:, 0, 10, 10], x.mean((1, 2, 3))], 1)

    m = cam.class_maps(OnePixel(), torch.ones(1, 1, 16, 16), [0], "occlusion", None)[0]
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 13, 8, 13)
    assert m[10:12, 10:12].min() == pytest.approx(1.0) and m.max() == pytest.approx(1.0)
    assert m[8, 8] < m[10, 10]  # pixel (8, 8) also lies in windows that miss (10, 10): their mean drop is lower


def test_occlusion_without_captum_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)  # import captum.attr then raises ImportError
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(TuduiError, match=r"--method occlusion needs Captum: pip install 'tudui\[explain\]'"):
        cam.class_maps(_net("fast", 1, 16), torch.randn(1, 1, 16, 16), [0], "occlusion", None)


def test_box_share_and_peak():
    m = np.zeros((4, 6), np.float32)
    m[1, 4], m[3, 0] = 3, 1
    assert cam.peak(m) == (4, 1)
    assert cam.box_share(m, (3, 0, 6, 2)) == pytest.approx(0.75)
    assert cam.box_share(m, (-10, -10, 100, 100)) == pytest.approx(1.0)
    assert cam.box_share(np.zeros((4, 4)), (0, 0, 2, 2)) == 0.0


def test_spearman_matches_scipy_and_flat_maps():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.random((5, 5)), rng.random((5, 5))
    assert cam.spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    assert cam.spearman(a, a) == pytest.approx(1.0)
    assert cam.spearman(a, np.zeros((5, 5))) == 0.0 and math.isnan(cam.spearman(np.ones(3), np.ones(3)))


def test_a_trained_models_maps_differ_from_its_randomised_copies(digits_run):
    """Adebayo et al. 2018: randomising the trained weights from the top down must change the maps; the model
    itself is left as it was."""
    from sklearn.datasets import load_digits

    from tudui.data import normalize
    from tudui.inference.formats import load_model

    loaded = load_model(digits_run.best)
    net, spec = loaded.model.eval(), loaded.spec
    digits = load_digits()
    raw = torch.from_numpy((digits.images[:8] * 255 / 16).astype(np.uint8))[:, None]  # (8, 1, 8, 8) real digits
    x = normalize(raw, spec)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    classes = net(x).argmax(1).tolist()
    layer = cam.find_layer(net, x[:1]).name
    rows = cam.sanity_check(net, x, classes, "gradcam", layer)
    names = [n for n, _ in rows]
    assert names[0] == "13" and names[-1] == "0"  # the classifier first, the first conv last
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not math.isnan(rho) and abs(rho) < 0.5 for _, rho in rows), rows
    # the trained model's own maps are not flat (a flat map would correlate with nothing) and come back the same
    same = cam.class_maps(net, x, classes, "gradcam", cam.named_layer(net, x[:1], layer))
    again = cam.class_maps(net, x, classes, "gradcam", cam.named_layer(net, x[:1], layer))
    assert np.array_equal(same, again) and sum(np.ptp(m) > 0 for m in same) >= 6
