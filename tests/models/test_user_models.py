"""Your own model from a file: building it, which of the file runs, and every user mistake as one line with exit
code 2."""
from __future__ import annotations

import inspect
import os
import sys
import textwrap

import pytest
import torch

from tudui.cli import main as tudui_main
from tudui.core.errors import TuduiError
from tudui.models import create_model, get_model_info

NETS = '''
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, num_classes, in_channels=1, width=8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def small_builder(num_classes, img_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(img_size * img_size, num_classes))


class NeedsDepth(nn.Module):
    def __init__(self, depth):
        super().__init__()


class ThreeOutputs(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3]


def not_a_module():
    return 42
'''


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def run(*args) -> int:
    return tudui_main([str(a) for a in args])


TRAIN = ("train", "--data", "digits", "--epochs", "1", "--subset", "200", "--no-plots", "--no-tensorboard")


def test_class_and_builder_get_the_arguments_they_accept(nets):
    m = create_model(f"{nets}:Small", 5, 1, 8, width=4)
    assert m.head.out_features == 5 and m.conv.out_channels == 4
    b = create_model(f"{nets}:small_builder", 3, 1, 8)
    assert b(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert get_model_info(f"{nets}:Small").family == "user"


def test_own_model_trains_with_model_args(nets, tmp_path, capsys):
    assert run(*TRAIN, "--model", f"{nets}:Small", "--model-args", "width=4", "--project", tmp_path, "--name", "s") == 0
    assert "top-level statement" not in capsys.readouterr().err  # a file of definitions only: no warning
    ckpt = torch.load(tmp_path / "s" / "best.pt", weights_only=True)
    assert ckpt["arch"]["source"]["args"] == {"width": 4} and ckpt["model"]["conv.weight"].shape[0] == 4


@pytest.mark.parametrize("model, message", [
    ("missing.py:Net", "no such Python file"),
    ("{nets}:Nope", "has no 'Nope'; it defines: NeedsDepth, Small, ThreeOutputs, not_a_module, small_builder"),
    ("{nets}:NeedsDepth", "NeedsDepth needs argument(s) depth that tudui cannot know; give them with --model-args "
                          "depth=..."),
    ("{nets}:ThreeOutputs", "returns (2, 3) for a batch of 2 images; a classifier for 10 classes must return logits "
                            "of shape (2, 10)"),
    ("{nets}:not_a_module", "not_a_module returned a int, not a torch.nn.Module"),
    ("{broken}:Net", "importing"),
])
def test_bad_models_are_one_line_errors(nets, tmp_path, capsys, model, message):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nclass Net(torch.nn.Module:\n    pass\n")
    assert run(*TRAIN, "--model", model.format(nets=nets, broken=broken), "--project", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_unknown_model_args_and_malformed_pairs(nets, capsys):
    with pytest.raises(TuduiError, match=r"Small takes no argument\(s\) depth"):
        create_model(f"{nets}:Small", 2, 1, 8, depth=3)
    assert run("summary", f"{nets}:Small", "--input", "1x8x8", "--model-args", "width") == 2
    assert "key=value" in capsys.readouterr().err
    assert run("summary", f"{nets}:Small", "--input", "1x8x8", "--model-args", "width=2") == 0
    assert "Conv2d" in capsys.readouterr().out


def test_a_library_model_for_rgb_trains_on_greyscale_images(tmp_path):
    """torchvision.models.resnet18(num_classes=10) (first conv: 3 channels) on greyscale digits: without `channels`
    the model's own input channels are used, each grey image replicated to RGB as convert('RGB') does."""
    import tudui
    from torchvision.models import resnet18

    from tudui.data.images import decode_image
    from PIL import Image

    r = tudui.train(data="digits", model=resnet18(num_classes=10), subset=100, epochs=1, batch_size=50,
                    project=str(tmp_path), plots=False, tensorboard=False)
    assert r.spec.channels == 3 and len(r.spec.mean) == 3
    grey = Image.fromarray(torch.arange(64, dtype=torch.uint8).reshape(8, 8).numpy() * 4)
    rgb = decode_image(grey, 3, 8)  # (H, W, 3) uint8: three equal planes
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_a_torchvision_model_given_built_is_rebuilt_by_its_registered_name(tmp_path):
    """torchvision's own class, given built, is recorded as the registered name that builds it (resnet18), so
    predict and --resume rebuild it; its source file (torchvision/models/resnet.py) does not import on its own."""
    import tudui
    import yaml
    from torchvision.models import resnet18

    from tudui.core.checkpoint import load_checkpoint

    model = resnet18(num_classes=10)
    r = tudui.train(data="digits", model=model, img_size=16, subset=100, epochs=1, batch_size=50,
                    project=str(tmp_path), plots=False, tensorboard=False)
    ckpt = load_checkpoint(r.best)
    assert ckpt["arch"]["name"] == "resnet18" and "source" not in ckpt["arch"]
    assert yaml.safe_load(open(r.run_dir / "config.yaml"))["model"] == "resnet18"
    rebuilt = tudui.Predictor.from_path(r.best, device="cpu").model
    model.load_state_dict(ckpt["model"])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-5)


def test_channels_that_do_not_fit_a_library_model_name_the_keyword(tmp_path):
    import tudui
    from torchvision.models import resnet18

    with pytest.raises(TuduiError) as e:
        tudui.train(data="digits", model=resnet18(num_classes=10), channels=1, subset=100, epochs=1,
                    project=str(tmp_path), plots=False, tensorboard=False)
    assert "input 1x8x8 does not fit" in str(e.value) and "expects 3 channels but gets 1" in str(e.value) \
        and "train with channels=3 " in str(e.value)


def test_a_model_with_lazy_layers_trains_and_predicts(tmp_path, monkeypatch):
    """nn.LazyLinear has no weight shape until its first forward pass: the dry run before training gives it one, so
    the channels-last conversion, the optimiser and the checkpoint see real parameters (this was a traceback)."""
    import tudui

    (tmp_path / "lazy.py").write_text(textwrap.dedent('''
        from torch import nn


        class Lazy(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

            def forward(self, x):
                return self.net(x)
    '''))
    monkeypatch.chdir(tmp_path)
    assert tudui_main([*TRAIN, "--model", "lazy.py:Lazy", "--project", str(tmp_path), "--name", "lazy"]) == 0
    ckpt = torch.load(tmp_path / "lazy" / "best.pt", weights_only=True)
    assert ckpt["model"]["net.1.weight"].shape == (10, 64)
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(png)
    _, [pred] = tudui.predict(tmp_path / "lazy" / "best.pt", [str(png)], topk=1)
    assert pred.error is None and 0 < pred.topk[0][1] <= 1


# What of a model's file runs when tudui loads the model from it: imports, definitions and plain assignments.
MIXED = '''"""docstring"""
from __future__ import annotations
import os
import sys
import torch
from torch import nn
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
try:
    import a_module_nobody_has
except ImportError:
    a_module_nobody_has = None
N = 10
X: int = 3
CLASSES = ("a", "b")
NUM = len(CLASSES)
ACT = nn.ReLU
__all__ = ["Net"]
if N > 5:
    BIG = True
    print("inside an if")
layer = nn.ReLU()
os.environ["SOMETHING"] = "1"
torch.backends.cudnn.benchmark = True
for i in range(3):
    pass
with open(__file__) as f:
    text = f.read()
SIZE = len(text)
print("hello")
assert N == 10


@torch.no_grad()
def helper(x=N):
    return x


class Net(nn.Module):
    pass


if __name__ == "__main__":
    print("main")
'''


def test_only_imports_definitions_and_plain_assignments_are_kept():
    from tudui.core.toplevel import scan

    top = scan(MIXED, "mixed.py")
    lines = MIXED.splitlines()
    skipped = [lines[s.lineno - 1] for s in top.skipped]
    assert skipped == ['    print("inside an if")', "layer = nn.ReLU()", 'os.environ["SOMETHING"] = "1"',
                       "torch.backends.cudnn.benchmark = True", "for i in range(3):", "with open(__file__) as f:",
                       "SIZE = len(text)", 'print("hello")', "assert N == 10"]  # the __main__ block: not a word
    assert set(top.only_skipped) == {"layer", "i", "f", "text", "SIZE"}
    kept = "\n".join(lines[s.lineno - 1] for s in top.kept)
    for line in ("import torch", "sys.path.append(", "try:", "N = 10", "X: int = 3", "NUM = len(CLASSES)",
                 "ACT = nn.ReLU", "__all__", "if N > 5:", "def helper(x=N):", "class Net"):
        assert line in kept, line


def test_a_file_with_top_level_code_loads_its_definitions_only(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    path = tmp_path / "mixed.py"
    path.write_text(MIXED + f"open({str(marker)!r}, 'w').write('ran')\n")
    info = get_model_info(f"{path}:Net")
    module = sys.modules[type(info.builder(num_classes=2, in_channels=1, img_size=8)).__module__]
    assert module.NUM == 2 and module.BIG is True and module.a_module_nobody_has is None
    assert not hasattr(module, "layer") and "SOMETHING" not in os.environ
    assert not marker.exists() and capsys.readouterr().out == ""
    assert inspect.getsourcefile(module.Net) == str(path)  # compiled under the file's own name


def test_a_value_the_model_needs_that_is_made_by_a_call_is_named_with_its_line(tmp_path, capsys):
    path = tmp_path / "needs_call.py"
    path.write_text("from torch import nn\n\nACT = nn.ReLU()\n\n\nclass Net(nn.Module):\n"
                    "    def __init__(self, num_classes):\n        super().__init__()\n        self.act = ACT\n"
                    "        self.fc = nn.Linear(64, num_classes)\n\n    def forward(self, x):\n"
                    "        return self.fc(self.act(x.flatten(1)))\n\n\nnet = Net(10)\n")
    with pytest.raises(TuduiError, match=r"NameError: name 'ACT' is not defined; ACT is set by line 3: "
                                         r"`ACT = nn.ReLU\(\)`, which tudui does not run"):
        create_model(f"{path}:Net", 2, 1, 8)
    assert run(*TRAIN, "--model", f"{path}:net", "--project", tmp_path) == 2  # an object the script made
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "net is made by running the file (line 16" in err

    # a class whose base is made by a call is skipped with it; the file's other classes still load
    path.write_text("from torch import nn\n\nBase = getattr(nn, 'Module')\n\n\nclass Odd(Base):\n    pass\n\n\n"
                    "class Net(nn.Module):\n    def __init__(self, num_classes):\n        super().__init__()\n"
                    "        self.fc = nn.Linear(64, num_classes)\n")
    assert create_model(f"{path}:Net", 3, 1, 8).fc.out_features == 3
    with pytest.raises(TuduiError, match=r"Odd \(line 6: `class Odd\(Base\):`\) is defined with Base, which only "
                                         r"running the file makes"):
        create_model(f"{path}:Odd", 3, 1, 8)


def test_the_warning_says_when_the_model_needs_a_value_predict_will_lack(tmp_path):
    from tudui.models.user import top_level_warning

    path = tmp_path / "m.py"
    path.write_text("import torch\nfrom torch import nn\ndevice = torch.device('cpu')\nACT = nn.ReLU()\n\n\n"
                    "def block():\n    return nn.Sequential(nn.Linear(4, 4), ACT)\n\n\nclass Net(nn.Module):\n"
                    "    def __init__(self):\n        super().__init__()\n        self.b = block()\n\n"
                    "    def forward(self, x):\n        device = x.device\n        return self.b(x.to(device))\n")
    warning = top_level_warning({"path": str(path), "name": "Net"})
    assert "runs 2 top-level statement(s)" in warning and "\n" not in warning
    assert "Net uses ACT (line 4), set only by such a statement, so rebuilding it will fail" in warning
    assert "device" not in warning.split("Net uses")[1]  # forward's own local `device` is not the skipped one
    path.write_text("from torch import nn\n\n\nclass Net(nn.Module):\n    pass\n\n\nif __name__ == '__main__':\n"
                    "    print(Net())\n")
    assert top_level_warning({"path": str(path), "name": "Net"}) is None


def test_a_model_that_cannot_take_the_datas_size_is_told_the_size_it_takes_before_any_run_folder(tmp_path, capsys):
    """Was PyTorch's 'mat1 and mat2 shapes cannot be multiplied (2x64 and 1024x64)': now the layer, both sizes and
    the input that fits, as `tudui summary` finds it, with the flag (or keyword) that trains at it."""
    import tudui

    (tmp_path / "m.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Tudui(nn.Module):
            def __init__(self, num_classes=10):
                super().__init__()
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, num_classes))
            def forward(self, x):
                return self.net(x)
        """), encoding="utf-8")
    why = ("input 1x8x8 does not fit: layer #2 (Linear 'net.1') expects 1024 input features but gets 64 (layer #1 "
           "Flatten outputs 64); an input of 1x32x32 fits; train with ")
    ref = f"{tmp_path / 'm.py'}:Tudui"
    assert tudui_main(["train", "--data", "digits", "--model", ref, "--project", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == \
        f"error: model {ref}: {why}--img-size 32 (tudui converts the images to it), or change the model\n"
    assert not (tmp_path / "runs").exists()
    from tudui.core.pyfile import load_object

    with pytest.raises(TuduiError) as e:  # the library's keywords, for a model passed as an object
        tudui.train(data="digits", model=load_object(ref)[0](), project=str(tmp_path / "runs"))
    assert str(e.value).endswith(f"{why}img_size=32 (tudui converts the images to it), or change the model")
