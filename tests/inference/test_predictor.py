import numpy as np
from PIL import Image

import tudui
from tudui.inference.predictor import expand_paths


def test_predict_files_and_bad_images(tmp_path, digits_run):
    r = digits_run  # the session's shared digits run (conftest.py)
    from tudui.data.sources import load_named

    test = load_named("digits", False)
    paths = []
    for i in range(20):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(test.images[i][..., 0]).convert("RGBA").save(p)  # RGBA PNG: converted like training data
        paths.append(str(p))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    files = expand_paths([str(tmp_path / "imgs")])
    assert len(files) == 21
    preds = tudui.Predictor.from_path(r.best).predict(files, topk=3, batch_size=8)
    assert [str(p.source) for p in preds] == files  # order kept, bad file in place
    bad = [p for p in preds if p.error]
    assert len(bad) == 1 and "broken" in str(bad[0].source)
    good = {str(p.source): p for p in preds if not p.error}
    hits = sum(good[paths[i]].label == test.classes[test.targets[i]] for i in range(20))
    assert hits >= 14
    assert all(len(p.topk) == 3 and np.all(np.diff([v for _, v in p.topk]) <= 0) for p in good.values())
    full = tudui.Predictor.from_path(r.best).predict(paths[:2], topk=99)[0].topk
    assert len(full) == 10 and abs(sum(v for _, v in full) - 1) < 1e-5


def test_no_tta_predicts_with_the_plain_forward_pass(tta_checkpoint, capsys):
    """`tudui predict` uses the flip TTA a model was trained with; `--no-tta` gives the plain forward pass."""
    import json

    from tudui.cli import main as tudui_main

    ckpt, image, plain, tta = tta_checkpoint
    assert np.abs(plain - tta).max() > 0.02  # the two answers differ enough to tell which one was given
    for flags, expected in (([], tta), (["--no-tta"], plain)):
        assert tudui_main(["predict", str(ckpt), str(image), "--topk", "10", "--device", "cpu", "--json",
                           *flags]) == 0
        given = {p["class"]: p["probability"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]}
        np.testing.assert_allclose([given[str(c)] for c in range(10)], expected, atol=1e-5, err_msg=str(flags))


def test_predict_leaves_special_files_out_of_a_folder_and_refuses_one_named(tmp_path, capsys):
    """A FIFO named x.png in a folder hung `tudui predict` silently: only regular files are listed, one warning
    names the others, and one given by name is refused with what it is."""
    import os

    import pytest

    from tudui.core.errors import TuduiError

    if not hasattr(os, "mkfifo"):
        pytest.skip("POSIX FIFOs")
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "fifo.png")
    assert expand_paths([str(tmp_path)]) == [str(tmp_path / "a.png")]
    err = capsys.readouterr().err
    assert err.startswith("warning: skipped 1 file(s) that are not regular files") and "fifo.png (a FIFO)" in err
    with pytest.raises(TuduiError, match="fifo.png is a FIFO, not an image file or a folder"):
        expand_paths([str(tmp_path / "fifo.png")])


# --- model files whose metadata does not fit their weights, or asks for huge memory --------------------------------
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.conftest import run_cli  # noqa: E402
from tests.memory import peak_rss_growth_mb  # noqa: E402
from tudui.cli import main  # noqa: E402
from tudui.core.errors import TuduiError  # noqa: E402
from tudui.inference import Predictor  # noqa: E402

LOAD_BOUND_MB = 100  # resident memory a refused model file may cost (MiB): the file itself plus bookkeeping


def edited(src, out, edit):
    """A copy of checkpoint `src` at `out`, changed by `edit(ckpt)`."""
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, out)
    return out


