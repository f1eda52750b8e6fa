"""`tudui runs`: a folder of runs as one table (a finished run and one stopped mid-run), and `runs compare`."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

import tudui
from tudui import cli
from tudui.engine.callbacks import Callback
from tudui.reporting.runs import list_runs


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, run, row, val):
        raise RuntimeError("the machine went away")


@pytest.fixture(scope="module")
def runs_folder(digits_run, tmp_path_factory):
    """A copy of the shared digits run (3 epochs, finished) and a run stopped by a crash after epoch 1 of 2."""
    folder = tmp_path_factory.mktemp("runs")
    shutil.copytree(digits_run.run_dir, folder / "digits-run")
    with pytest.raises(RuntimeError, match="went away"):
        tudui.train(data="digits", model="fast", epochs=2, batch_size=32, lr=0.01, subset=200, project=str(folder),
                    name="crashed", tensorboard=False, plots=False, callbacks=[StopAfterFirstEpoch()])
    return folder


def test_every_run_with_its_figures_and_the_options_that_differ(runs_folder, digits_run):
    rows = {r.run: r for r in list_runs(runs_folder)}
    assert set(rows) == {"digits-run", "crashed"}
    done, crashed = rows["digits-run"], rows["crashed"]
    metrics = json.loads((digits_run.run_dir / "metrics.json").read_text())
    assert (done.state, done.epochs, done.planned) == ("done", 3, 3)
    assert done.val == metrics["val"]["top1"] and done.test == metrics["test"]["top1"] and done.data == "digits"
    first = (runs_folder / "crashed/results.csv").read_text().splitlines()
    assert (crashed.state, crashed.epochs, crashed.planned, crashed.test) == ("stopped", 1, 2, None) and len(first) == 2
    assert crashed.val == pytest.approx(float(first[1].split(",")[first[0].split(",").index("val_top1")]))
    # what differs: the options given differently; what both share is not listed
    assert {"lr", "epochs", "batch_size", "subset"} <= set(done.differs) and "seed" not in done.differs
    assert (done.differs["lr"], crashed.differs["lr"]) == (0.003, 0.01)
    assert [r.run for r in list_runs(runs_folder, sort="epochs")] == ["digits-run", "crashed"]
    assert [r.run for r in list_runs(runs_folder, sort="test")] == ["digits-run", "crashed"]


def test_runs_command_table_json_and_compare(runs_folder, tmp_path, capsys):
    assert cli.main(["runs", str(runs_folder), "--sort", "run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "date", "data", "model"]
    assert lines[2].startswith("crashed") and lines[2].split()[-1] == "stopped" and " 1/2 " in lines[2]
    assert lines[3].startswith("digits-run") and lines[3].split()[-1] == "done" and " 3/3 " in lines[3]
    assert cli.main(["runs", str(runs_folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sorted(r["run"] for r in got) == ["crashed", "digits-run"] and all("options" not in r for r in got)

    png = tmp_path / "both.png"
    assert cli.main(["runs", "compare", str(runs_folder / "digits-run"), str(runs_folder / "crashed"),
                     "--out", str(png)]) == 0
    out = capsys.readouterr().out
    lr_row = next(line for line in out.splitlines() if line.startswith("lr "))
    assert lr_row.split()[1:] == ["0.003", "0.01"]
    assert f"wrote {png}" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1200, 400)


def test_compare_needs_run_folders(tmp_path, capsys):
    assert cli.main(["runs", "compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a run folder" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
