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