def one_line_error(argv, capsys) -> str:
    """Run `tudui ARGV` in-process: exit 2 and one `error:` line on stderr."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "%" not in out
    return err


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


def test_declared_sizes_are_checked_against_the_weights_before_building(tmp_path, tiny_model):
    # The file: a ~1 MB checkpoint claiming 4,000,000 classes cost 2.9 GB before being refused.
    def claim(n, names):
        def edit(c):
            c["arch"]["num_classes"] = n
            if names:
                c["data"]["classes"] = ["c"] * n  # one string, referenced n times: the file stays small
        return edit

    bad = edited(tiny_model, tmp_path / "claims.pt", claim(4_000_000, False))
    err, grown = peak_rss_growth_mb(lambda: Predictor.from_path(bad, device="cpu"))
    assert grown < LOAD_BOUND_MB, f"refusing it cost {grown:.0f} MiB (bound {LOAD_BOUND_MB} MiB)"
    assert isinstance(err, TuduiError) and "num_classes 4000000" in str(err) and "10 class names" in str(err)
    # Names and architecture agree, but the weights hold a head for 10: found on the meta device, without memory
    # (building it for real was 512 MiB for the 1,000,000-class head alone).
    bad = edited(tiny_model, tmp_path / "agrees.pt", claim(1_000_000, True))
    err, grown = peak_rss_growth_mb(lambda: Predictor.from_path(bad, device="cpu"))
    assert grown < LOAD_BOUND_MB, f"refusing it cost {grown:.0f} MiB (bound {LOAD_BOUND_MB} MiB)"
    assert isinstance(err, TuduiError) and "does not fit architecture fast" in str(err), err
    assert "[10, 128] in the file, [1000000, 128] in the architecture" in str(err)


def _few_classes(c):
    c["data"]["classes"] = c["data"]["classes"][:5]


def _std(value):
    def edit(c):
        c["data"]["std"] = [value]
    return edit


def _rgb(c):  # metadata and arch say 3 channels; the weights' first conv takes 1
    c["arch"]["in_channels"] = c["data"]["channels"] = 3
    c["data"]["mean"], c["data"]["std"] = [0.5] * 3, [0.5] * 3


def _nan_weights(c):
    c["model"]["13.weight"][:] = math.nan


@pytest.mark.parametrize("case, edit, says", [
    ("few-classes", _few_classes, "num_classes 10, but its preprocessing names 5 class names"),  # was IndexError
    ("std-0", _std(0.0), "'data.std' is [0.0]"),  # was "nan%", exit 0
    ("std-nan", _std(math.nan), "'data.std' should be 1 finite number"),  # was "nan%", exit 0
    ("channels", _rgb, "0.weight is [16, 1, 3, 3] in the file, [16, 3, 3, 3] in the architecture"),  # a traceback
    ("nan-weights", _nan_weights, "outputs NaN or infinity on a blank image"),  # was "nan%", exit 0
])
def test_inconsistent_metadata_is_refused_at_load(tmp_path, tiny_model, image, capsys, case, edit, says):
    bad = edited(tiny_model, tmp_path / f"{case}.pt", edit)
    assert says in one_line_error(["predict", bad, image], capsys)


def test_inconsistent_metadata_through_the_real_cli(tmp_path, tiny_model, image):
    bad = edited(tiny_model, tmp_path / "few.pt", _few_classes)
    for argv in (["predict", bad, image], ["serve", bad, "--port", "0"]):  # serve: refused before it listens
        r = run_cli(*argv, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr and "serving" not in r.stdout


def _set_onnx_metadata(src, out, **changes):
    import onnx

    model = onnx.load(str(src))
    meta = {p.key: p for p in model.metadata_props}
    for key, value in changes.items():
        meta[key].value = json.dumps(value)
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("changes, says", [
    ({"img_size": 20000}, "'metadata.img_size' should be a side in pixels in [1, 2048], got 20000"),
    ({"img_size": 16}, "its graph has 8 input height, its metadata says 16"),
    ({"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}, "its graph has 1 input channels, its metadata says 3"),
    ({"classes": list("abcde")}, "its graph has 10 outputs, its metadata says 5"),
    ({"std": [0]}, "'metadata.std' is [0]"),
])
def test_onnx_metadata_that_does_not_fit_its_graph(tmp_path, tiny_onnx, changes, says):
    # The file: metadata img_size 20000 took 4.7 GB and 10 s to classify an 8x8 image.
    bad = _set_onnx_metadata(tiny_onnx[0], tmp_path / "bad.onnx", **changes)
    err, grown = peak_rss_growth_mb(lambda: Predictor.from_path(bad))
    assert isinstance(err, TuduiError) and says in str(err), err
    assert grown < LOAD_BOUND_MB, f"refusing it cost {grown:.0f} MiB (bound {LOAD_BOUND_MB} MiB)"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load/save are deprecated for torch.export
def test_torchscript_and_safetensors_metadata_are_checked(tmp_path, tiny_model, image, capsys):
    import tudui

    ts = tudui.export(tiny_model, "torchscript", tmp_path / "m.torchscript").path
    extra = {"tudui.json": ""}
    module = torch.jit.load(str(ts), _extra_files=extra)
    meta = json.loads(extra["tudui.json"])
    torch.jit.save(module, str(tmp_path / "rgb.torchscript"), _extra_files={"tudui.json": json.dumps(
        meta | {"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3})})
    err = one_line_error(["predict", tmp_path / "rgb.torchscript", image], capsys)
    assert "cannot classify a 3x8x8 input, the size its metadata declares" in err
    torch.jit.save(module, str(tmp_path / "few.torchscript"), _extra_files={"tudui.json": json.dumps(
        meta | {"classes": meta["classes"][:5]})})
    assert "outputs [1, 10] per image, but its metadata names 5 classes" in one_line_error(
        ["predict", tmp_path / "few.torchscript", image], capsys)

    st = tudui.export(tiny_model, "safetensors", tmp_path / "m.safetensors").path
    sidecar = json.loads((tmp_path / "m.safetensors.json").read_text())
    (tmp_path / "m.safetensors.json").write_text(json.dumps(sidecar | {"std": [0.0]}))
    assert "'metadata.std' is [0.0]" in one_line_error(["predict", st, image], capsys)
    many = copy.deepcopy(sidecar)
    many["arch"]["num_classes"], many["classes"] = 1_000_000, ["c"] * 1_000_000
    (tmp_path / "m.safetensors.json").write_text(json.dumps(many))
    err, grown = peak_rss_growth_mb(lambda: Predictor.from_path(st))
    assert isinstance(err, TuduiError) and "[10, 128] in the file, [1000000, 128] in the architecture" in str(err)
    assert grown < LOAD_BOUND_MB, f"refusing it cost {grown:.0f} MiB (bound {LOAD_BOUND_MB} MiB)"


def _photo(path, w: int, h: int, seed: int = 0):
    """A colour image of w x h: smooth gradients in R and G and noise in B (not grey, not flat)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    rgb = np.stack([x, y, rng.uniform(0, 255, (h, w))], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return str(path)


def test_save_input_writes_the_exact_tensor_the_model_saw(tmp_path, tiny_model):
    import torch

    from tudui.data import denormalize

    (tmp_path / "b").mkdir()
    files = [_photo(tmp_path / "照片 1.jpg", 100, 80), _photo(tmp_path / "b" / "照片 1.png", 60, 90, seed=1)]
    predictor = tudui.Predictor.from_path(tiny_model)
    seen = []
    predictor.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    preds = predictor.predict(files, save_input=tmp_path / "seen")
    # named after the input (a second 照片 1.* gets -2), the model's 8x8 grey input with its normalisation undone
    assert [p.seen.name for p in preds] == ["照片 1.png", "照片 1-2.png"]
    assert sorted(f.name for f in (tmp_path / "seen").iterdir()) == ["照片 1-2.png", "照片 1.png"]
    want = (denormalize(seen[0], predictor.spec) * 255).round().to(torch.uint8)[:, 0].numpy()  # (2, 8, 8)
    for p, w in zip(preds, want):
        with Image.open(p.seen) as im:
            assert im.mode == "L" and im.size == (8, 8)
            assert np.array_equal(np.asarray(im), w)
    assert preds[0].to_dict()["input_png"] == str(tmp_path / "seen" / "照片 1.png")


def test_predict_warns_once_when_images_are_far_from_the_training_data(tmp_path, tiny_model, capsys):
    from tudui.cli import main as tudui_main
    from tudui.data.sources import load_named

    digit = tmp_path / "digit.png"  # a real 8x8 grey digit, as the model was trained on: nothing to say
    Image.fromarray(load_named("digits", False).images[0][..., 0]).save(digit)
    assert tudui_main(["predict", str(tiny_model), str(digit)]) == 0
    assert "warning" not in capsys.readouterr().err
    photos = [_photo(tmp_path / f"photo{i}.jpg", 100, 80, seed=i) for i in range(3)]  # colour, 10x the input
    assert tudui_main(["predict", str(tiny_model), str(digit), *photos, "--save-input", str(tmp_path / "s")]) == 0
    out, err = capsys.readouterr()
    assert err == (f"warning: images are resized to 8x8 and converted to grey for this model ({photos[0]} is "
                   f"100x80 RGB); {tmp_path / 's'} shows what it saw\n")  # once for the run, not per image
    assert f"wrote 4 image(s) as the model saw them to {tmp_path / 's'}" in out
    assert tudui_main(["predict", str(tiny_model), photos[0]]) == 0
    assert capsys.readouterr().err.endswith("; --save-input DIR shows what it saw\n")
