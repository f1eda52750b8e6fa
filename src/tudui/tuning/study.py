"""An Optuna study whose trials are ordinary tudui runs.

Each trial resolves its TrainConfig exactly as `tudui train` does (engine/configure.py: the fixed options, the
trial's sampled ones) and trains it with engine's `fit` into PROJECT/tune/STUDY/trial-K, so any trial can be
evaluated, exported or continued like any run. The figure a trial reports after each epoch, and is judged by, is
the one its best.pt is chosen by (--best-by / --select-by: top-1, balanced accuracy or macro-F1) on the validation
split; the test split never chooses. TPE samples (--sampler random: independent random values); the median pruner
stops a trial whose figure after an epoch is below the median of earlier trials' at that epoch.

The study lives in Optuna's journal file in the study folder (several processes, or machines sharing the file
system, may run the same study at once and share its trials), or in a database (`storage`).

A worker killed in mid-trial (SIGKILL, a lost machine) leaves its trial "running" in the study and its run folder
unlocked (the kernel drops a dead process's lock: core/lock.py). The next `tudui tune` of the study marks that trial
failed and queues a trial that continues its run from last.pt (tudui's exact resume) with the same options, so no
finished epoch is trained again and the killed trial is not counted as a result twice.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

# draws a study's pictures into a folder (reporting/studies.py's draw_study, handed down by api):
# (study, folder, metric name) -> (the pictures written, a note for each that could not be drawn)
DrawStudy = Callable[["optuna.Study", Path, str], "tuple[list[Path], list[str]]"]

from ..core.config import TrainConfig, load_yaml, save_yaml
from ..core.errors import TuduiError
from ..core.files import RUN_LOCK, check_run_name
from ..core.lock import FileLock, Locked
from ..engine.callbacks import Callback
from ..engine.choices import BEST_BY_METRIC
from ..engine.configure import resolve_config
from ..engine.trainer import fit
from .space import load_space
from .workers import UNTIL_ENV, start_workers

if TYPE_CHECKING:
    import optuna


def import_optuna():
    """Optuna, an optional dependency (the `tune` extra): imported when a study runs, so `import tudui` and every
    other command work without it."""
    try:
        import optuna
    except ImportError:
        raise TuduiError("tudui tune needs Optuna, an optional dependency: pip install 'tudui[tune]'") from None
    return optuna

JOURNAL = "journal.log"
# --sampler: how each trial's values are chosen (the sampler is the process's own: workers of one study may differ)
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}  # optuna.samplers' classes
BEST_CONFIG = "best.yaml"
HISTORY_KEYS = {"top1": "val_top1", "balanced_accuracy": "val_balanced_acc", "macro_f1": "val_macro_f1"}  # results.csv
METRIC_NAMES = {"top1": "val top1", "balanced_accuracy": "val balanced acc", "macro_f1": "val macro-F1"}


def figure_key(cfg: TrainConfig) -> str:
    """The validation summary's key a run's best.pt is chosen by (top-1 where every epoch is best: --best-by last)."""
    return BEST_BY_METRIC.get(cfg.best_by, "top1")


class TrialReport(Callback):
    """Reports each epoch's validation figure to the trial, prunes it when the pruner says so, and records the
    trial's run folder, epochs and the best epoch's figure."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.value = trial, None

    def on_fit_start(self, run) -> None:
        self.trial.set_user_attr("run_dir", str(run.run_dir))
        key = figure_key(run.cfg)
        for row in run.history:  # a resumed run: the epochs it trained before count for this trial too
            figure = float(row[HISTORY_KEYS[key]])
            self.trial.report(figure, int(row["epoch"]))
            if int(row["epoch"]) == run.best_epoch:
                self.value = figure
            self.trial.set_user_attr("epochs", int(row["epoch"]))

    def on_epoch_end(self, run, row: dict, val: dict | None) -> None:
        optuna = import_optuna()
        if val is None:
            raise TuduiError("tudui tune needs a validation split to judge trials by; give --val-split above 0 or "
                             "data with a val/ folder")
        key = figure_key(run.cfg)
        figure = float(val[key])
        self.trial.set_user_attr("metric", key)
        self.trial.set_user_attr("epochs", run.epoch)
        if run.best_epoch == run.epoch:  # the epoch best.pt now holds
            self.value = figure
        self.trial.report(figure, run.epoch)
        if run.epoch < run.cfg.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {run.epoch} of {run.cfg.epochs}: {METRIC_NAMES.get(key, key)} "
                                     f"{100 * figure:.2f}% is below what the pruner keeps at that epoch")


@dataclass
class TrialRow:
    number: int
    state: str
    params: dict
    value: float | None
    epochs: int | None
    seconds: float | None
    run_dir: str | None


