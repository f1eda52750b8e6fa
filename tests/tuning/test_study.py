"""`tudui tune`: an Optuna study whose trials are ordinary runs, judged on validation, pruned by the median."""
from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

optuna = pytest.importorskip("optuna")

import tudui  # noqa: E402
from tudui import cli  # noqa: E402
from tudui.api import resolve_config  # noqa: E402

TINY = dict(data="digits", model="fast", epochs=2, batch_size=64, subset=300, tensorboard=False, plots=False)


def test_study_prunes_a_bad_trial_and_writes_the_best_config(tmp_path, capsys):
    """Two good learning rates finish; a hopeless one (1e-7) is below their median after epoch 1 and is pruned.
    A second call with the same --study continues the study: trial numbers go on, the total is both calls'."""
    space = {"lr": {"low": 1e-7, "high": 0.05, "log": True}, "ema": [False, True]}
    first = tudui.tune(**TINY, project=str(tmp_path), study="s", space=space, trials=3, startup_trials=2,
                       enqueue=[{"lr": 0.02, "ema": False}, {"lr": 0.01, "ema": True}, {"lr": 1e-7, "ema": False}])
    states = {t.number: t.state for t in first.trials}
    assert states == {0: "complete", 1: "complete", 2: "pruned"}
    pruned = first.trials[2]
    assert pruned.epochs == 1 and (tmp_path / "tune/s/trial-2/last.pt").is_file()
    said = [line for line in capsys.readouterr().out.splitlines() if " pruned " in line]
    assert len(said) == 1 and said[0].startswith("trial 2 pruned after epoch 1 of 2: val top1 "), said
    for t in first.trials[:2]:  # each trial is a normal run: its config holds the sampled options, resolved as usual
        cfg = yaml.safe_load((tmp_path / f"tune/s/trial-{t.number}/config.yaml").read_text())
        assert cfg["lr"] == pytest.approx(t.params["lr"]) and cfg["ema"] == t.params["ema"] and cfg["subset"] == 300
        # the figure a trial is judged by is the validation top-1 of its best.pt, never the test split's
        metrics = json.loads((tmp_path / f"tune/s/trial-{t.number}/metrics.json").read_text())
        assert t.value == pytest.approx(metrics["val"]["top1"])
    best = max(first.trials[:2], key=lambda t: t.value)
    assert first.best.number == best.number and first.metric == "val top1"
    again = resolve_config({}, first.best_config)  # `tudui train --config best.yaml` re-runs the best trial
    assert again.lr == pytest.approx(best.params["lr"]) and again.project == str(tmp_path) and again.name is None
    assert (tmp_path / "tune/s/journal.log").is_file()

    # the command line, as a user continues the study: its table lists every trial of the study, both calls'
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    argv = ["tune", "--data", "digits", "--model", "fast", "--epochs", "2", "--subset", "300", "--no-tensorboard",
            "--no-plots", "--project", str(tmp_path), "--study", "s", "--space", str(tmp_path / "space.yaml"),
            "--trials", "1", "--pruner", "none"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("study s ("):].splitlines()
    assert table[1].split()[:4] == ["trial", "lr", "ema", "val"] and table[1].split()[-3:] == ["epochs", "seconds",
                                                                                             "state"]
    assert [line.split()[0] for line in table[3:7]] == ["0", "1", "2", "3"]
    assert table[5].split()[-1] == "pruned" and table[6].split()[-1] == "complete"
    assert f"re-run it: tudui train --config {tmp_path / 'tune/s/best.yaml'}" in out
    assert (tmp_path / "tune/s/trial-3/best.pt").is_file()

    # --report: no trial runs; the table, best.yaml and Optuna's pictures of the study, tudui's plot style untouched
    import matplotlib

    style = dict(matplotlib.rcParams)
    assert cli.main(["tune", "--study", "s", "--project", str(tmp_path), "--report"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and not (tmp_path / "tune/s/trial-4").exists()
    for name in ("history.png", "importances.png", "parallel.png"):
        with Image.open(tmp_path / "tune/s" / name) as im:
            assert im.format == "PNG" and im.size == (900, 500)
        assert str(tmp_path / "tune/s" / name) in out
    assert dict(matplotlib.rcParams) == style
    assert cli.main(["tune", "--study", "nope", "--project", str(tmp_path), "--report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study 'nope' in") and err.count("\n") == 1


@pytest.mark.parametrize("space, message", [
    ({"lrr": {"low": 0.001, "high": 0.01}}, "unknown option 'lrr' (did you mean 'lr'?)"),
    ({"lr": {"low": 0.01, "high": 0.01}}, "lr's range [0.01, 0.01] is empty"),
    ({"batch_size": []}, "batch_size has an empty list of choices"),
    ({"augment": ["crop", "sideways"]}, "augment = 'sideways' is not a value the option takes"),
    ({"lr": {"low": 0, "high": 0.1, "log": True}}, "log range must start above 0"),
    ({"name": ["a", "b"]}, "'name' cannot be searched"),
])
def test_a_bad_space_is_one_error_line_and_nothing_written(tmp_path, capsys, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    code = cli.main(["tune", "--data", "digits", "--trials", "2", "--space", str(path),
                     "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    from tudui.tuning.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nepochs: {low: 1, high: 3}\n")
    lr, epochs = load_space(path, {"data": "digits"})
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True) and isinstance(lr.low, float)
    assert (epochs.low, epochs.high) == (1, 3) and isinstance(epochs.low, int)


def test_storage_url_puts_the_study_in_a_database(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    r = tudui.tune(**(TINY | {"epochs": 1}), project=str(tmp_path), study="db", storage=url, trials=1,
                   space={"lr": [0.01]})
    stored = optuna.load_study(study_name="db", storage=url)
    assert [t.value for t in stored.trials] == [r.trials[0].value] and r.trials[0].state == "complete"
    assert r.storage == url and not (tmp_path / "tune/db/journal.log").exists()
    capsys.readouterr()  # the trial's lines (on a loaded machine, a progress line on stderr too)

    code = cli.main(["tune", "--data", "digits", "--trials", "1", "--project", str(tmp_path),
                     "--storage", "nosuch://nowhere"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot open the study in --storage nosuch://nowhere") \
        and err.count("\n") == 1, err
    assert not (tmp_path / "tune/study-1").exists()


@pytest.mark.parametrize("pruner, kind", [("median", "MedianPruner"), ("hyperband", "HyperbandPruner"),
                                          ("none", "NopPruner")])
def test_pruner_choice(tmp_path, pruner, kind):
    from tudui.tuning.study import open_study

    study, where = open_study("p", tmp_path / "p", None, pruner, 2)
    assert type(study.pruner).__name__ == kind and where == str(tmp_path / "p" / "journal.log")


@pytest.mark.parametrize("sampler, kind", [("tpe", "TPESampler"), ("random", "RandomSampler")])
def test_sampler_choice(tmp_path, sampler, kind):
    from tudui.tuning.study import open_study

    study, _ = open_study("p", tmp_path / "p", None, "none", 0, seed=1, sampler=sampler)
    assert type(study.sampler).__name__ == kind
