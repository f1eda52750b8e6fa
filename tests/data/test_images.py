"""Every common image mode becomes the model's channel count the same way."""
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tudui.data import images
from tudui.data.images import BadImage, decode_image

from tests import forkserver
from tests.conftest import REPO


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_rgba_png_drops_alpha_like_convert_rgb():
    arr = np.zeros((10, 12, 4), np.uint8)
    arr[..., 0], arr[..., 3] = 200, 0  # fully transparent red
    out = decode_image(_png(Image.fromarray(arr, "RGBA")), 3, None)
    assert out.shape == (10, 12, 3) and out[0, 0].tolist() == [200, 0, 0]
    gray = decode_image(_png(Image.fromarray(arr, "RGBA")), 1, None)
    assert gray.shape == (10, 12, 1) and gray[0, 0, 0] == Image.new("RGB", (1, 1), (200, 0, 0)).convert("L").getpixel((0, 0))


def test_palette_png_with_transparency():
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.info["transparency"] = 0
    out = decode_image(_png(img, transparency=0), 3, None)
    assert out[0, 0].tolist() == [10, 20, 30]


def test_16bit_gray_is_scaled_not_clipped():
    arr = np.full((4, 4), 65535 // 2, np.uint16)
    img = Image.fromarray(arr)  # mode I;16
    out = decode_image(_png(img), 1, None)
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_cmyk_jpeg_and_grayscale_to_rgb():
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # red in CMYK
    out = decode_image(_png(cmyk, format="JPEG", quality=100), 3, None)
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60
    gray = decode_image(_png(Image.new("L", (5, 5), 77)), 3, None)
    assert gray.shape == (5, 5, 3) and gray[0, 0].tolist() == [77, 77, 77]


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = decode_image(_png(img, format="JPEG", exif=exif.tobytes()), 3, None)
    assert out.shape[:2] == (20, 10)


def test_resize_to_square():
    out = decode_image(_png(Image.new("RGB", (50, 30), (9, 9, 9))), 3, 16)
    assert out.shape == (16, 16, 3)


@pytest.mark.parametrize("crop_pct", [None, 0.875])
def test_bicubic_decoding_is_torchvisions_bicubic_resize(crop_pct):
    """interpolation='bicubic' (a timm model's weights) gives torchvision's Resize(..., BICUBIC) [+ CenterCrop]
    pixels on a PIL image, and differs from the bilinear default."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import InterpolationMode as IM

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))
    if crop_pct is None:
        ref = v2.Resize((24, 24), IM.BICUBIC, antialias=True)(img)
    else:
        ref = v2.CenterCrop(24)(v2.Resize(images.resize_side(24, crop_pct), IM.BICUBIC, antialias=True)(img))
    out = decode_image(img, 3, 24, crop_pct, interpolation="bicubic")
    assert np.array_equal(out, np.array(ref))
    assert not np.array_equal(out, decode_image(img, 3, 24, crop_pct))


def test_the_layout_tag_names_a_filter_other_than_bilinear():
    from tudui.data import Layout

    assert Layout(3, 24, 0.875).tag == "c3-s24-crop0.875"  # as before the filter was recorded: caches stay valid
    assert Layout(3, 24, 0.875, "bicubic").tag == "c3-s24-crop0.875-bicubic"


@pytest.mark.parametrize("data", [b"", b"not an image at all", _png(Image.new("RGB", (64, 64)))[:60]])
def test_bad_bytes_raise_badimage(data):
    with pytest.raises(BadImage):
        decode_image(data, 3, 8)


def test_missing_file(tmp_path):
    with pytest.raises(BadImage, match="no such file"):
        decode_image(tmp_path / "nope.png", 3, 8)


@pytest.mark.parametrize("mode, channels, plain", [
    ("L", 1, True), ("RGB", 3, True),  # 8-bit grey / RGB at the size asked for: libpng's pixels are used
    ("L", 3, False), ("RGB", 1, False),  # a mode conversion: Pillow's formula
    ("P", 3, False), ("LA", 1, False), ("RGBA", 3, False), ("I;16", 1, False),  # palette, alpha, 16 bit
])
def test_plain_pngs_decode_to_the_same_pixels_on_either_path(tmp_path, mode, channels, plain):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65535, (12, 12), dtype=np.uint16))
    path = tmp_path / "im.png"
    img.save(path)
    assert (images._decode_plain_png(path, channels, 12) is not None) == plain
    assert images._decode_plain_png(path, channels, 10) is None  # a resize is Pillow's
    pillow = images.decode_image(Image.open(path), channels, 12)  # an opened image never takes the PNG path
    assert np.array_equal(images.decode_image(path, channels, 12), pillow) and pillow.shape == (12, 12, channels)
    resized = images.decode_image(Image.open(path), channels, 10)
    assert np.array_equal(images.decode_image(str(path), channels, 10), resized)


def test_a_truncated_png_is_still_reported_by_pillow(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:40])
    assert images._decode_plain_png(path, 1, 12) is None
    with pytest.raises(images.BadImage):
        images.decode_image(path, 1, 12)


# --- 16-bit and float images, memory -----------------------------------------------------------------------------
def _reference_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """The 8-bit scaling tudui has always applied, on the whole image in float64."""
    arr = arr.astype(np.float64)
    if mode == "F":
        top = 1.0 if arr.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
    with np.errstate(invalid="ignore"):
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _deep_images():
    rng = np.random.default_rng(1)
    u16 = rng.integers(0, 65536, (23, 37), dtype=np.uint16)
    nan = (rng.random((23, 37), dtype=np.float32) * 400 - 50)
    nan[3, 4] = np.nan
    return [("I;16", Image.fromarray(u16), u16),
            ("I;16B", Image.frombytes("I;16B", (37, 23), u16.astype(">u2").tobytes()), u16),
            ("I", Image.fromarray(small := rng.integers(-50, 256, (23, 37), dtype=np.int32)), small),
            ("I", Image.fromarray(big := rng.integers(-5000, 70000, (23, 37), dtype=np.int32)), big),
            ("F", Image.fromarray(unit := rng.random((23, 37), dtype=np.float32)), unit),
            ("F", Image.fromarray(nan), nan)]


@pytest.mark.parametrize("tile", [7, 100, 1 << 18])
def test_16bit_and_float_images_are_scaled_a_tile_at_a_time_to_the_same_pixels(monkeypatch, tile):
    """The conversion runs on tiles (bounded float64 temporaries), with exactly the whole-image formula's result."""
    monkeypatch.setattr(images, "TILE_PIXELS", tile, raising=False)
    for mode, img, arr in _deep_images():
        assert img.mode == mode
        want = _reference_8bit(arr, mode)
        with np.errstate(invalid="ignore"):
            got = decode_image(img, 1, None)[..., 0]
        assert np.array_equal(got, want), (mode, tile)
        with np.errstate(invalid="ignore"):
            rgb = decode_image(img, 3, 16)
        assert np.array_equal(rgb, np.array(Image.fromarray(want).convert("RGB").resize((16, 16), Image.BILINEAR)))


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I;16"])
@pytest.mark.parametrize("size, crop_pct", [(16, None), (24, 0.875), (48, 1.0)])
def test_grey_images_become_rgb_after_resizing_with_the_pixels_of_converting_first(mode, size, crop_pct):
    """A grey image is resized as 'L' and only then made RGB (a quarter of the memory): the same pixels as RGB first."""
    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (41, 30, 3), dtype=np.uint8))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65536, (41, 30), dtype=np.uint16))
    grey = decode_image(img, 1, None)[..., 0]
    rgb_first = Image.fromarray(grey).convert("RGB")
    want = (np.array(rgb_first.resize((size, size), Image.BILINEAR)) if crop_pct is None
            else np.array(images._resize_crop(rgb_first, size, crop_pct)))
    assert np.array_equal(decode_image(img, 3, size, crop_pct), want)


