"""`--logger mlflow` and `--logger wandb`: the options, every epoch's metrics, the pictures and best.pt logged to MLflow
(read back through MLflow's own client) and to W&B offline (read back from its run file); a tracker that fails warns
once and the run goes on."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


# --- Weights & Biases ------------------------------------------------------------------------------------------------
def _wandb_records(path):
    """Every record of an offline W&B run file (run-ID.wandb): after a 7-byte header (':W&B', magic, version), the
    LevelDB log format (32 KiB blocks of chunks: crc32c (4), length (2, little-endian), type (1: full, 2: first,
    3: middle, 4: last)), each record one protobuf `Record` of W&B's own."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, part, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(part))
            part = b""
    return records


def test_a_run_logged_to_wandb_offline_reads_back(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    # W&B's own caches, settings and logs in the test's folder too
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    r = tudui.train(**TINY, project=str(tmp_path), name="logged", plots=False, logger="wandb")
    assert "warning" not in capsys.readouterr().err
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = folder.glob("run-*.wandb")
    records = _wandb_records(run_file)
    kinds = [rec.WhichOneof("record_type") for rec in records]

    def items(updates) -> dict:
        return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in updates}

    (run,) = [rec.run for rec in records if rec.WhichOneof("record_type") == "run"]
    assert run.display_name == "logged" and run.project == "tudui"
    config = items(run.config.update)
    assert config["lr"] == 0.003 and config["subset"] == 200 and config["model"] == "fast"
    history = [items(rec.history.item) for rec in records if rec.WhichOneof("record_type") == "history"]
    with open(r.run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [h["_step"] for h in history] == [int(x["epoch"]) for x in rows] == [1, 2]
    assert [h["val_top1"] for h in history] == pytest.approx([float(x["val_top1"]) for x in rows], abs=1e-5)
    summary = {k: v for rec in records if rec.WhichOneof("record_type") == "summary"
               for k, v in items(rec.summary.update).items()}
    metrics = json.loads((r.run_dir / "metrics.json").read_text())
    assert summary["test_top1_final"] == pytest.approx(metrics["test"]["top1"])
    assert {"config.yaml", "results.csv", "best.pt"} <= {p.name for p in (folder / "files").iterdir()}
    assert "exit" in kinds  # the run was finished, not left open


class WandbGoneAfterStart:
    """A W&B run that starts, then fails to log (a full disk, a crashed service)."""

    calls = 0

    def __init__(self):
        self.summary, self.dir = {}, None

    def log(self, values, step=None):
        WandbGoneAfterStart.calls += 1
        raise OSError("No space left on device")

    def finish(self, exit_code=None):
        pass


def test_a_wandb_run_that_fails_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "init", lambda **kwargs: WandbGoneAfterStart())
    monkeypatch.setenv("WANDB_MODE", "offline")
    r = tudui.train(**TINY, project=str(tmp_path), plots=False, logger="wandb")
    err = capsys.readouterr().err
    assert err.count("warning: W&B logging stopped (epoch 1: No space left on device); the training goes on") == 1, err
    assert err.count("warning") == 1 and WandbGoneAfterStart.calls == 1  # not called again after the failure
    assert (r.run_dir / "metrics.json").is_file() and len(r.history) == 2


def test_wandb_goes_offline_without_a_key_or_a_network(monkeypatch, tmp_path):
    from tudui.reporting import loggers

    monkeypatch.setenv("WANDB_MODE", "online")
    assert loggers.wandb_mode() == ("online", None)  # the user's word is taken
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` entry
    assert loggers.wandb_mode() == ("offline", "no API key")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket.socket() as s:  # a port of this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert loggers.wandb_mode() == ("offline", "127.0.0.1 cannot be reached")


def test_logger_wandb_without_wandb_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    code = cli.main(["train", "--data", "digits", "--logger", "wandb", "--project", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --logger wandb needs Weights & Biases: pip install 'tudui[wandb]' (or drop " \
                                "--logger)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` with an sqlite backend and its artefacts in tmp_path, on a port the OS gives; its URL.
    Its process group (the server and the workers it starts) is stopped at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "served-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group this test started: the server and its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow  # an mlflow server takes ~10-20 s to start and set up its database
def test_a_run_logged_to_a_real_mlflow_server_reads_back(tmp_path, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    r = tudui.train(**TINY, project=str(tmp_path / "runs"), name="served", logger="mlflow")
    client = MlflowClient(mlflow_server)  # a new client over HTTP: what the server stored
    (run,) = client.search_runs([client.get_experiment_by_name("tudui").experiment_id])
    assert run.info.run_name == "served" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.003" and run.data.tags["tudui.run_dir"] == str(r.run_dir)
    with open(r.run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([float(x["val_top1"]) for x in rows], abs=1e-5)
    assert {"best.pt", "config.yaml", "results.csv", "curves.png"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id)}
    served = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "back"))
    assert Path(served).read_bytes() == (r.run_dir / "config.yaml").read_bytes()
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # to the server, not the local store
