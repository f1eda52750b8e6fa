"""`tudui runs`: every run under a folder in one table, and `tudui runs compare`: the options that differ between
runs and their curves overlaid in one picture.

A run is a folder with a config.yaml (written when it starts); results.csv holds its epochs, metrics.json appears
once the final evaluation of best.pt is done, so a run without one stopped early (Ctrl-C, a crash, a pruned
trial) or is still training.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..core.console import shown
from ..core.errors import TuduiError
from .plots import _figure, _save, read_results

# Options every run has its own value of, or that are shown in their own columns: never listed as "differs".
NOT_OPTIONS = {"name", "project", "exist_ok", "resume", "data", "model"}
SORT_KEYS = {"date": lambda r: r.date, "run": lambda r: r.run, "val": lambda r: _num(r.val),
             "test": lambda r: _num(r.test), "time": lambda r: _num(r.seconds), "epochs": lambda r: r.epochs}


@dataclass
class RunRow:
    """One run: where, when, on what, how far it got, its best validation and its test figure, its time."""

    run: str
    path: str
    date: str
    data: str
    model: str
    state: str  # done / stopped (no final evaluation) / unreadable (no config.yaml that parses)
    epochs: int
    planned: int | str | None
    val: float | None  # validation top-1 of best.pt (the best epoch's while the run has not finished)
    test: float | None
    seconds: float
    options: dict = field(default_factory=dict)
    differs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "options"}


def _num(v) -> float:
    return -math.inf if v is None else float(v)


def find_runs(folder: str | Path) -> list[Path]:
    """The run folders under `folder` (itself included): each holds a config.yaml."""
    root = Path(folder)
    if not root.is_dir():
        raise TuduiError(f"no such folder: {shown(root)} (give the folder that holds your runs, e.g. runs)")
    return sorted({p.parent for p in root.rglob("config.yaml")})


def read_run(path: Path, root: Path) -> RunRow:
    name = str(path.relative_to(root)) if path != root else path.name
    config = path / "config.yaml"
    date = datetime.datetime.fromtimestamp(config.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a mapping")
    except (ValueError, yaml.YAMLError, OSError, UnicodeDecodeError):
        return RunRow(name, str(path), date, "", "", "unreadable", 0, None, None, None, 0.0)
    try:
        rows = read_results(path / "results.csv") if (path / "results.csv").is_file() else []
    except (OSError, ValueError, UnicodeDecodeError):
        rows = []
    metrics = None
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = None
    vals = [r["val_top1"] for r in rows if not math.isnan(r.get("val_top1", math.nan))]
    if metrics is not None:
        val = (metrics.get("val") or {}).get("top1")
        test = (metrics.get("test") or {}).get("top1")
    else:
        val, test = (max(vals) if vals else None), None
    data = cfg.get("data")
    return RunRow(name, str(path), date, ", ".join(map(str, data if isinstance(data, list) else [data])),
                  str(cfg.get("model", "")), "done" if metrics is not None else "stopped", len(rows),
                  cfg.get("epochs"), val, test, sum(r.get("epoch_time_s", 0.0) or 0.0 for r in rows
                                                    if not math.isnan(r.get("epoch_time_s", math.nan))), cfg)


def differing(rows: list[RunRow]) -> list[str]:
    """The options whose values are not the same in every readable run (first-seen order)."""
    readable = [r for r in rows if r.state != "unreadable"]
    keys = list(dict.fromkeys(k for r in readable for k in r.options if k not in NOT_OPTIONS))
    return [k for k in keys if len({json.dumps(r.options.get(k), sort_keys=True, default=str) for r in readable}) > 1]


def list_runs(folder: str | Path, sort: str = "date") -> list[RunRow]:
    """Every run under `folder`, sorted by `sort` (date, run, val, test, time, epochs; figures best first), each with
    the options that differ between them."""
    if sort not in SORT_KEYS:
        raise TuduiError(f"--sort takes one of {', '.join(SORT_KEYS)}, got {sort!r}")
    root = Path(folder)
    rows = [read_run(p, root) for p in find_runs(root)]
    keys = differing(rows)
    for r in rows:
        r.differs = {k: r.options.get(k) for k in keys} if r.state != "unreadable" else {}
    return sorted(rows, key=SORT_KEYS[sort], reverse=sort in ("val", "test", "time", "epochs"))


def compare_runs(paths: list[str | Path], out: str | Path) -> tuple[list[RunRow], list[str], Path]:
    """(the runs, the options that differ between them, the picture): validation top-1, validation and training
    loss against epoch, one colour per run."""
    if len(paths) < 2:
        raise TuduiError("tudui runs compare takes two or more run folders")
    rows = []
    for p in paths:
        path = Path(p)
        if not (path / "config.yaml").is_file():
            raise TuduiError(f"{shown(path)} is not a run folder (no config.yaml); `tudui runs` lists the runs")
        rows.append(read_run(path, path))
    keys = differing(rows)
    from matplotlib.ticker import MaxNLocator

    fig = _figure(12, 4)
    axes = fig.subplots(1, 3)
    for row in rows:
        results = read_results(Path(row.path) / "results.csv") if (Path(row.path) / "results.csv").is_file() else []
        epochs = [r["epoch"] for r in results]
        label = row.path
        line = axes[0].plot(epochs, [r.get("val_top1", math.nan) for r in results], marker="o", label=label)[0]
        axes[1].plot(epochs, [r.get("val_loss", math.nan) for r in results], marker="o", color=line.get_color())
        axes[2].plot(epochs, [r.get("train_loss", math.nan) for r in results], marker="o", color=line.get_color())
    for ax, title in zip(axes, ["validation top-1", "validation loss (cross-entropy)", "training loss (cross-entropy)"]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=min(len(rows), 3), fontsize=8)
    return rows, keys, _save(fig, out)
