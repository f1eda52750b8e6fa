"""`tudui predict` of a stranger's checkpoint that names a model.py beside it, as a user would run it: refused with one
line before the file runs; run with --trust-code."""
from __future__ import annotations

import numpy as np
import torch.nn as nn
from PIL import Image

from tests.conftest import run_cli
from tudui.core.checkpoint import make_checkpoint, save_checkpoint
from tudui.data import DataSpec

EVIL = '''
import pathlib
import torch.nn as nn


class Net(nn.Module):
    pathlib.Path({marker!r}).write_text("this file ran")  # a class body runs whenever the file is loaded

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def test_a_strangers_checkpoint_runs_no_code_without_consent(tmp_path):
    download = tmp_path / "download"
    download.mkdir()
    marker = tmp_path / "MARKER"
    (download / "model.py").write_text(EVIL.format(marker=str(marker)))
    arch = {"name": "Net", "num_classes": 2, "in_channels": 1, "img_size": 4, "kwargs": {},
            "source": {"path": "/elsewhere/model.py", "relpath": "model.py", "name": "Net", "args": {}}}
    twin = nn.Module()  # Net's layers, built here: the test itself never imports the file
    twin.fc = nn.Linear(16, 2)
    save_checkpoint(make_checkpoint(twin, arch, DataSpec(["a", "b"], 4, 1, [0.5], [0.25]).to_dict()),
                    download / "best.pt")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    env = {"TUDUI_CACHE": str(tmp_path / "cache")}  # an empty store of files trained with: this user trained nothing

    r = run_cli("predict", download / "best.pt", image, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: not running "), r.stderr
    assert str(download / "model.py") in r.stderr and "--trust-code" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    r = run_cli("predict", download / "best.pt", image, "--trust-code", env=env)
    assert r.returncode == 0, r.stderr
    assert marker.exists()