def _peak_decode_bytes(data: bytes, channels: int, size: int, crop_pct: float | None = None) -> int:
    """Resident bytes decode_image adds at its peak, measured in a forked child (the kernel's high-water mark,
    ru_maxrss, against the child's resident size before decoding): exact, and a runaway decode cannot take the
    test process with it."""
    import multiprocessing
    import resource

    psutil = pytest.importorskip("psutil")
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        start = psutil.Process().memory_info().rss
        decode_image(data, channels, size, crop_pct)
        send.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start)

    proc = ctx.Process(target=child)
    proc.start()
    try:
        assert recv.poll(120), "the decode did not finish"
        return recv.recv()
    finally:
        proc.join(30)


def _cost(data: bytes, channels: int, size: int, crop_pct: float | None = None) -> int:
    with Image.open(io.BytesIO(data)) as img:
        return images.decode_cost(img, channels, size, crop_pct)


def test_a_64_megapixel_16bit_png_decodes_in_a_fraction_of_the_memory():
    """A ~150 KB 16-bit PNG of 8000 x 8000 held 1.6 GB while decoding (float64 copies of the whole image); now the
    image (128 MB), its 8-bit version (64 MB) and tiles: under 300 MB, and under what decode_cost declares."""
    from tests.conftest import big_png

    data = big_png(8000, 8000)
    assert len(data) < 200_000
    peak = _peak_decode_bytes(data, 1, 32)
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert peak <= _cost(data, 1, 32)


