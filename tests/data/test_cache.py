"""The decoded-image disk cache: hits, misses, what a change invalidates, a killed write, unreadable files."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from tudui.core.errors import TuduiError
from tudui.data.cache import cached_split
from tudui.data.spec import Layout
from tudui.data.folders import read_class_folders
from tudui.data.images import decode_image, open_image

from tests import forkserver
from tests.conftest import REPO, write_class_folders, write_photos

LAYOUT = Layout(3, 24, 0.875)  # evaluation rows: short side 27, centre 24 x 24


def _folder(tmp_path, fmnist, per_class=5):
    return read_class_folders(write_photos(tmp_path / "photos", fmnist[1], per_class, classes=3))


def test_first_call_decodes_second_maps_the_same_rows(tmp_path, fmnist):
    split = _folder(tmp_path, fmnist)
    root = tmp_path / "cache"
    first = cached_split(split, LAYOUT, root=root)
    assert not first.hit and first.decoded == len(split) == 15 and first.reused == 0
    second = cached_split(split, LAYOUT, root=root)
    assert second.hit and second.decoded == 0 and second.path == first.path
    rows = np.asarray(second.split.images)
    assert rows.shape == (15, 24, 24, 3) and rows.dtype == np.uint8
    for path, row in zip(split.paths, rows):  # exactly what the model's evaluation decodes (Chinese paths too)
        assert "类" in path and np.array_equal(row, decode_image(path, 3, 24, 0.875))
    assert second.split.targets.tolist() == split.targets.tolist()
    # another size or crop is another entry
    assert not cached_split(split, Layout(3, 20, 0.875), root=root).hit
    assert not cached_split(split, Layout(3, 24, None), root=root).hit


def test_a_change_decodes_only_the_changed_and_added_files(tmp_path, fmnist):
    split = _folder(tmp_path, fmnist)
    root = tmp_path / "cache"
    old = cached_split(split, LAYOUT, root=root)
    changed, removed = split.paths[3], split.paths[7]
    Image.new("RGB", (60, 50), (250, 10, 10)).save(changed, quality=90)  # new size and mtime
    os.remove(removed)
    added = os.path.join(os.path.dirname(split.paths[0]), "new.jpg")
    Image.new("RGB", (70, 64), (10, 250, 10)).save(added, quality=90)
    now = read_class_folders(tmp_path / "photos")
    got = cached_split(now, LAYOUT, root=root)
    assert not got.hit and got.decoded == 2 and got.reused == len(now) - 2  # the changed and the new file only
    rows = np.asarray(got.split.images)
    for path, row in zip(now.paths, rows):
        assert np.array_equal(row, decode_image(path, 3, 24, 0.875)), path
    assert removed not in now.paths
    # the old entry recorded a file that has changed since: it can never be hit again, so it is gone
    assert not old.path.exists() and not old.path.with_suffix(".json").exists()
    assert cached_split(now, LAYOUT, root=root).hit


def test_unreadable_files_are_dropped_on_a_build_and_on_a_hit(tmp_path, fmnist, capfd):
    split = _folder(tmp_path, fmnist)
    with open(split.paths[4], "wb") as f:
        f.write(b"\xff\xd8\xff not really a jpeg")
    root = tmp_path / "cache"
    for _ in range(2):
        got = cached_split(split, LAYOUT, root=root)
        assert len(got.split) == 14 and got.split.dropped[-1] == split.paths[4]
        assert np.delete(split.targets, 4).tolist() == got.split.targets.tolist()  # labels stay with their images
        rel = os.path.relpath(split.paths[4], split.origin)
        assert f"skipped 1 unreadable image(s) in {split.origin}: {rel} (" in capfd.readouterr().err
    with pytest.raises(TuduiError, match=rf"^1 unreadable image\(s\) in {re.escape(split.origin)}: {re.escape(rel)} "
                       r"\(.*\)\. Remove them, or train with --bad-images skip$"):
        cached_split(split, LAYOUT, "error", root=root)


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from tudui.data import cache
    from tudui.data.folders import read_class_folders
    real, count = cache._decode_one, [0]
    def slow(layout, path):  # decode 6 images, then say so and hang until killed, mid-write
        count[0] += 1
        if count[0] == 7:
            print("half", flush=True)
            time.sleep(600)
        return real(layout, path)
    cache._decode_one = slow
    cache.CHUNK = 2  # rows are written every 2 images, so the temp file has some
    split = read_class_folders(cache.Path(sys.argv[1]))
    cache.cached_split(split, cache.Layout(3, 24, 0.875), root=cache.Path(sys.argv[2]))
""")


def test_a_killed_write_is_never_used_and_is_cleaned_up(tmp_path, fmnist):
    split = _folder(tmp_path, fmnist)
    root = tmp_path / "cache"
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    child = forkserver.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "photos"), str(root)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        assert child.stdout.readline().strip() == "half" and time.monotonic() < deadline
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    folder = root / LAYOUT.tag
    leftovers = [p for p in folder.iterdir() if p.suffix != ".lock"]
    assert leftovers and all(p.name.endswith(".tmp") for p in leftovers)  # half-written rows, under a temp name
    assert any(p.stat().st_size > 0 for p in leftovers)
    got = cached_split(split, LAYOUT, root=root)
    assert not got.hit and got.decoded == len(split)  # nothing of the killed write was taken
    assert np.array_equal(np.asarray(got.split.images)[-1], decode_image(split.paths[-1], 3, 24, 0.875))
    assert not any(p.exists() for p in leftovers)  # the dead writer's temp file is removed
    assert cached_split(split, LAYOUT, root=root).hit


