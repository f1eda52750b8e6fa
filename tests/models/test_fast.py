"""tudui's own networks: `fast` (and `fast-mlp`, `fast-wide`) and the residual `fast-res` family."""
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


@pytest.mark.parametrize("name, macs_m, params_k", [("fast", 2.35, 53), ("fast-mlp", 2.64, 340),
                                                     ("fast-wide", 6.79, 391),
                                                     ("fast-res", 16.3, 423), ("fast-res-wide", 64.8, 1666)])
def test_nets_cost_what_their_descriptions_say(name, macs_m, params_k):
    from tudui.models.summary import summarize_model

    model = create_model(name, 10, 1, 28)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert round(summarize_model(model, (1, 28, 28)).macs / 1e6, 2 if macs_m < 10 else 1) == macs_m
    assert round(sum(p.numel() for p in model.parameters()) / 1e3) == params_k
    assert create_model(name, 3, 3, 32)(torch.zeros(1, 3, 32, 32)).shape == (1, 3)  # any channels, classes, size


def test_a_residual_block_adds_its_input():
    from tudui.models.fast import Residual

    block = Residual(4).eval()
    nn.init.zeros_(block.body[-2].weight)  # the last BatchNorm's scale: the body outputs ReLU(0 + bias 0) = 0
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_the_hidden_layer_sits_before_the_classifier_the_head_tools_use():
    """fast-mlp's last nn.Linear is still the classifier: --freeze-backbone trains it on the hidden layer's output
    and a new class count replaces it alone."""
    from tudui.models.surgery import head_path, replace_head

    model = create_model("fast-mlp", 10, 1, 28)
    last = model.get_submodule(head_path(model))
    assert (last.in_features, last.out_features) == (256, 10)
    assert isinstance(model[-3], nn.ReLU) and isinstance(model[-4], nn.BatchNorm1d)
    replace_head(model, 4)
    assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    assert create_model("fast-mlp", 3, 3, 8, hidden=32)(torch.zeros(2, 3, 8, 8)).shape == (2, 3)


def test_the_hidden_layer_trains_on_a_batch_of_one():
    """nn.BatchNorm1d refuses one value per channel in training; --batch-size 1 must still train fast-mlp."""
    from tudui.models.fast import HiddenBatchNorm

    torch.manual_seed(0)
    norm = HiddenBatchNorm(4)
    norm.running_mean.fill_(1.0)
    norm.running_var.fill_(4.0)
    x = torch.randn(1, 4)
    assert torch.allclose(norm.train()(x), (x - 1.0) / (4.0 + norm.eps) ** 0.5)
    assert norm.running_mean.eq(1.0).all()  # a one-image batch leaves the statistics alone
    assert torch.allclose(norm(x[..., None, None]), norm(x)[..., None, None])  # the one window of a 28-px image
    batch = torch.randn(8, 4)
    assert torch.allclose(norm(batch), nn.BatchNorm1d(4).train()(batch), atol=1e-6)  # otherwise BatchNorm1d
    maps = torch.randn(2, 4, 3, 3)
    assert torch.allclose(norm(maps), nn.BatchNorm2d(4).train()(maps), atol=1e-6)  # and BatchNorm2d on windows
    for size in (28, 56):
        model = create_model("fast-mlp", 3, 1, size).train()
        model(torch.randn(1, 1, size, size)).sum().backward()
        assert model[-1].weight.grad is not None


def test_at_28_px_the_slid_hidden_layer_is_the_flattened_maps_linear():
    """On a 3x3 map the hidden layer has one window: the same computation as the head before it slid (the map
    flattened into a Linear), with the same weights, initial ones included."""
    torch.manual_seed(0)
    slid = create_model("fast-mlp", 4, 1, 28).eval()
    torch.manual_seed(0)
    pooled = create_model("fast-mlp", 4, 1, 28, pooled_hidden=True).eval()
    assert torch.equal(slid[12].weight, pooled[13].weight)  # initialised alike: a run trains as it did
    for m in pooled.modules():  # statistics that are not the initial ones, so the BN is checked too
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    state = pooled.state_dict()
    slid.load_state_dict({**{k: v for k, v in state.items() if int(k.split(".")[0]) < 12},
                          "12.weight": state["13.weight"],
                          **{"13." + k[3:]: v for k, v in state.items() if k.startswith("14.")},
                          **{k: v for k, v in state.items() if k.startswith("16.")}})
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(slid(x), pooled(x))