@dataclass
class TuneResult:
    """What a study holds after this process's trials: every trial, the best, where its config went."""

    study: str
    folder: Path
    storage: str
    metric: str
    trials: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_config: Path | None = None
    pictures: list[Path] = field(default_factory=list)
    worker: bool = False  # started by another `tudui tune --jobs K`, which prints the study's table
    notes: list[str] = field(default_factory=list)  # pictures that could not be drawn, and why


def study_folder(project: str | Path, study: str | None) -> tuple[str, Path]:
    """(name, folder) of the study: PROJECT/tune/NAME; without a name the first free study-N."""
    root = Path(project) / "tune"
    if study is not None:
        try:
            check_run_name(study)
        except TuduiError as e:
            raise TuduiError(str(e).replace("--name", "--study", 1).replace("--project", "PROJECT/tune")) from None
        return study, root / study
    n = 1
    while (root / f"study-{n}").exists():
        n += 1
    return f"study-{n}", root / f"study-{n}"


def open_study(name: str, folder: Path, storage: str | None, pruner: str, startup_trials: int,
               seed: int | None = None, sampler: str = "tpe") -> tuple[optuna.Study, str]:
    """The study (created, or loaded when it exists) and where it is stored."""
    optuna = import_optuna()
    if storage is None:
        folder.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        where = str(folder / JOURNAL)
        store = JournalStorage(JournalFileBackend(where))
    else:
        where = store = storage
    pruning = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0) \
        if pruner == "median" else optuna.pruners.HyperbandPruner(min_resource=1) if pruner == "hyperband" \
        else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True,
                                    sampler=getattr(optuna.samplers, SAMPLERS[sampler])(seed=seed),
                                    pruner=pruning)
    except (ImportError, ModuleNotFoundError) as e:
        raise TuduiError(f"--storage {storage} needs a database driver that is not installed ({e}); "
                         "pip install it (e.g. psycopg2-binary for postgresql://, pymysql for mysql+pymysql://)") \
            from None
    except Exception as e:  # a URL SQLAlchemy cannot parse or a server that does not answer
        if storage is None:
            raise
        raise TuduiError(f"cannot open the study in --storage {storage}: {str(e).splitlines()[0]}") from None
    return study, where


def report_study(project: str | Path, study: str | None, storage: str | None,
                 draw: DrawStudy | None = None) -> TuneResult:
    """An existing study's table, best.yaml and pictures, running no trial (`tudui tune --study NAME --report`)."""
    optuna = import_optuna()
    if study is None:
        raise TuduiError("--report needs --study NAME (the folders under PROJECT/tune are the studies)")
    name, folder = study_folder(project, study)
    if storage is None and not (folder / JOURNAL).is_file():
        raise TuduiError(f"no study {study!r} in {folder.parent} (no {JOURNAL}); check --study and --project")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is not None:
        try:
            optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise TuduiError(f"no study {study!r} in --storage {storage}") from None
        except Exception as e:  # a URL SQLAlchemy cannot parse, a server that does not answer, a missing driver
            raise TuduiError(f"cannot open the study in --storage {storage}: {str(e).splitlines()[0]}") from None
    opened, where = open_study(name, folder, storage, "none", 0)
    return summarize(opened, name, folder, where, project, draw=draw)


