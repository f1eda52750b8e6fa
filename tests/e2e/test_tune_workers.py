"""Two `tudui tune --study NAME` processes started at once share one study through its journal file."""
from __future__ import annotations

import re

import pytest

from tests.conftest import Child

optuna = pytest.importorskip("optuna")
from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: E402


@pytest.mark.slow
def test_two_workers_share_a_study_with_disjoint_trial_numbers(tmp_path):
    (tmp_path / "space.yaml").write_text("lr: {low: 0.001, high: 0.03, log: true}\n")
    args = ["tune", "--data", "digits", "--model", "fast", "--epochs", "1", "--subset", "200", "--no-tensorboard",
            "--no-plots", "--project", tmp_path / "runs", "--study", "s", "--space", tmp_path / "space.yaml",
            "--trials", "2"]
    workers = [Child(*args), Child(*args)]
    for w in workers:
        assert w.wait(timeout=300) == 0, "".join(w.stderr)
    ran = [{int(n) for n in re.findall(r"^trial (\d+): lr=", "".join(w.stdout), re.M)} for w in workers]
    assert len(ran[0]) == len(ran[1]) == 2 and not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2, 3}
    assert sorted(p.name for p in (tmp_path / "runs/tune/s").glob("trial-*")) == [f"trial-{k}" for k in range(4)]
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "runs/tune/s/journal.log"))))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


SLOW_AFTER_EPOCH_1 = """
import sys, time
from tudui import cli
from tudui.tuning import study

report = study.TrialReport.on_epoch_end
def slow(self, run, row, val):
    report(self, run, row, val)
    if run.epoch == 1:
        time.sleep(120)  # the test kills the worker here: epoch 1 saved and reported, epoch 2 not begun
study.TrialReport.on_epoch_end = slow
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_workers_trial_continues_from_its_checkpoint(tmp_path):
    import tudui

    (tmp_path / "space.yaml").write_text("lr: [0.01]\n")
    common = dict(data="digits", model="fast", epochs=3, subset=200, tensorboard=False, plots=False,
                  project=str(tmp_path / "runs"), study="s", space=str(tmp_path / "space.yaml"))
    argv = ["tune", *[x for k, v in common.items() for x in (
        ["--" + k.replace("_", "-"), str(v)] if not isinstance(v, bool) else ["--no-" + k])], "--trials", "1"]
    worker = Child(*argv, code=SLOW_AFTER_EPOCH_1)
    worker.wait_for_line("epoch 1/3")
    worker.kill()  # SIGKILL: no handler runs; the trial stays "running" in the journal
    run = tmp_path / "runs/tune/s/trial-0"
    before = (run / "results.csv").read_text().splitlines()
    assert len(before) == 2

    r = tudui.tune(**common, trials=1)
    states = {t.number: t.state for t in r.trials}
    assert states == {0: "fail", 1: "complete (continued trial 0)"}
    assert r.trials[1].run_dir == str(run) and not (tmp_path / "runs/tune/s/trial-1").exists()
    after = (run / "results.csv").read_text().splitlines()
    assert after[:2] == before and len(after) == 4  # epoch 1 kept as trained, epochs 2 and 3 added: not started over
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "runs/tune/s/journal.log"))))
    assert sorted(study.trials[1].intermediate_values) == [1, 2, 3] and r.best.number == 1


@pytest.mark.slow
def test_jobs_starts_workers_that_run_the_trials_together(tmp_path):
    from tests.conftest import run_cli

    (tmp_path / "space.yaml").write_text("lr: {low: 0.001, high: 0.03, log: true}\n")
    r = run_cli("tune", "--data", "digits", "--model", "fast", "--epochs", "1", "--subset", "200", "--no-tensorboard",
                "--no-plots", "--project", tmp_path / "runs", "--space", tmp_path / "space.yaml", "--trials", "4",
                "--jobs", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("study study-1 (") == 1 and len(re.findall(r"^tune worker \d+: done", r.stdout, re.M)) == 1
    assert sorted(int(n) for n in re.findall(r"^trial (\d+): lr=", r.stdout, re.M)) == [0, 1, 2, 3]
    study = optuna.load_study(study_name="study-1", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "runs/tune/study-1/journal.log"))))
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