@pytest.mark.parametrize("kind, channels, crop_pct", [
    ("16-bit grey PNG", 3, None), ("16-bit grey PNG", 1, 0.875), ("float TIFF", 1, None), ("float TIFF", 3, 0.875),
    ("RGBA PNG", 3, None), ("RGBA PNG", 1, None), ("16-bit RGBA PNG, 4,000,000 x 1", 3, None),
    ("16-bit grey PNG, 1 x 4,000,000", 3, 1.0), ("8-bit grey PNG, 4,000,000 x 1", 1, 1.0),
])
def test_decode_cost_bounds_what_decoding_holds(kind, channels, crop_pct):
    """The server admits decodes by decode_cost (read from the header): it must cover the measured peak of the
    costliest kinds of image, at 16 Mpx, and of extreme aspect ratios (whose resize is box-reduced first: a
    4,000,000 x 1 image cropped to 8 x 8 used to resize to 32,000,000 x 8 first, 256 MB)."""
    from tests.conftest import big_float_tiff, big_png

    data = {"16-bit grey PNG": lambda: big_png(4000, 4000), "float TIFF": lambda: big_float_tiff(4000, 4000),
            "RGBA PNG": lambda: big_png(4000, 4000, 8, 6),
            "16-bit RGBA PNG, 4,000,000 x 1": lambda: big_png(4_000_000, 1, 16, 6),
            "16-bit grey PNG, 1 x 4,000,000": lambda: big_png(1, 4_000_000),
            "8-bit grey PNG, 4,000,000 x 1": lambda: big_png(4_000_000, 1, 8, 0)}[kind]()
    size = 8 if "," in kind else 32
    peak, cost = _peak_decode_bytes(data, channels, size, crop_pct), _cost(data, channels, size, crop_pct)
    assert peak <= cost, f"{kind}: peak {peak / 2**20:.0f} MiB over the declared {cost / 2**20:.0f} MiB"
    if "," in kind:
        assert peak < 100 * 2**20, f"{kind}: {peak / 2**20:.0f} MiB"
    out = decode_image(data, channels, size, crop_pct)
    assert out.shape == (size, size, channels)


# Reads every path given with decode_image (the libpng fast path and Pillow's) and peek_image, printing what it saw.
SPECIAL_READER = """
import sys
from tudui.data.images import BadImage, decode_image, peek_image
for path in sys.argv[1:]:
    for crop in (None, 0.875):
        try:
            decode_image(path, 1, 8, crop)
        except BadImage as e:
            print(e.kind, e.reason)
    print(peek_image(path))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX FIFOs and /dev/zero")
def test_fifos_and_devices_are_refused_without_being_read(tmp_path):
    """A FIFO named x.png blocked its reader for ever; a link x.png -> /dev/zero was read without end (MemoryError
    or a full RAM). Read in a child process under a 60 s timeout and a 2 GiB data-segment limit, so a regression
    fails the test instead of hanging it or filling the machine's memory."""
    fifo, zero = tmp_path / "fifo.png", tmp_path / "zero.png"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")

    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    out = forkserver.run([sys.executable, "-c", SPECIAL_READER, str(fifo), str(zero)], capture_output=True, text=True,
                         timeout=60, rlimit_data=2 << 30, env=env)  # bytes
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["not-a-file a FIFO, not a regular file"] * 2 + ["None"] + \
        ["not-a-file a character device, not a regular file"] * 2 + ["None"]


