"""Experiment trackers beside TensorBoard, as callbacks (`--logger mlflow`, `--logger wandb`): rank 0 only, like
every callback (engine/callbacks.py).

A tracker is a guest in the run: one that fails (a server gone, a full disk) prints one warning and is not called
again, and the training goes on.
"""
from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

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


def wandb_available() -> None:
    """A one-line error before training when --logger wandb cannot work here."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise TuduiError("--logger wandb needs Weights & Biases: pip install 'tudui[wandb]' (or drop --logger)") \
            from None


def _numeric(values: dict) -> dict[str, float]:
    """The finite numbers of a results.csv row or a summary (no text, no booleans, no NaN)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _final(result) -> dict[str, float]:
    """The best checkpoint's validation and test figures, as `val_top1_final`, `test_top1_final`, ..."""
    return {f"{split}_{k}_final": v for split, m in (("val", result.val), ("test", result.test)) if m
            for k, v in m.items() if k in ("top1", "top5", "loss", "balanced_accuracy", "macro_f1")}


class TrackerCallback(Callback):
    """What every tracker shares: a failure of the tracker prints one warning and stops it; the training goes on."""

    tracker = "the tracker"

    def __init__(self, project: str | Path) -> None:
        self.project = Path(project)
        self.failed = False

    def _guard(self, what: str, action) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as e:  # any failure of the tracker: the run itself must go on
            self.failed = True
            print(f"warning: {self.tracker} logging stopped ({what}: "
                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); the training goes on",
                  file=sys.stderr, flush=True)


class MLflowCallback(TrackerCallback):
    """One MLflow run per tudui run, in the experiment `tudui`: the options as parameters, each epoch's results.csv
    row as metrics (step = epoch), the final validation and test figures, the pictures, config.yaml, results.csv
    and best.pt as artefacts. Where: $MLFLOW_TRACKING_URI, else PROJECT/mlflow.db (artefacts in PROJECT/mlruns)."""

    tracker = "MLflow"

    def __init__(self, project: str | Path) -> None:
        super().__init__(project)
        self.client = self.run_id = None

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
        metrics = [Metric(k, v, now, step) for k, v in _numeric(values).items()]
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
            self._metrics(_final(result) | {"best_epoch": result.best_epoch}, run.epoch)
            files = [run.run_dir / n for n in ARTIFACTS] + sorted(run.run_dir.glob("*.png"))
            for f in files:
                if f.is_file():
                    self.client.log_artifact(self.run_id, str(f))
            self.client.set_terminated(self.run_id)

        self._guard("the run's end", finish)


# Where W&B sends runs when $WANDB_BASE_URL does not say: a run goes online only when this answers (and a key is set)
WANDB_HOST = "https://api.wandb.ai"
WANDB_CONNECT_S = 2.0  # seconds to wait for the host before logging offline


def wandb_mode() -> tuple[str, str | None]:
    """(W&B's mode, why offline): $WANDB_MODE when set; else online where an API key is set ($WANDB_API_KEY, or
    `wandb login`'s netrc entry) and the host answers within WANDB_CONNECT_S, offline otherwise (`wandb sync`
    uploads an offline run later)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode, None
    url = urlparse(os.environ.get("WANDB_BASE_URL") or WANDB_HOST)
    host = url.hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        import netrc

        try:
            if not netrc.netrc().authenticators(host):
                return "offline", "no API key"
        except (OSError, netrc.NetrcParseError):
            return "offline", "no API key"
    try:
        socket.create_connection((host, url.port or (443 if url.scheme == "https" else 80)), WANDB_CONNECT_S).close()
    except OSError:
        return "offline", f"{host} cannot be reached"
    return "online", None


class WandbCallback(TrackerCallback):
    """One W&B run per tudui run, in the project $WANDB_PROJECT (default `tudui`), named as the run folder: the options
    as its config, each epoch's results.csv row as metrics (step = epoch), the final validation and test figures in
    its summary, the pictures as images, config.yaml, results.csv and best.pt saved with it. Its files go to
    PROJECT/wandb/ ($WANDB_DIR/wandb/ when set); offline (wandb_mode) they stay there until `wandb sync`."""

    tracker = "W&B"

    def __init__(self, project: str | Path) -> None:
        super().__init__(project)
        self.run = None

    def on_fit_start(self, run) -> None:
        self._guard("starting the run", lambda: self._start(run))

    def _start(self, run) -> None:
        import wandb

        mode, why = wandb_mode()
        where = Path(os.environ.get("WANDB_DIR") or self.project)
        where.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tudui"), name=run.run_dir.name,
                              dir=str(where), config=run.cfg.to_dict(), mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True))
        if why is not None:
            print(f"W&B: offline ({why}): the run is kept in {where / 'wandb'}; `wandb sync` uploads it", flush=True)

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        if self.run is not None:
            self._guard(f"epoch {row['epoch']}", lambda: self.run.log(
                _numeric({k: v for k, v in row.items() if k != "epoch"}), step=int(row["epoch"])))

    def on_fit_end(self, run, result) -> None:
        if self.run is None:
            return

        def finish() -> None:
            import wandb

            self.run.summary.update(_final(result) | {"best_epoch": result.best_epoch})
            pictures = {f"pictures/{p.stem}": wandb.Image(str(p)) for p in sorted(run.run_dir.glob("*.png"))}
            if pictures:
                self.run.log(pictures, step=run.epoch)
            for name in ARTIFACTS:  # copies in the W&B run's files/ (what it uploads), as MLflow keeps artefacts
                if (run.run_dir / name).is_file():
                    shutil.copy2(run.run_dir / name, Path(self.run.dir) / name)
            self.run.finish()

        self._guard("the run's end", finish)
        if self.failed and self.run is not None:
            try:  # a run left open would be joined by the next one in this process
                self.run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - already said once
                pass
