"""Experiment trackers beside TensorBoard, as callbacks (`--logger mlflow`): rank 0 only, like every callback.

A tracker is a guest in the run: one that fails (a server gone, a full disk) prints one warning and is not called
again, and the training goes on.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from ..core.errors import TuduiError
from ..engine.callbacks import Callback

EXPERIMENT = "tudui"
ARTIFACTS = ("config.yaml", "results.csv", "best.pt")  # and every PNG of the run folder


def mlflow_available() -> None:
    """A one-line error before training when --logger mlflow cannot work here."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TuduiError("--logger mlflow needs MLflow: pip install 'tudui[mlflow]' (or drop --logger)") from None


class MLflowCallback(Callback):
    """One MLflow run per tudui run, in the experiment `tudui`: the options as parameters, each epoch's results.csv
    row as metrics (step = epoch), the final validation and test figures, the pictures, config.yaml, results.csv
    and best.pt as artefacts. Where: $MLFLOW_TRACKING_URI, else PROJECT/mlflow.db (artefacts in PROJECT/mlruns)."""

    def __init__(self, project: str | Path) -> None:
        self.project = Path(project)
        self.client = self.run_id = None
        self.failed = False

    def _guard(self, what: str, action) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as e:  # any failure of the tracker: the run itself must go on
            self.failed = True
            print(f"warning: MLflow logging stopped ({what}: {str(e).splitlines()[0] if str(e) else type(e).__name__});"
                  " the training goes on", file=sys.stderr, flush=True)

    def on_fit_start(self, run) -> None:
        self._guard("starting the run", lambda: self._start(run))

    def _start(self, run) -> None:
        import logging

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up lines are not tudui's
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            self.project.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(self.project / 'mlflow.db').resolve()}"
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else client.create_experiment(
            EXPERIMENT, artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI") else
            (self.project / "mlruns").resolve().as_uri())
        created = client.create_run(experiment, run_name=run.run_dir.name, tags={"tudui.run_dir": str(run.run_dir)})
        self.client, self.run_id = client, created.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in run.cfg.to_dict().items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        if self.run_id is not None:
            self._guard(f"epoch {row['epoch']}", lambda: self._metrics(
                {k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"])))

    def on_fit_end(self, run, result) -> None:
        if self.run_id is None:
            return

        def finish() -> None:
            final = {f"{split}_{k}_final": v for split, m in (("val", result.val), ("test", result.test)) if m
                     for k, v in m.items() if k in ("top1", "top5", "loss", "balanced_accuracy", "macro_f1")}
            self._metrics(final | {"best_epoch": result.best_epoch}, run.epoch)
            files = [run.run_dir / n for n in ARTIFACTS] + sorted(run.run_dir.glob("*.png"))
            for f in files:
                if f.is_file():
                    self.client.log_artifact(self.run_id, str(f))
            self.client.set_terminated(self.run_id)

        self._guard("the run's end", finish)
