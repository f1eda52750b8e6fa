"""Every registered model builds, runs forward and backward; lookups and head changes behave."""
import re

import pytest
import torch
import torch.nn as nn

from tudui.core.errors import TuduiError
from tudui.models import create_model, get_model_info, list_models
from tudui.models.surgery import head_path, load_weights

HEAVY = {"vgg11", "vgg16", "resnet50", "resnet34"}


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_forward_backward_on_smallest_input(name):
    info = get_model_info(name)
    for channels in (1, 3):
        model = create_model(name, num_classes=3, in_channels=channels, img_size=info.min_size)
        x = torch.randn(2, channels, info.min_size, info.min_size)
        out = model.train()(x)
        assert out.shape == (2, 3)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        if name in HEAVY:
            break  # one channel count is enough for the slow ones


def test_unknown_model_suggests_names():
    with pytest.raises(TuduiError, match="did you mean resnet18"):
        create_model("resnet19", 10)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(TuduiError, match="pass img_size=32 "):
        create_model("vgg16", 10, 3, 16)


def test_cifar_net_parameter_count_by_hand():
    model = create_model("cifar-net", 10, 3, 32)
    conv = (3 * 32 * 25 + 32) + (32 * 32 * 25 + 32) + (32 * 64 * 25 + 64)
    linear = (1024 * 64 + 64) + (64 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == conv + linear == 145_578


def test_head_replaced_and_appended():
    m = create_model("mobilenet_v3_small", 7, 3, 32)
    assert m.get_submodule(head_path(m)).out_features == 7
    m = create_model("vgg11", 4, 3, 32, head="append")
    assert isinstance(m.classifier.add_linear, nn.Linear) and m.classifier.add_linear.in_features == 1000
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_weights_adapt_first_conv_and_skip_head():
    src = create_model("resnet18", 1000, 3, 32)  # an "ImageNet-shaped" state dict
    dst = create_model("resnet18", 5, 1, 32)
    skipped = load_weights(dst, src.state_dict(), "test")
    assert set(skipped) == {"fc.weight", "fc.bias"}
    assert torch.allclose(dst.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_weights_that_do_not_fit_are_named():
    src = create_model("resnet18", 10, 3, 32).state_dict()
    src["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(TuduiError, match="layer1.0.conv1.weight is \\(3, 3, 3, 3\\)"):
        load_weights(create_model("resnet18", 10, 3, 32), src, "bad.pth")
    with pytest.raises(TuduiError, match="share almost no layers"):
        load_weights(create_model("resnet18", 10, 3, 32), create_model("mobilenet_v3_small", 10, 3, 32).state_dict(), "x")


def test_weights_file_via_builder(tmp_path):
    src = create_model("resnet18", 1000, 3, 32)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = create_model("resnet18", 3, 3, 32, weights=str(tmp_path / "r18.pth"))
    assert torch.equal(m.conv1.weight, src.conv1.weight)


def test_register_model_makes_a_user_architecture_a_first_class_one(tmp_path, monkeypatch, capsys):
    """README's example: a registered function is listed, trained, saved, rebuilt for prediction and summarised."""
    import json

    import tudui
    from tudui.cli import main as tudui_main
    from tudui.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # forget the test model afterwards
    calls = []

    @tudui.register_model("tiny-mlp", description="a user's two-layer net", min_size=4, default_size=8)
    def tiny(num_classes, in_channels, img_size, hidden=32):
        calls.append((num_classes, in_channels, img_size))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * img_size * img_size, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))

    with pytest.raises(ValueError, match="registered twice"):
        tudui.register_model("tiny-mlp", description="again")(tiny)
    assert tudui_main(["models"]) == 0
    assert re.search(r"tiny-mlp\s+tudui\s+98,666\s+4\s+a user's two-layer net", capsys.readouterr().out)
    # ^ at 32x32 RGB: 3,072 x 32 + 32 + 32 x 10 + 10 parameters
    calls.clear()
    r = tudui.train(data="digits", model="tiny-mlp", epochs=2, batch_size=64, plots=False, tensorboard=False,
                    project=str(tmp_path), name="mlp")
    assert calls[0] == (10, 1, 8) and r.val["top1"] > 0.5  # 8x8 digits are easy even for an MLP
    predictor = tudui.Predictor.from_path(r.best, device="cpu")  # rebuilt through the registry
    assert calls[-1] == (10, 1, 8) and isinstance(predictor.model[1], nn.Linear)
    x = torch.zeros(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(predictor.model(x), tudui.Predictor.from_path(r.last, device="cpu").model(x))
    capsys.readouterr()  # the training's own output
    assert tudui_main(["summary", str(r.best), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 64 * 32 + 32 + 32 * 10 + 10


def test_a_model_file_without_a_class_name_is_told_the_modules_it_defines_without_running_it(tmp_path):
    """`--model model.py` was "unknown model 'model.py'": the file's nn.Module classes are read with ast."""

    ran = tmp_path / "ran"
    (tmp_path / "model.py").write_text(
        "import torch.nn as nn\nfrom torch import nn as tnn\n"
        f"open({str(ran)!r}, 'w')  # the file must not run just to be named in an error\n"
        "class Tudui(nn.Module):\n    pass\nclass Helper:\n    pass\n", encoding="utf-8")
    with pytest.raises(TuduiError) as e:
        create_model(str(tmp_path / "model.py"), 10)
    assert str(e.value) == (f"--model {tmp_path / 'model.py'} names a file, not the model in it: write "
                            f"--model {tmp_path / 'model.py'}:Tudui")
    (tmp_path / "two.py").write_text("import torch\nclass A(torch.nn.Module): pass\nclass B(A): pass\n"
                                     "class C(torch.nn.Sequential): pass\nclass D: pass\n", encoding="utf-8")
    with pytest.raises(TuduiError, match=r"two.py:NAME with NAME one of the nn.Module classes it defines: A, B, C$"):
        create_model(str(tmp_path / "two.py"), 10)
    assert not ran.exists()
