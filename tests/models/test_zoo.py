"""The torchvision architectures tudui registers against torchvision's own models with the same weights."""
from __future__ import annotations

import pytest
import torch
import torchvision

from tudui.models import create_model, list_models
from tudui.models.surgery import head_path, load_weights

ZOO = [m for m in list_models() if m.family == "torchvision"]


@pytest.fixture(autouse=True)
def one_thread():
    """Forward passes of two images of 16-32 pixels gain nothing from more threads; on a busy machine each of their
    hundreds of small operations would wait for a second one (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchvision_model(arch: str) -> torch.nn.Module:
    """torchvision's own `arch` for 10 classes, in eval mode, with seeded random weights and BatchNorm statistics.

    Built on the meta device and filled here rather than by torchvision's initialisation, which takes seconds for
    VGG's 100 M-parameter classifier and leaves BatchNorm an identity (running mean 0, variance 1, scale 1): scales
    of about 1/sqrt(fan-in) keep the activations near 1 through the depth, and every BatchNorm term matters.
    """
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None, num_classes=10)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                t.zero_()  # num_batches_tracked
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=g)
            elif t.ndim > 1:
                bound = t[0].numel() ** -0.5
                t.uniform_(-bound, bound, generator=g)
            elif name.endswith("weight"):  # norm scales
                t.uniform_(0.5, 1.5, generator=g)
            else:  # biases, running means
                t.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


def _input(side: int, channels: int = 3) -> torch.Tensor:
    """Two images: (2, channels, side, side)."""
    return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(1))


def _close(ours: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal to float32 rounding: within 1e-5 of the largest magnitude."""
    return ours.shape == want.shape and bool((ours - want).abs().max() <= 1e-5 * want.abs().max())


@pytest.mark.parametrize("info", ZOO, ids=lambda m: m.name)
def test_zoo_models_are_torchvisions_own(info):
    """tudui's model for 10 classes and 3 channels (torchvision's, head replaced) is torchvision's model built for 10
    classes: the same layers with the same settings (the printed module tree), the same state_dict names and shapes
    (a strict load), and with the same weights the same outputs, bit for bit, on the smallest input it accepts.

    Its 1-channel model given the same 3-channel state_dict (load_weights sums the first convolution's RGB weights)
    maps a grey image to what torchvision's model gives the same image as R = G = B, up to float rounding (the sum
    moves from the pixels to the weights); the head, of the same shape, is copied too."""
    tv = torchvision_model(info.name)
    with torch.device("meta"):  # no initialisation: every tensor comes from torchvision's model
        ours = create_model(info.name, 10, 3, info.min_size)
        grey_model = create_model(info.name, 10, 1, info.min_size)
    assert repr(ours) == repr(tv)
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    grey_model.to_empty(device="cpu")  # load_weights fills every tensor: nothing is left uninitialised
    assert load_weights(grey_model, tv.state_dict(), "torchvision") == []
    assert grey_model.get_submodule(head_path(grey_model)).out_features == 10
    x, grey = _input(info.min_size), _input(info.min_size, 1)
    with torch.no_grad():
        want = tv(x)
        assert want.abs().max() > 1e-3  # the weights carry a signal to the logits
        assert torch.equal(ours.eval()(x), want)
        assert _close(grey_model.eval()(grey), tv(grey.expand(-1, 3, -1, -1)))
