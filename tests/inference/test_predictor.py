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
    preds = tudui.Predictor.from_checkpoint(r.best).predict(files, topk=3, batch_size=8)
    assert [str(p.source) for p in preds] == files  # order kept, bad file in place
    bad = [p for p in preds if p.error]
    assert len(bad) == 1 and "broken" in str(bad[0].source)
    good = {str(p.source): p for p in preds if not p.error}
    hits = sum(good[paths[i]].label == test.classes[test.targets[i]] for i in range(20))
    assert hits >= 14
    assert all(len(p.topk) == 3 and np.all(np.diff([v for _, v in p.topk]) <= 0) for p in good.values())
    full = tudui.Predictor.from_checkpoint(r.best).predict(paths[:2], topk=99)[0].topk
    assert len(full) == 10 and abs(sum(v for _, v in full) - 1) < 1e-5


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