def test_two_processes_building_one_entry_take_turns(tmp_path, fmnist):
    split = _folder(tmp_path, fmnist)
    root = tmp_path / "cache"
    code = ("import sys; from tudui.data import cache; from tudui.data.folders import read_class_folders; "
            "r = cache.cached_split(read_class_folders(cache.Path(sys.argv[1])), cache.Layout(3, 24, 0.875), "
            "root=cache.Path(sys.argv[2])); print(r.hit, r.decoded)")
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    procs = [forkserver.Popen([sys.executable, "-c", code, str(tmp_path / "photos"), str(root)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert outs == [["False", "15"], ["True", "0"]]  # one decoded everything, the other found its entry


def test_jpeg_dct_scaling_decodes_far_fewer_pixels_for_the_same_result():
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((1024, 768), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert open_image(data).size == (1024, 768)
    assert open_image(data, draft=128).size == (256, 192)  # 1/4: the smallest scale with both sides >= 128
    assert open_image(data, draft=1000).size == (1024, 768)  # no smaller scale keeps 1000 px
    fast = decode_image(data, 3, 64)  # drafted where a scale keeps images.DRAFT_GAP x 64 px
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.int16)
    assert np.abs(fast.astype(np.int16) - full).max() <= 4  # what DCT scaling changes is within JPEG's own noise


def test_a_file_name_that_is_not_utf8_is_cached(tmp_path):
    """A Latin-1 file name (b'caf\\xe9.png', a str with a surrogate from os.listdir) stopped the run with a
    UnicodeEncodeError while hashing the cache key: the key and the entry's JSON hold the name's own bytes."""
    folder = os.fsencode(tmp_path / "photos")
    try:
        os.makedirs(folder + b"/cafe")
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    os.makedirs(folder + b"/tea")
    try:
        Image.new("RGB", (30, 30), (200, 10, 10)).save(folder + b"/cafe/caf\xe9.png")
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    Image.new("RGB", (30, 30), (10, 200, 10)).save(folder + b"/tea/t\xe9.jpg")
    Image.new("RGB", (30, 30), (10, 10, 200)).save(folder + b"/tea/plain.png")
    split = read_class_folders(tmp_path / "photos")
    root = tmp_path / "cache"
    first = cached_split(split, LAYOUT, root=root)
    second = cached_split(split, LAYOUT, root=root)
    assert not first.hit and first.decoded == 3 and second.hit and second.split.dropped == []
    for path, row in zip(split.paths, np.asarray(second.split.images)):
        assert np.array_equal(row, decode_image(path, 3, 24, 0.875))
    assert os.fsencode(split.paths[0]) == folder + b"/cafe/caf\xe9.png"


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def test_cache_ram_writes_nothing_but_the_run_folder(tmp_path, fmnist, monkeypatch):
    """`--cache ram` decodes into memory without writing a file: not into $TUDUI_CACHE, not into ~/.cache, not into
    the temp folder, not beside the images; the run folder is all a run adds. `--cache disk` (the control) does
    write its entry, so the check sees writes where there are some."""
    import tempfile

    import tudui
    from tudui.core.config import TrainConfig
    from tudui.data import build_data

    data = tmp_path / "data"
    write_photos(data / "train", fmnist[0], 4, classes=3)
    write_photos(data / "val", fmnist[1], 2, classes=3, seed=1)
    for name in ("cache", "home", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    opts = dict(data=str(data), model="fast", img_size=16, epochs=1, batch_size=4, plots=False, tensorboard=False,
                project=str(tmp_path / "runs"))
    before = _files(tmp_path)
    tudui.train(**opts, cache="ram", name="ram")
    added = _files(tmp_path) - before
    assert added and all(p.startswith("runs/ram/") for p in added), sorted(added)

    build_data(TrainConfig(data=[str(data)], img_size=16, cache="disk"))
    assert any(p.startswith("cache/") for p in _files(tmp_path) - before)  # the control: an entry was written


@pytest.mark.parametrize("model, why", [("fast", "needs inputs of at least 8x8"),  # the registry's size check
                                        ("linear-100", "input 1x6x6 does not fit")])  # the dry forward pass
def test_a_run_the_model_refuses_writes_no_cache(tmp_path, fmnist_folders, monkeypatch, model, why):
    """The model's size check comes before any image is decoded: a refused run leaves no decoded-image cache."""
    import torch

    import tudui
    from tudui.core.errors import TuduiError

    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    if model == "linear-100":  # a Linear that expects 10x10 pixels
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 10))
    with pytest.raises(TuduiError, match=why):
        tudui.train(data=str(fmnist_folders), model=model, img_size=6, epochs=1, project=str(tmp_path / "runs"),
                    plots=False, tensorboard=False)
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert written == [], written


@pytest.mark.parametrize("cache", ["disk", "ram"])
def test_skipped_images_are_named_relative_to_the_data_folder(tmp_path, fmnist, monkeypatch, capfd, cache):
    """The warning names the folder given once and each skipped file under it, not by its absolute path."""
    from tudui.data.factory import load_decoded
    from tudui.data.folders import read_folder_splits

    monkeypatch.setenv("TUDUI_CACHE", str(tmp_path / "cache"))
    write_class_folders(tmp_path / "my data" / "train", fmnist[0], 3)
    bad = tmp_path / "my data" / "train" / "Bag" / "broken.png"
    bad.write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    for given in ("my data", str(tmp_path / "my data")):  # relative and absolute, as typed
        split = read_folder_splits(given)["train"]
        got, _, _ = load_decoded(split, Layout(1, 28), cache=cache)
        err = capfd.readouterr().err
        assert len(got) == 30 and f"skipped 1 unreadable image(s) in {given}/train: Bag/broken.png (" in err, err
        assert str(tmp_path) not in err.split(f"in {given}/train: ")[1], err  # the listing: no absolute path
