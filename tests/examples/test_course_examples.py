"""Every script of examples/course/ runs to the end with tiny settings on real offline data (so the docs that point
at them cannot drift). Each script checks its own results with asserts; here the exit code and one line it prints."""
import os
import re
import sys

import pytest

from tests import forkserver
from tests.conftest import REPO, run_cli

EXAMPLES = REPO / "examples" / "course"
# script -> (tiny arguments, a line it must print); {data}: a small class-folder dataset exported below,
# {out}: a temporary work folder
TINY = {
    "01_data.py": (["--limit", "200", "--out", "{out}"], "class folders: 200 train / 50 val images"),
    "02_network.py": ([], "vgg16 classifier, head appended: Linear(in_features=1000, out_features=10"),
    "03_train.py": (["--data", "{data}", "--epochs", "1", "--out", "{out}"], "one epoch, val top-1 by loss:"),
    "04_save_load_predict.py": (["--data", "{data}", "--epochs", "1", "--out", "{out}"], "like_airplane.png"),
    "05_blitz.py": (["--data", "{data}", "--epochs", "1", "--out", "{out}"], "hardest class:"),
}


def same_probabilities_in_python_and_shell(stdout: str) -> None:
    """04 prints each image's top-3 from Predictor and then from `tudui predict`: the same numbers (the same TTA
    setting on both), or a learner sees two answers for one image with nothing saying why."""
    python, _, shell = stdout.partition("the same images from the shell")
    assert shell, stdout[-3000:]
    rows = re.findall(r"^(\S+)\s+true .+? -> (.+)$", python, re.M)  # (file name, "Bag 93.1%, Coat 4.2%, ...")
    assert len(rows) == 7, python[-3000:]  # 6 exported test images and the RGBA one
    lines = shell.splitlines()
    for name, topk in rows:
        line = next((ln for ln in lines if re.search(rf"[/\\]{re.escape(name)}\s", ln)), None)
        assert line is not None, f"{name} missing from `tudui predict`'s table:\n{shell}"
        assert "  ".join(topk.split(", ")) in line, f"Python says {topk}; the shell says {line}"


CHECKS = {"04_save_load_predict.py": same_probabilities_in_python_and_shell}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, fmnist):
    """300 training and 100 validation images of real Fashion-MNIST, written by `tudui data export`."""
    root = tmp_path_factory.mktemp("course_data")
    for split, folder, n in (("train", "train", 300), ("test", "val", 100)):
        r = run_cli("data", "export", "fashion-mnist", "--split", split, "--limit", n, "--out", root / folder)
        assert r.returncode == 0, r.stderr
    return root


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)


@pytest.mark.parametrize("script", sorted(TINY))
def test_example_runs(script, request, tmp_path):
    args, expected = TINY[script]
    data = request.getfixturevalue("small_data") if "{data}" in args else None
    args = [a.format(data=data, out=tmp_path / "out") for a in args]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    r = forkserver.run([sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert expected in r.stdout, r.stdout[-3000:]
    assert "Traceback" not in r.stderr
    if script in CHECKS:
        CHECKS[script](r.stdout)
