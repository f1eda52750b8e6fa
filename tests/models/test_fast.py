"""tudui's default network."""
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
