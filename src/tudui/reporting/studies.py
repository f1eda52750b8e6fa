"""A study's pictures, drawn by Optuna's matplotlib visualisations: the optimisation history (each trial's figure and
the best so far), the parameters' importances and the parallel coordinates of every trial's values. Each title names
the study; Chinese (CJK) study names, parameters and values are drawn by the fallback fonts of tudui's other pictures
(fonts.py). tuning/ hands a study here through api (the `draw` of tuning.study.run_study)."""
from __future__ import annotations

import warnings
from pathlib import Path

from ..core.files import atomic_path
from .fonts import cjk_fonts

PICTURES = {"history.png": "plot_optimization_history", "importances.png": "plot_param_importances",
            "parallel.png": "plot_parallel_coordinate"}


def draw_study(study: optuna.Study, folder: Path, metric: str) -> tuple[list[Path], list[str]]:
    """(the pictures written into `folder`, a note for each that could not be drawn, e.g. importances before two
    trials have finished)."""
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")  # files only: no window, whatever the environment's default backend
    import matplotlib.pyplot as plt
    import optuna  # the tune extra: only a study that exists gets here
    from optuna.visualization import matplotlib as drawing

    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    written, notes = [], []
    with matplotlib.rc_context():  # Optuna sets pyplot's style for good: tudui's own pictures keep theirs
        for name, function in PICTURES.items():
            if len(finished) < (2 if name == "importances.png" else 1):
                notes.append(f"{name}: needs {'two finished trials' if name == 'importances.png' else 'one'}")
                continue
            kwargs = {} if name == "importances.png" else {"target_name": metric}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                    ax = getattr(drawing, function)(study, **kwargs)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. no parameter varies between the trials
                notes.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                plt.close("all")
                continue
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = first.figure
            first.set_title(f"{first.get_title()}: study {study.study_name}")
            fig.set_size_inches(9, 5)
            path = folder / name
            with cjk_fonts(fig), atomic_path(path) as tmp:
                fig.tight_layout()
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            written.append(path)
    return written, notes
