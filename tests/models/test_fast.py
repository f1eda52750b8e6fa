"""tudui's own networks: `fast` (and `fast-wide`) and the residual `fast-res` family."""
import pytest
import torch
import torch.nn as nn

from tudui.models import create_model
from tudui.models.fast import PoolCroppedConv


@pytest.mark.parametrize("size, cropped", [(28, 1), (27, 2), (32, 0), (9, 1)])
def test_cropped_convs_equal_same_padding_then_pool(size, cropped):
    """Skipping the row and column that MaxPool2d drops on an odd side changes nothing but the work done."""
    torch.manual_seed(0)
    model = create_model("fast", 10, 1, size).eval()
    assert sum(isinstance(m, PoolCroppedConv) for m in model.modules()) == cropped
    plain = nn.Sequential(*[nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1, bias=False)
                            if isinstance(m, PoolCroppedConv) else m for m in model]).eval()
    plain.load_state_dict(model.state_dict())  # same parameters, same names
    x = torch.randn(3, 1, size, size)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-6)


def test_cropped_conv_output_side():
    conv = PoolCroppedConv(2, 4, 3, padding=0, bias=False)
    assert conv(torch.zeros(1, 2, 7, 7)).shape == (1, 4, 6, 6)


@pytest.mark.parametrize("name, macs_m, params_k", [("fast-res", 16.3, 423), ("fast-res-wide", 64.8, 1666)])
def test_residual_nets_cost_what_their_descriptions_say(name, macs_m, params_k):
    from tudui.models.summary import summarize_model

    model = create_model(name, 10, 1, 28)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert round(summarize_model(model, (1, 28, 28)).macs / 1e6, 1) == macs_m
    assert round(sum(p.numel() for p in model.parameters()) / 1e3) == params_k
    assert create_model(name, 3, 3, 32)(torch.zeros(1, 3, 32, 32)).shape == (1, 3)  # any channels, classes, size


def test_a_residual_block_adds_its_input():
    from tudui.models.fast import Residual

    block = Residual(4).eval()
    nn.init.zeros_(block.body[-2].weight)  # the last BatchNorm's scale: the body outputs ReLU(0 + bias 0) = 0
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(block(x), x)