def run_study(values: dict, *, config_file: str | Path | None = None, space: str | Path | dict = "default",
              trials: int = 20, study: str | None = None, storage: str | None = None, pruner: str = "median",
              sampler: str = "tpe",
              startup_trials: int = 3, seed: int | None = None, enqueue: list[dict] | None = None,
              callbacks: Callable[[TrainConfig], list[Callback]] = lambda cfg: [], jobs: int = 1,
              argv: list[str] | None = None, draw: DrawStudy | None = None) -> TuneResult:
    """Run `trials` trials of the study over `space`, each a run trained by engine's `fit` with the options `values`
    (and `config_file`) fix and the trial's own; `callbacks(cfg)` gives each run's reporting callbacks. `enqueue`:
    parameter sets tried first (Optuna's enqueue_trial). Writes the best trial's config (best.yaml) into the study
    folder. jobs > 1: JOBS-1 more `tudui tune` processes (the command line `argv`, this study) share the trials, all
    of them together running `trials` (tuning/workers.py)."""
    optuna = import_optuna()
    if values.get("resume"):
        raise TuduiError("tudui tune starts its own runs; --resume continues one run (tudui train --resume RUN)")
    fixed = (load_yaml(config_file) if config_file else {}) | values
    if not fixed.get("data"):
        raise TuduiError("tudui tune needs --data (the data every trial trains on), or --study NAME --report")
    fixed.pop("name", None)
    base = resolve_config(values, config_file)  # the fixed options, checked before any trial starts
    params = load_space(space, fixed, base)
    name, folder = study_folder(base.project, study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tudui prints its own lines
    opened, where = open_study(name, folder, storage, pruner, startup_trials, seed, sampler)
    adopt_orphans(opened)
    for p in enqueue or []:
        opened.enqueue_trial(p, skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        chosen = {p.name: p.suggest(trial) for p in params}  # a queued trial's own values (Optuna's fixed params)
        resumes = trial.user_attrs.get("resumes")
        if resumes is not None:  # the run of a killed worker's trial, continued where its last.pt is
            cfg = resolve_config({"resume": trial.user_attrs["run_dir"]})
        else:
            cfg = resolve_config(values | chosen | {"project": str(folder), "name": f"trial-{trial.number}",
                                                    "exist_ok": False}, config_file)
        report = TrialReport(trial)
        print(f"trial {trial.number}: " + ", ".join(f"{k}={_shown(v)}" for k, v in chosen.items())
              + (f" (continues trial {resumes}: {trial.user_attrs['run_dir']})" if resumes is not None else ""),
              flush=True)
        try:
            fit(cfg, [*callbacks(cfg), report])
        except optuna.TrialPruned as e:  # Optuna records it silently: say so where the trial's epochs were printed
            print(f"trial {trial.number} pruned after {e}", flush=True)
            raise
        if report.value is None or not math.isfinite(report.value):
            raise TuduiError(f"trial {trial.number} ended with no validation figure")
        return report.value

    # every worker of one --jobs start stops at the same total (the count when the first one started, plus --trials)
    # (a process started on its own runs its --trials, whatever others sharing the study run)
    until = int(os.environ.get(UNTIL_ENV) or len(opened.get_trials(deepcopy=False)) + trials)
    shared = jobs > 1 or bool(os.environ.get(UNTIL_ENV))
    limit = [optuna.study.MaxTrialsCallback(until, states=None)] if shared else []
    with start_workers(argv, jobs, name, until):
        if not shared or len(opened.get_trials(deepcopy=False)) < until:
            opened.optimize(objective, n_trials=trials, catch=(), callbacks=limit)
    if os.environ.get(UNTIL_ENV):  # one of --jobs' extra workers: the first process reports the study
        return TuneResult(name, folder, where, "", worker=True)
    return summarize(opened, name, folder, where, base.project, draw=draw if base.plots else None)


def adopt_orphans(study: optuna.Study) -> list[int]:
    """Trials left "running" by a worker that died: their run folder is not locked by a live training. Each is marked
    failed (the storage refuses a second worker doing the same, so one of them adopts it) and a trial with its
    options is queued: one that continues its run (`resumes`) where it saved last.pt, else one that starts over.
    Returns the numbers of the trials adopted."""
    optuna = import_optuna()
    adopted = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_dir = t.user_attrs.get("run_dir")
        if run_dir is not None and (Path(run_dir) / "metrics.json").exists():
            continue  # trained and evaluated: its worker is recording the result (its lock is already released)
        if run_dir is not None:
            lock = FileLock(Path(run_dir) / RUN_LOCK)
            try:
                lock.acquire(blocking=False, grace_s=0)
            except (Locked, OSError):
                continue  # a live training holds it (or it cannot be told): not an orphan
            lock.release()
        elif t.datetime_start and (datetime.datetime.now() - t.datetime_start).total_seconds() < ORPHAN_AFTER_S:
            continue  # a trial still being set up in another process
        try:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker adopted it first
        resumable = run_dir is not None and (Path(run_dir) / "last.pt").is_file()
        study.enqueue_trial(dict(t.params), user_attrs={"resumes": t.number, "run_dir": run_dir} if resumable else {})
        adopted.append(t.number)
    return adopted


# A trial recorded as running with no run folder yet, this long after it started, belongs to a dead worker.
ORPHAN_AFTER_S = 600


def _shown(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def summarize(study: optuna.Study, name: str, folder: Path, where: str, project: str | Path,
              draw: DrawStudy | None = None) -> TuneResult:
    """Every trial of the study as a row, the best one, and its config written to FOLDER/best.yaml (its `project`
    back to the user's, so `tudui train --config` writes a new run beside the others); with `draw` the study's
    pictures in FOLDER."""
    rows = []
    metric = "top1"
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        metric = t.user_attrs.get("metric", metric)
        state = t.state.name.lower() + (f" (continued trial {t.user_attrs['resumes']})"
                                         if "resumes" in t.user_attrs else "")
        rows.append(TrialRow(t.number, state, dict(t.params), t.value, t.user_attrs.get("epochs"),
                             seconds, t.user_attrs.get("run_dir")))
    result = TuneResult(name, folder, where, METRIC_NAMES.get(metric, metric), rows)
    done = [r for r in rows if r.state.startswith("complete") and r.value is not None]
    if done:
        result.best = max(done, key=lambda r: (r.value, -r.number))
        config = Path(result.best.run_dir or "") / "config.yaml"
        if config.is_file():
            best = load_yaml(config)
            best.pop("name", None)
            best["project"] = str(project)
            result.best_config = folder / BEST_CONFIG
            save_yaml(best, result.best_config)
    if draw is not None:
        folder.mkdir(parents=True, exist_ok=True)
        result.pictures, result.notes = draw(study, folder, result.metric)
    return result