def test_a_file_is_read_up_to_the_size_it_had_when_opened(tmp_path):
    """A file that grows while it is read (or a file system that reports one size and delivers more) ends at its
    stat'ed size."""
    path = tmp_path / "grows.png"
    path.write_bytes(b"x" * 10)
    with images.open_regular(path) as f:
        with open(path, "ab") as w:
            w.write(b"y" * 100)
        assert f.read() == b"x" * 10
        assert f.seek(0, io.SEEK_END) == 10 and f.seek(4) == 4 and f.read(3) == b"xxx"
    with pytest.raises(IsADirectoryError):
        images.open_regular(tmp_path)


# --- JPEG DCT scaling against torchvision's full decode ---------------------------------------------------------------
def _real_jpegs() -> dict[str, bytes]:
    """Real photos as JPEG files: scikit-learn's two sample photos (427x640) and matplotlib's Grace Hopper (512x600),
    and crops of the first two saved as JPEGs again (424x424, 640x424 and 258x258, the course's JPEGs' size)."""
    import matplotlib
    import sklearn

    paths = [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    photos = {p.name: p.read_bytes() for p in paths}
    photos["grace_hopper.jpg"] = (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()
    for p in paths:
        with Image.open(p) as im:
            for box in [(0, 0, 424, 424), (0, 0, 640, 424), (100, 50, 358, 308)]:
                photos[f"{p.stem}-{box[2] - box[0]}x{box[3] - box[1]}.jpg"] = _png(im.crop(box), format="JPEG",
                                                                                   quality=95)
    return photos


def _torchvision(data: bytes, size: int, crop_pct: float | None) -> np.ndarray:
    """torchvision's pipeline: the full decode, Resize((size, size)), or Resize(short side) + CenterCrop(size)."""
    from torchvision import transforms as T

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if crop_pct is None:
        return np.asarray(T.Resize((size, size))(img))
    return np.asarray(T.CenterCrop(size)(T.Resize(images.resize_side(size, crop_pct))(img)))


def test_dct_scaled_jpegs_give_torchvisions_pixels_on_real_photos():
    """Where decoding a JPEG at 1/2, 1/4 or 1/8 of its size is used, the pixels are a full decode's to within a
    fraction of a grey level on average (drafting to 2x the output side, with the partial last block stretching the
    picture, was up to 6.6 levels off)."""
    drafted = 0
    for name, data in _real_jpegs().items():
        for size in (8, 16, 32, 64, 128, 224):
            for crop_pct in (None, 0.875):
                with Image.open(io.BytesIO(data)) as full:
                    drafted += images.open_image(data, draft=images._draft_side(size, crop_pct)).size != full.size
                got = decode_image(data, 3, size, crop_pct).astype(np.int16)
                diff = np.abs(got - _torchvision(data, size, crop_pct))
                assert diff.mean() <= 0.25 and diff.max() <= 3, (name, size, crop_pct, diff.mean(), diff.max())
    assert drafted >= 20  # the speed-up is still used: most photos at the small sizes


def test_dct_scaled_jpegs_give_a_models_probabilities_within_1e3(fmnist):
    """The criterion: a model's softmax on a real photo decoded by tudui is torchvision's to 1e-3. The judge is the
    course's CIFAR-10 net at 32x32 trained briefly on Fashion-MNIST (real weights: a random net hardly notices
    pixels); shown the same photos, drafting to 2x the side moved it by 0.019."""
    import torch
    import torch.nn.functional as F

    from tudui.models import create_model

    train, _ = fmnist
    torch.manual_seed(0)
    x = torch.from_numpy(np.array(train.images[:1500])).permute(0, 3, 1, 2).float() / 255  # (N, 1, 28, 28) in [0, 1]
    x = (F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True).expand(-1, 3, -1, -1) - 0.5) / 0.25
    y = torch.from_numpy(train.targets[:1500])
    net = create_model("cifar-net", 10, 3, 32)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(2):
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    net.eval()

    def probabilities(pixels: np.ndarray) -> torch.Tensor:  # (32, 32, 3) uint8 -> (10,)
        t = (torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            return net(t[None]).softmax(1)[0]

    for name, data in _real_jpegs().items():
        for crop_pct in (None, 0.875):
            ours = probabilities(decode_image(data, 3, 32, crop_pct))
            theirs = probabilities(_torchvision(data, 32, crop_pct))
            assert (ours - theirs).abs().max().item() <= 1e-3, (name, crop_pct)
