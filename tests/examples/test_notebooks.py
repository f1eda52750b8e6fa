"""examples/course.ipynb and its Chinese twin run end to end in a real Jupyter kernel (nbclient; offline, a small
sample of Fashion-MNIST, one epoch), one kernel for both, so the notebooks the docs link cannot drift from the code.
Each cell's outputs are checked for what a learner should see: the epoch table and the bar while training, the
run's summary, its pictures inline once each, and predictions as a table of thumbnails."""
from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

NOTEBOOKS = [REPO / "examples" / "course.ipynb", REPO / "examples" / "course.zh-CN.ipynb"]
TINY = "TRAIN_IMAGES, VAL_IMAGES, EPOCHS = 200, 100, 1\nWORK = 'runs/notebook'"
CELL_TIMEOUT_S = 120  # far above a cell's few seconds: only a hang reaches it


def tiny(nb):
    """The notebook with its `parameters` cell set to a tiny sample and one epoch."""
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "TRAIN_IMAGES, VAL_IMAGES, EPOCHS = " in params[0].source
    params[0].source = TINY
    return nb


def outputs(cell, kind: str) -> list[dict]:
    """The cell's outputs holding MIME type `kind` (display_data and execute_result alike)."""
    return [o for o in cell.outputs if kind in o.get("data", {})]


def code_cell(nb, starts: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts))


@pytest.fixture
def jupyter(tmp_path, monkeypatch):
    """A kernel spec running this interpreter on this checkout's src/, with Jupyter's and IPython's own files
    (connection files, profiles) under tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / "tudui-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tudui test", "language": "python", "env": {"PYTHONPATH": str(REPO / "src")}}))
    for var, sub in (("JUPYTER_PATH", "jupyter"), ("JUPYTER_DATA_DIR", "jupyter"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return "tudui-test"


def test_the_course_notebooks_run_end_to_end(jupyter, fmnist, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    books = [tiny(nbformat.read(p, as_version=4)) for p in NOTEBOOKS]
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(books[0], timeout=CELL_TIMEOUT_S, kernel_name=jupyter,
                                     shutdown_kernel="immediate", resources={"metadata": {"path": str(work)}})
    with client.setup_kernel():  # one kernel: the second notebook runs where the first left off, as a learner would
        for nb in books:
            client.nb = nb
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
    for nb in books:
        check_outputs(nb)
    assert (work / "runs" / "notebook" / "fashion" / "best.pt").is_file()
    assert (work / "runs" / "notebook" / "fashion.onnx").is_file()


def check_outputs(nb) -> None:
    train = code_cell(nb, "result = tudui.train(")
    assert outputs(train, "application/vnd.jupyter.widget-view+json"), "no progress widget"  # tqdm's notebook bar
    table = outputs(train, "text/html")[0]["data"]["text/html"]  # the epoch table, displayed before the result
    assert "<th>train_loss</th>" in table and "<td>1/1</td>" in table
    result = train.outputs[-1]
    assert result["output_type"] == "execute_result"
    assert result["data"]["text/plain"].startswith("RunResult(") and "best epoch 1" in result["data"]["text/plain"]
    assert "<td>best epoch</td><td>1</td>" in result["data"]["text/html"]
    assert "data:image/png;base64," in result["data"]["text/html"]  # the curves under the summary
    stdout = "".join(o.get("text", "") for o in train.outputs if o.get("name") == "stdout")
    assert "epoch 1/1  train_loss" not in stdout and "done: best epoch 1" in stdout  # the table, not the lines
    for starts, pictures in (('result.show("batch")', 1), ('result.show("curves")', 1),
                             ('result.show("confusion")', 2)):
        cell = code_cell(nb, starts)
        # each displayed once, inline, and nothing else: the images show() returns add no text or second copy
        assert [o["output_type"] for o in cell.outputs] == ["display_data"] * pictures, cell.outputs
        assert len(outputs(cell, "image/png")) == pictures
    predictions = code_cell(nb, "new_images = ").outputs[-1]["data"]["text/html"]
    assert predictions.count('<img src="data:image/png;base64,') == 6 and "<th>top classes</th>" in predictions
    assert code_cell(nb, "exported = ").outputs[-1]["data"]["text/plain"].endswith("fashion.onnx')")


def test_the_chinese_notebook_is_the_english_one_in_chinese():
    nbformat = pytest.importorskip("nbformat")
    en, zh = (nbformat.read(p, as_version=4) for p in NOTEBOOKS)
    assert [c.cell_type for c in en.cells] == [c.cell_type for c in zh.cells]
    assert [c.source for c in en.cells if c.cell_type == "code"] == \
        [c.source for c in zh.cells if c.cell_type == "code"]
    for cell in (c for c in zh.cells if c.cell_type == "markdown"):
        assert any("\u4e00" <= ch <= "\u9fff" for ch in cell.source), cell.source
    for nb in (en, zh):
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
