"""Fuzzing: label files, CSVs and image bytes give a result or a clear TuduiError, never a crash."""
from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from tudui.data.check import check_data
from tudui.data.folders import read_csv, read_label_files
from tudui.data.images import BadImage, decode_image
from tudui.data.spec import DataSpec
from tudui.core.errors import TuduiError
from tudui.inference.predictor import Predictor

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _png(w: int = 12, h: int = 10, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _huge_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h pixels, with a tiny (wrong) body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


PNG, JPEG = _png(), _jpeg()
image_bytes = st.one_of(
    st.binary(max_size=2048),
    st.integers(0, len(PNG) - 1).map(lambda n: PNG[:n]),
    st.integers(0, len(JPEG) - 1).map(lambda n: JPEG[:n]),
    st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(lambda wh: _huge_png(*wh)),
    st.tuples(st.integers(0, len(PNG) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda t: PNG[:t[0]] + t[1] + PNG[t[0] + len(t[1]):]),  # bytes flipped inside a valid PNG
)


@FUZZ
@given(image_bytes)
def test_decode_image_gives_pixels_or_bad_image(data):
    try:
        arr = decode_image(data, 3, 8)
    except BadImage as e:
        assert e.reason
    else:
        assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8


def test_huge_declared_size_is_refused():
    with pytest.raises(BadImage, match="over the limit|too many pixels"):
        decode_image(_huge_png(100_000, 100_000), 3, 8)


@pytest.fixture(scope="module")
def predictor():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    return Predictor(model, DataSpec(["a", "b", "c"], 8, 3, [0.5] * 3, [0.25] * 3))


@FUZZ
@given(st.lists(image_bytes, min_size=1, max_size=3))
def test_predict_never_crashes(predictor, blobs):
    preds = predictor.predict(blobs + [PNG], topk=2)
    assert len(preds) == len(blobs) + 1
    assert preds[-1].error is None and len(preds[-1].topk) == 2
    for p in preds:
        assert (p.error is None) != (not p.topk)


@settings(max_examples=15, deadline=None)
@given(image_bytes)
def test_data_check_reports_any_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        for c in ("a", "b"):
            Path(d, c).mkdir()
            Path(d, c, "ok.png").write_bytes(_png(12, 10 + (c == "b")))
        Path(d, "a", "fuzz.png").write_bytes(data)
        report = check_data([d])
        errors = [i for i in report.errors if i.path.endswith("fuzz.png")]
        try:  # what training does with the same bytes decides what the check must say
            decode_image(data, 3, 8)
        except BadImage:
            # skipped by training: exactly one error names it, with its kind and why; the two good images counted
            assert len(errors) == 1, report.issues
            assert errors[0].kind in {"zero-byte", "corrupt", "not-an-image", "too-large"} and errors[0].detail
            assert errors[0].kind != "zero-byte" or data == b""
            assert report.splits[0].images == 2 and report.splits[0].classes == {"a": 1, "b": 1}
        else:
            assert errors == [] and report.splits[0].images == 3 and report.splits[0].classes == {"a": 2, "b": 1}


csv_text = st.text(alphabet=st.sampled_from(list("ab,\"\n #\t.\\/x1é\r")), max_size=200)


@FUZZ
@given(csv_text)
@example("ab\na,b")  # a one-column header above two-column rows (an IndexError hypothesis found)
def test_csv_parser(text):
    with tempfile.TemporaryDirectory() as d:
        for name in ("a", "b", "x1"):
            Path(d, name).write_bytes(PNG)
        path = Path(d, "data.csv")
        path.write_text(text, encoding="utf-8")
        try:
            split = read_csv(path)
        except TuduiError as e:
            assert str(e)
        else:
            assert len(split.paths) == len(split.targets) > 0


@FUZZ
@given(st.lists(st.text(max_size=20), min_size=1, max_size=3))
def test_label_file_parser(labels):
    with tempfile.TemporaryDirectory() as d:
        for cls in ("ants", "bees"):
            Path(d, f"{cls}_image").mkdir()
            Path(d, f"{cls}_label").mkdir()
        for i, label in enumerate(labels):
            Path(d, "ants_image", f"{i}.png").write_bytes(PNG)
            Path(d, "ants_label", f"{i}.txt").write_text(label, encoding="utf-8", errors="surrogatepass")
        try:
            split = read_label_files(Path(d))
        except TuduiError as e:
            assert str(e)
        else:
            # one name per file: the folders' classes; several in one file: a multi-label split of the names
            assert (split.multi or set(split.classes) == {"ants", "bees"}) and len(split) == len(labels)