def test_on_a_larger_map_the_logits_are_the_mean_of_each_windows_own_evidence():
    """At 56 px (a 7x7 map): logits = W . mean over the 25 windows of ReLU(BN(conv(window))) + b, each window alone,
    which is what lets Grad-CAM find the evidence; a map larger than 7x7 is pooled to 7x7 first."""
    from tudui.models.fast import WINDOW_GRID

    torch.manual_seed(0)
    model = create_model("fast-mlp", 4, 1, 56).eval()
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        features = model[:12](x)  # (2, 128, 7, 7)
        window_linear, norm, classifier = model[12], model[13], model[16]
        windows = features.unfold(2, 3, 1).unfold(3, 3, 1)  # (2, 128, 5, 5, 3, 3)
        evidence = [torch.relu(norm(window_linear(windows[:, :, i, j]))) for i in range(5) for j in range(5)]
        assert torch.allclose(model(x), classifier(torch.stack(evidence).mean(0)), atol=1e-5)
    for size in (64, 224):  # maps of 8x8 and 28x28: pooled to 7x7, so at most 25 windows
        net = create_model("fast-mlp", 4, 3, size).eval()
        with torch.no_grad():
            assert net[:-3](torch.zeros(1, 3, size, size)).shape == (1, 256, WINDOW_GRID - 2, WINDOW_GRID - 2)


def test_a_checkpoint_from_before_the_hidden_layer_slid_rebuilds_as_it_was_trained():
    """An arch recorded without `pooled_hidden` (written before it existed) builds the pooled head its weights
    belong to; a new one records pooled_hidden=False."""
    from tudui.models.fast import HiddenBatchNorm, WindowLinear
    from tudui.models.registry import build_model, make_arch

    arch = make_arch("fast-mlp", 4, 1, 56)
    assert arch["kwargs"] == {"pooled_hidden": False}
    assert isinstance(build_model(arch)[12], WindowLinear)
    old = dict(arch, kwargs={})
    rebuilt = build_model(old)
    torch.manual_seed(0)
    trained = create_model("fast-mlp", 4, 1, 56, pooled_hidden=True).eval()
    rebuilt.load_state_dict(trained.state_dict())  # strict: every name and shape of the old head
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), trained(x))
    assert isinstance(build_model(dict(arch, kwargs={"hidden": 32}))[13], nn.Flatten)  # --model-args kept
    wide = make_arch("fast-wide", 4, 1, 28)  # fast-wide had no hidden layer then: its old checkpoints have none
    assert wide["kwargs"] == {"hidden": 256, "pooled_hidden": False}
    old_wide = build_model(dict(wide, kwargs={}))
    assert not any(isinstance(m, HiddenBatchNorm) for m in old_wide) and isinstance(old_wide[-1], nn.Linear)
    assert old_wide[-1].in_features == 128 * 3 * 3


def test_weights_from_before_the_windows_head_load_whole(tmp_path):
    """`--weights` from a checkpoint written before the hidden layer slid: at 28 px today's fast-mlp gets every tensor
    under its new name and computes what the old one did; another class count keeps the hidden layer too."""
    from tudui.core.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
    from tudui.models.fast import HiddenBatchNorm

    torch.manual_seed(0)
    old = create_model("fast-mlp", 10, 1, 28, pooled_hidden=True).eval()
    for m in old.modules():  # trained-looking statistics, so the BN's buffers are checked too
        if isinstance(m, HiddenBatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    save_checkpoint({"format": FORMAT, "format_version": FORMAT_VERSION, "model": old.state_dict(),
                     "arch": {"name": "fast-mlp", "num_classes": 10, "in_channels": 1, "img_size": 28, "kwargs": {}},
                     "data": {}}, tmp_path / "old.pt")
    torch.manual_seed(1)
    now = create_model("fast-mlp", 10, 1, 28, weights=str(tmp_path / "old.pt")).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(now(x), old(x), atol=1e-5)
    fewer = create_model("fast-mlp", 4, 1, 28, weights=str(tmp_path / "old.pt"))
    assert torch.equal(fewer[12].weight, old[13].weight) and torch.equal(fewer[13].running_var, old[14].running_var)

    # fast-wide had no hidden layer: its trunk loads, and its classifier (another shape under a name today's BN has)
    # is left for the run to train instead of refusing the file
    wide = create_model("fast-wide", 10, 1, 28, hidden=None, pooled_hidden=True)
    save_checkpoint({"format": FORMAT, "format_version": FORMAT_VERSION, "model": wide.state_dict(),
                     "arch": {"name": "fast-wide", "num_classes": 10, "in_channels": 1, "img_size": 28, "kwargs": {}},
                     "data": {}}, tmp_path / "wide.pt")
    now_wide = create_model("fast-wide", 10, 1, 28, weights=str(tmp_path / "wide.pt"))
    assert torch.equal(now_wide[0].weight, wide[0].weight) and isinstance(now_wide[12], nn.Linear)
