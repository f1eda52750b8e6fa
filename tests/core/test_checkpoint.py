
import pickle

import pytest
import torch

from tudui.core.checkpoint import FORMAT, load_checkpoint, read_weights, save_checkpoint
from tudui.core.errors import TuduiError


def test_atomic_save_leaves_no_temp_files(tmp_path):
    save_checkpoint({"format": FORMAT, "format_version": 1, "x": torch.ones(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["x"], torch.ones(3))


def test_failed_save_keeps_previous_file(tmp_path):
    save_checkpoint({"format": FORMAT, "v": 1}, tmp_path / "a.pt")
    # pickle's own error: AttributeError up to Python 3.13, PicklingError from 3.14
    with pytest.raises((AttributeError, pickle.PicklingError), match="Can't pickle local object .*<lambda>"):
        save_checkpoint({"format": FORMAT, "bad": lambda: 0}, tmp_path / "a.pt")  # cannot be pickled
    assert load_checkpoint(tmp_path / "a.pt")["v"] == 1 and len(list(tmp_path.iterdir())) == 1


def test_refuses_pickled_model_and_foreign_files(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")  # the course's torch.save(model)
    with pytest.raises(TuduiError, match="pickled Python objects.*tudui convert"):
        load_checkpoint(tmp_path / "whole.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(TuduiError, match="not a tudui checkpoint.*--weights"):
        load_checkpoint(tmp_path / "sd.pth")
    assert set(read_weights(tmp_path / "sd.pth")) == {"weight", "bias"}
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TuduiError):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TuduiError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


class _Evil:
    """Unpickling this creates the file `marker` (a stand-in for any code an attacker wants run)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_does_not_run(tmp_path):
    import pickle

    marker = tmp_path / "evil-marker"
    pickle.loads(pickle.dumps(_Evil(marker)))  # an ordinary unpickle runs it: the payload works
    assert marker.exists()
    marker.unlink()
    torch.save({"format": FORMAT, "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(TuduiError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


# --- files that are not what they claim (bombs, junk, wrong types): one line each, before memory is spent -------------
import collections  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402
import zipfile  # noqa: E402

from tests.memory import peak_rss_growth_mb  # noqa: E402


class _Storage:
    """Stands for storage "0" of the archive in a hand-written torch.save pickle."""


class _Tensor:
    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):  # what torch.save pickles for a float32 tensor of n elements on storage "0"
        return torch._utils._rebuild_tensor_v2, (_Storage(), 0, (self.n,), (1,), False, collections.OrderedDict())


def write_repacked(path, mib: int, extra: dict | None = None) -> None:
    """A torch.save-style archive holding `mib` MiB of zero floats, its entries deflated (as `zip -r` would re-pack
    one): a few hundred KB on disk. Written a MiB at a time, so making it costs no memory."""
    n = mib * 2**20 // 4

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", n) if isinstance(obj, _Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({**(extra or {}), "x": _Tensor(n)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            for _ in range(mib):
                f.write(bytes(2**20))


def test_repacked_archive_is_refused_before_it_inflates(tmp_path):
    # 512 MiB of zeros in a ~0.5 MB file (about 1000:1): torch.load used to allocate all of it, silently.
    bomb = tmp_path / "bomb.pt"
    write_repacked(bomb, 512, {"format": FORMAT, "format_version": 1})
    assert bomb.stat().st_size < 2**20
    for load in (load_checkpoint, read_weights):
        err, grown = peak_rss_growth_mb(lambda: load(bomb))
        assert isinstance(err, TuduiError) and "unpacks to 512 MiB" in str(err), err
        assert grown < 64, f"refusing the archive cost {grown:.0f} MiB of resident memory (bound: 64 MiB)"


def test_honestly_compressed_checkpoint_still_loads(tmp_path):
    save_checkpoint({"format": FORMAT, "format_version": 1, "w": torch.randn(1000)}, tmp_path / "a.pt")
    with zipfile.ZipFile(tmp_path / "a.pt") as zi, zipfile.ZipFile(tmp_path / "z.pt", "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info.filename))
    assert torch.equal(load_checkpoint(tmp_path / "z.pt")["w"], load_checkpoint(tmp_path / "a.pt")["w"])


def _one_line_error(path) -> str:
    with pytest.raises(TuduiError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "weights_only" not in msg  # torch's advice would be to load unsafely
    return msg


JUNK = {
    "nul": b"\x00" * 4096,  # torch: "...legacy .tar format ... Re-runn" (cut mid-word, wrong cause)
    "keyerror": b"\x80\x02h\x65.",  # BINGET 101 of an empty memo: torch.load raised KeyError: 101
    "indexerror": pickle.dumps({"a": list(range(100))}, protocol=2)[:50],  # a truncated pickle: IndexError
    "struct": b"\x80\x02J\x01",  # a cut BININT: struct.error
    "random": random.Random(0).randbytes(5000),
    "lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
}


@pytest.mark.parametrize("name", JUNK)
def test_junk_files_are_one_line_errors(tmp_path, name):
    path = tmp_path / f"{name}.pt"
    path.write_bytes(JUNK[name])
    msg = _one_line_error(path)
    if name == "nul":
        assert "starts with bytes 00 00 00 00" in msg and "legacy" not in msg


def test_zip_with_wrong_members_and_truncated_archives(tmp_path):
    with zipfile.ZipFile(tmp_path / "members.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    _one_line_error(tmp_path / "members.pt")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "w": torch.randn(100)}, buf)
    (tmp_path / "cut.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "damaged zip archive" in _one_line_error(tmp_path / "cut.pt")


def test_damaged_checkpoints_never_escape_as_other_exceptions(tmp_path):
    """Bit flips and truncations of a real checkpoint: each loads or is one TuduiError line (no KeyError,
    IndexError, struct.error... from inside torch.load)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": 1, "model": {"w": torch.randn(4, 4)}, "arch": {}}, buf)
    good = buf.getvalue()
    rng = random.Random(1)
    path = tmp_path / "x.pt"
    for i in range(120):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            load_checkpoint(path)
        except TuduiError as e:
            assert "\n" not in str(e)


def _good_checkpoint() -> dict:
    from tudui.core.checkpoint import make_checkpoint
    from tudui.models import create_model
    from tudui.models.registry import make_arch

    model = create_model("fast", 10, 1, 8)
    data = {"classes": [str(i) for i in range(10)], "img_size": 8, "channels": 1, "mean": [0.3], "std": [0.4],
            "hflip": False, "tta": False, "crop_pct": None}
    return make_checkpoint(model, make_arch("fast", 10, 1, 8), data)


@pytest.mark.parametrize("entry, value, says", [
    ("arch", "fast", "'arch' should be a dict"),
    ("arch.num_classes", "10", "'arch.num_classes' should be an int"),
    ("arch.in_channels", 7, "'arch.in_channels' should be an int in [1, 3]"),
    ("arch.kwargs", [1], "'arch.kwargs' should be a dict"),
    ("model", [1, 2], "'model' should be a state_dict"),
    ("model", {"w": 3}, "'w' holds a int"),
    ("data", None, "'data' should be a dict"),
    ("data.classes", list(range(10)), "'data.classes' should hold class names (str), but holds a int"),
    ("data.classes", "0123456789", "'data.classes' should be a non-empty list"),
    ("data.classes", [], "'data.classes' should be a non-empty list"),
    ("data.mean", "x", "'data.mean' should be 1 finite number"),
    ("data.std", [0.0], "'data.std' is [0.0]: each must be > 0"),
    ("data.std", [math.nan], "'data.std' should be 1 finite number"),
    ("data.std", [0.2, 0.2, 0.2], "'data.std' should be 1 finite number"),
    ("data.channels", 2, "'data.channels' should be 1 (greyscale) or 3"),
    ("data.img_size", 20000, "'data.img_size' should be a side in pixels in [1, 2048]"),
    ("data.crop_pct", 1e-6, "'data.crop_pct' should be in (0, 1]"),
    ("data.hflip", "yes", "'data.hflip' should be true or false"),
])
def test_checkpoint_entries_of_the_wrong_type_are_one_line_errors(tmp_path, entry, value, says):
    ckpt = copy.deepcopy(_good_checkpoint())
    *parents, key = entry.split(".")
    target = ckpt
    for p in parents:
        target = target[p]
    target[key] = value
    save_checkpoint(ckpt, tmp_path / "bad.pt")
    assert says in _one_line_error(tmp_path / "bad.pt")


def test_corrupt_safetensors_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(8, 8)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    for name, content in (("nul", bytes(4096)), ("cut", data[:40]), ("header", b"\xff" * 8 + data[8:])):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(TuduiError, match="not a readable .safetensors file") as e:
            read_weights(path)
        assert "\n" not in str(e.value)


def test_bad_weight_files_through_the_cli(tmp_path, capsys):
    """`train --weights`, `convert` and `predict` with damaged files: exit 2, one `error:` line, no traceback."""
    from tests.conftest import run_cli
    from tudui.cli import main

    (tmp_path / "nul.safetensors").write_bytes(bytes(4096))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "nul.pt").write_bytes(bytes(4096))
    (tmp_path / "keyerror.pt").write_bytes(JUNK["keyerror"])
    write_repacked(tmp_path / "bomb.pt", 256)
    for name in ("nul.safetensors", "junk.safetensors", "keyerror.pt", "bomb.pt"):
        for argv in (["train", "--data", "digits", "--model", "fast", "--epochs", "1", "--weights", tmp_path / name,
                      "--project", tmp_path / "runs"],
                     ["convert", tmp_path / name, "--model", "fast", "--num-classes", "10", "--out", tmp_path / "c.pt"]):
            capsys.readouterr()
            assert main([str(a) for a in argv]) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1 and name in err, err
    assert not (tmp_path / "c.pt").exists()
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    r = run_cli("predict", tmp_path / "nul.pt", tmp_path / "x.png", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "is not a readable PyTorch file" in r.stderr and "weights_only" not in r.stderr and "legacy" not in r.stderr


def test_weights_may_be_a_run_directory_as_everywhere_else_a_model_file_is_named(digits_run, tmp_path):
    """`--weights runs/fm` was 'weights file not found' where eval, predict and export take the folder."""
    run = digits_run.best.parent
    got, want = read_weights(run), read_weights(run / "best.pt")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuduiError, match="folder without best.pt or last.pt"):
        read_weights(tmp_path / "empty")
