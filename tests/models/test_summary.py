"""tudui summary: shapes, parameter counts and size arithmetic checked against hand-computed values."""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import tudui.api
from tudui.core.errors import TuduiError
from tudui.models import count_parameters, create_model, list_models
from tudui.models.summary import find_fitting_input, parse_input, size_arithmetic, summarize_model as summarize


def test_cifar_net_shapes_params_and_arithmetic():
    s = summarize(create_model("cifar-net", 10, 3, 32), (3, 32, 32))
    kinds = [r.kind for r in s.rows]
    assert kinds == ["Conv2d", "MaxPool2d"] * 3 + ["Flatten", "Linear", "Linear"]
    # The course's chain of sides: 32 -> conv 32 -> pool 16 -> conv 16 -> pool 8 -> conv 8 -> pool 4.
    assert [r.out_shape[-1] for r in s.rows[:6]] == [32, 16, 16, 8, 8, 4]
    assert s.rows[0].in_shape == (3, 32, 32)
    assert s.rows[6].out_shape == (1024,)  # 64 channels x 4 x 4
    # Hand-computed: conv 3*32*25+32, 32*32*25+32, 32*64*25+64; linear 1024*64+64, 64*10+10.
    assert [r.params for r in s.rows if r.params] == [2432, 25632, 51264, 65600, 650]
    assert s.params == 145_578 == count_parameters(create_model("cifar-net", 10, 3, 32))
    # Multiply-adds: each conv output value costs C_in*5*5; Linear out*in.
    assert s.rows[0].macs == 32 * 32 * 32 * 3 * 25 and s.rows[7].macs == 1024 * 64
    assert s.macs == sum(r.macs for r in s.rows)
    assert s.size_mb == pytest.approx(145_578 * 4 / 1e6)
    # padding=2 keeps the side (the course derives p = 2 from this formula).
    assert s.rows[0].arithmetic == ["H_out = W_out = floor((32 + 2*2 - 1*(5-1) - 1)/1 + 1) = 32"]
    assert s.rows[5].arithmetic == ["H_out = W_out = floor((8 + 2*0 - 1*(2-1) - 1)/2 + 1) = 4"]
    assert s.rows[6].arithmetic == []
    text = s.table()
    assert "145,578" in text and "64x4x4" in text and "1024" in text


def test_arithmetic_matches_pytorch_for_odd_settings():
    import torch

    layers = [nn.Conv2d(1, 1, (3, 5), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
              nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.AvgPool2d(2)]
    for layer in layers:
        out = layer(torch.zeros(1, 1, 13, 11)).shape[-2:]
        lines = size_arithmetic(layer, (13, 11))
        assert [int(l.rsplit("= ", 1)[1]) for l in lines] == list(out), lines
    assert "ceil(" in size_arithmetic(layers[1], (13, 11))[0]


def test_mismatch_names_layer_sizes_and_a_fitting_input():
    # The course's CIFAR-10 net with the 1024 of a 32x32 input hard-coded, fed 1x28x28: 64*3*3 = 576 features.
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10))
    with pytest.raises(TuduiError) as e:
        summarize(model, (1, 28, 28))
    msg = str(e.value)
    assert "Linear" in msg and "'7'" in msg and "1024" in msg and "576" in msg
    assert "1x32x32 fits" in msg  # sides 32..39 all give 4x4 after three halvings; 32 is nearest to 28
    assert summarize(model, (1, 32, 32)).params == count_parameters(model)


def test_channel_mismatch_suggests_channels():
    model = create_model("cifar-net", 10, 3, 32)
    with pytest.raises(TuduiError, match=r"expects 3 channels but gets 1.*3x32x32 fits"):
        summarize(model, (1, 32, 32))
    assert find_fitting_input(model, (3, 32, 32)) == (3, 32, 32)


def test_summary_leaves_the_model_untouched():
    model = create_model("fast", 10, 1, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model.train(), (1, 28, 28))
    assert model.training and all(not v.is_meta for v in model.state_dict().values())
    assert all((before[k] == v).all() for k, v in model.state_dict().items())  # BatchNorm stats unchanged


@pytest.mark.parametrize("bad", ["28", "1x28", "0x28x28", "axbxc", ""])
def test_parse_input_rejects(bad):
    with pytest.raises(TuduiError, match="CxHxW"):
        parse_input(bad)
    assert parse_input("1x28x28") == (1, 28, 28)


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_multiply_adds_are_torchs_flop_count_halved(name):
    """`tudui summary`'s multiply-adds (Conv and Linear layers) for every registered model at its smallest input
    against torch.utils.flop_counter.FlopCounterMode on the same model: a convolution or matrix product of m
    multiply-adds is 2m FLOPs there. Equal: FlopCounterMode counts no other operation of these models (it leaves out
    pooling, norms, activations and additions as tudui does), and an operation it counts that tudui's per-module
    count would miss (a functional F.linear or matmul, attention) shows up in the set of counted operations.
    Both sides on the meta device: shapes only, so even VGG-16 takes no memory or arithmetic."""
    side = next(m for m in list_models() if m.name == name).min_size
    summary, _ = tudui.api.summary(name, f"3x{side}x{side}")
    with torch.device("meta"):
        model = create_model(name, 10, 3, side).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side, device="meta"))
    counted = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert counted <= {"aten.convolution", "aten.mm", "aten.addmm", "aten.bmm"}, counted
    assert summary.macs > 0 and 2 * summary.macs == counter.get_total_flops()
