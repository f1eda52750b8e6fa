"""`--logger mlflow`: the options, every epoch's metrics, the pictures and best.pt logged to MLflow, read back through
MLflow's own client; a tracker that fails warns once and the run goes on."""
from __future__ import annotations

import csv
import json
import sys

import pytest

import tudui
from tudui import cli

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TINY = dict(data="digits", model="fast", epochs=2, batch_size=64, subset=200, tensorboard=False)


@pytest.mark.slow  # a new MLflow database takes ~10 s to set up
def test_a_run_logged_to_mlflow_reads_back(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = tudui.train(**TINY, project=str(tmp_path), name="logged", logger="mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tudui").experiment_id])
    assert run.info.run_name == "logged" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.003" and run.data.params["subset"] == "200"
    with open(r.run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in history] == [int(x["epoch"]) for x in rows] == [1, 2]
    assert [m.value for m in history] == pytest.approx([float(x["val_top1"]) for x in rows], abs=1e-5)  # csv: 6 digits
    metrics = json.loads((r.run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_top1_final"] == pytest.approx(metrics["test"]["top1"])
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "config.yaml", "results.csv", "curves.png", "confusion_matrix.png"} <= artefacts
    assert (tmp_path / "mlruns").is_dir()


class ServerGoneAfterStart:
    """An MLflow client whose server accepts the run and its options, then stops answering."""

    calls = 0

    def __init__(self, tracking_uri):
        pass

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name, artifact_location=None):
        return "1"

    def create_run(self, experiment, run_name, tags):
        return type("Run", (), {"info": type("Info", (), {"run_id": "r"})})

    def log_batch(self, run_id, metrics=(), params=()):
        if metrics:
            ServerGoneAfterStart.calls += 1
            raise ConnectionError("connection refused")


def test_a_tracker_that_fails_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import mlflow.tracking

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", ServerGoneAfterStart)
    r = tudui.train(**TINY, project=str(tmp_path), plots=False, logger="mlflow")
    err = capsys.readouterr().err
    assert err.count("warning: MLflow logging stopped (epoch 1: connection refused)") == 1, err
    assert "warning: MLflow" not in err.replace("warning: MLflow logging stopped (epoch 1", "", 1)
    assert ServerGoneAfterStart.calls == 1  # not called again after the failure
    assert (r.run_dir / "metrics.json").is_file() and len(r.history) == 2


def test_logger_mlflow_without_mlflow_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    code = cli.main(["train", "--data", "digits", "--logger", "mlflow", "--project", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --logger mlflow needs MLflow: pip install 'tudui[mlflow]' (or drop --logger)\n"
    assert list(tmp_path.iterdir()) == []
