"""Two CPU processes (gloo) under torchrun, on small real data: what DDP training must guarantee."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import REPO, kill_tree, write_class_folders

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """torchrun with 2 processes; --standalone picks a free rendezvous port, so parallel runs do not clash."""
    env = os.environ.copy() | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | \
        forkserver.FORK_CHILDREN  # its ranks: forks of the tests' fork server too
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return forkserver.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_train_disjoint_shards_to_identical_weights(tmp_path, capsys):
    from tudui import cli
    from tudui.data.export_images import export_images
    from tudui.core.checkpoint import load_checkpoint
    from tudui.api import evaluate as evaluate_checkpoint

    r = torchrun(str(WORKER), "train", str(tmp_path / "ranks"), "--data", "digits", "--model", "mnist-cnn",
                 "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--project", str(tmp_path / "runs"),
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 processes x batch 64 = global batch 128" in r.stdout
    ranks = [json.loads((tmp_path / "ranks" / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(rk["ddp"] and rk["world_size"] == 2 for rk in ranks)
    # The job was left cleanly: no thread of the process group outlives `tudui train` on either rank (a gloo
    # worker left into interpreter shutdown aborted the finished rank now and then, and torchrun failed the job).
    left = [[t for t in rk["threads"] or [] if "gloo" in t] for rk in ranks]
    assert left == [[], []] and ranks[0]["threads"] is not None, [rk["threads"] for rk in ranks]

    # Each epoch: the two shards are disjoint, equally long, and reshuffled between epochs.
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 2
    for e in range(2):
        a, b = set(ranks[0]["indices"][e]), set(ranks[1]["indices"][e])
        assert len(a) == len(b) == 640 and not a & b  # 1,295 train images -> 647 per rank -> 10 batches of 64
    assert ranks[0]["indices"][0] != ranks[0]["indices"][1]

    # Gradients were averaged: both ranks ended training with the same weights though they saw different data.
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"]

    # Only rank 0 wrote, into one run directory that both ranks agree on.
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["exp"] and {rk["run_dir"] for rk in ranks} == {str(runs[0])}
    assert len((runs[0] / "results.csv").read_text().splitlines()) == 3  # header + 2 epochs

    # Checkpoints hold the unwrapped module's weights; the distributed evaluation equals a single-process one.
    ckpt = load_checkpoint(runs[0] / "best.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    for split in ("test", "val"):  # test: 359 images (odd), memory-resident; val: the seeded hold-out
        single = evaluate_checkpoint(str(runs[0] / "best.pt"), "digits", split, device="cpu")
        for rk in ranks:
            dist_eval = rk[split]
            assert dist_eval["n"] == single["n"]
            assert dist_eval["confusion"] == single["confusion"]
            assert dist_eval["top1"] == pytest.approx(single["top1"])
            assert dist_eval["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert ranks[0]["test"]["n"] == 359

    # Both ranks trained with the digits' classes in their order, and the checkpoint keeps exactly that order.
    digits = [str(i) for i in range(10)]
    assert [rk["classes"] for rk in ranks] == [digits, digits] and ckpt["data"]["classes"] == digits

    # The DDP checkpoint is usable by `tudui predict` as it is: test images saved under their class's folder are
    # predicted as that class about as often as the test top-1 says (two short epochs: ~65% here), far more often
    # than a shuffled class order would (about one in ten).
    files = export_images("digits", tmp_path / "samples", "test", 20, "png", None, 0)
    assert cli.main(["predict", str(runs[0] / "best.pt"), str(tmp_path / "samples"), "--json", "--device", "cpu"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == len(files) and all(p["error"] is None for p in preds)
    right = [p["predictions"][0]["class"] == Path(p["source"]).parent.name for p in preds]
    assert ranks[0]["test"]["top1"] > 0.4 and sum(right) >= 0.35 * len(preds), (sum(right), ranks[0]["test"]["top1"])


def test_nproc_relaunches_under_torchrun_and_counts_each_file_once(tmp_path, fmnist, cli):
    """`tudui train --nproc 2` on files (DistributedSampler path) with an odd validation set."""
    from tudui.api import evaluate as evaluate_checkpoint

    train, test = fmnist
    root = tmp_path / "data"
    write_class_folders(root / "train", train, 20)
    write_class_folders(root / "val", test, 15)
    next((root / "val").rglob("*.png")).unlink()  # 149 images: one rank gets 75, the other 74
    r = cli("train", "--nproc", "2", "--data", str(root), "--cache", "off", "--model", "mnist-cnn", "--epochs", "1",
            "--batch-size", "32", "--project", str(tmp_path / "runs"), "--name", "files", "--device", "cpu",
            cwd=tmp_path, timeout=240, env={"OMP_NUM_THREADS": "1"} | forkserver.FORK_CHILDREN)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from files" in r.stdout and "global batch 64" in r.stdout
    run = tmp_path / "runs" / "files"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["n"] == 149  # no sample padded in, none counted twice
    single = evaluate_checkpoint(str(run / "best.pt"), [str(root)], "val", device="cpu")
    assert metrics["val"]["confusion"] == single["confusion"]
    assert "nproc: 2" in (run / "config.yaml").read_text()


def test_a_failing_rank_ends_the_job_with_its_message(tmp_path):
    r = torchrun(str(WORKER), "fail", str(tmp_path / "ranks"), "--data", "digits", "--model", "mnist-cnn",
                 "--epochs", "1", "--project", str(tmp_path / "runs"), cwd=tmp_path, timeout=180)
    assert r.returncode != 0
    assert "error: rank 1: the data on rank 1 is unreadable" in r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_a_hanging_rank_ends_the_job_after_tudui_dist_timeout(tmp_path):
    """Rank 1 hangs while loading its data; rank 0 waits for it in a collective for TUDUI_DIST_TIMEOUT seconds (3
    here, 600 by default), then stops with one error line that names the setting, and torchrun ends the job."""
    env = os.environ.copy() | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                               "TUDUI_DIST_TIMEOUT": "3"} | forkserver.FORK_CHILDREN
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), "hang",
           str(tmp_path / "ranks"), "--data", "digits", "--model", "mnist-cnn", "--epochs", "1", "--no-plots",
           "--project", str(tmp_path / "runs")]
    proc = forkserver.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=150)
        ended = time.time()
    finally:
        kill_tree(proc)  # the launcher and its workers, if the job is still waiting: nothing else
    hung_at = float((tmp_path / "ranks" / "rank1-hangs").read_text())
    assert proc.returncode != 0
    assert ended - hung_at < 60, ended - hung_at  # the timeout and a start-up, not the default 600 s
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == ["error: rank 0: no answer from another process of this job within 3 s (TUDUI_DIST_TIMEOUT): "
                      "it hangs or has stopped; if its work takes longer, raise TUDUI_DIST_TIMEOUT"], err[-3000:]
    assert "[rank0]: Traceback" not in err, err[-3000:]


def test_resume_the_toolbox_and_multi_label_data_under_torchrun(tmp_path, cli, pairs_csv):
    """Four runs share one torchrun job (ddp_worker.py `several`: a torchrun start is two processes importing torch).

    Resume: a 2-process job trained 1 epoch and resumed to 2 ends bit-identical to one trained 2 epochs straight. The
    resume command names no --nproc: the run's config.yaml says 2, so it re-runs itself under torchrun, as a user's
    `tudui train --resume` does. With --scheduler none, raising --epochs on resume changes nothing else; --augment
    crop makes every rank's own augmentation stream part of what must be restored.

    Toolbox: EMA, per-image policies, erasing, mixup/cutmix, accumulation and --time in a 2-process job: the ranks
    stay in step (same weights at the end, one run directory) and best.pt holds the EMA.

    Multi-label: each rank validates its shard, and the scores of both are gathered before mAP and the thresholds are
    computed: both ranks report the whole validation split's figures, the ones `tudui eval` gives for best.pt there.
    """
    import torch

    import tudui
    from tudui.core.checkpoint import load_checkpoint

    args = ["--data", "digits", "--model", "mnist-cnn", "--batch-size", "64", "--subset", "512", "--augment", "crop",
            "--scheduler", "none", "--device", "cpu", "--deterministic", "--no-plots", "--no-tensorboard",
            "--project", str(tmp_path)]
    toolbox = ["--data", "digits", "--model", "mnist-cnn", "--epochs", "2", "--batch-size", "64", "--ema", "--augment",
               "trivialaugment", "--erase", "0.2", "--mixup", "0.2", "--cutmix", "1.0", "--accumulate", "2", "--time",
               "0.05", "--project", str(tmp_path / "runs"), "--name", "toolbox"]
    multi = ["--data", str(pairs_csv), "--model", "fast", "--img-size", "8", "--epochs", "2", "--batch-size", "16",
             "--val-split", "0.25", "--device", "cpu", "--no-plots", "--no-tensorboard", "--project",
             str(tmp_path / "multi"), "--name", "pairs"]
    jobs = [args + ["--epochs", "2", "--name", "straight"], args + ["--epochs", "1", "--name", "resumed"], toolbox,
            multi]  # the multi-label run last: the ranks' records hold its val summary
    r = torchrun(str(WORKER), "several", str(tmp_path / "ranks"), json.dumps(jobs), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [json.loads((tmp_path / "ranks" / f"rank{i}.json").read_text()) for i in (0, 1)]

    # multi-label: the whole validation split's figures on both ranks (40 of 160 images; a rank's shard is 20)
    a, b = ranks[0]["val"], ranks[1]["val"]
    assert a["n"] == b["n"] == 40 and a["map"] == b["map"] and a["thresholds"] == b["thresholds"]
    assert ranks[0]["runs"]["pairs"] == ranks[1]["runs"]["pairs"]
    best = tmp_path / "multi" / "pairs" / "best.pt"
    assert load_checkpoint(best)["data"]["thresholds"] == a["thresholds"]
    again = tudui.evaluate(best, [str(pairs_csv)], split="val")  # one process, the same hold-out re-created
    assert again["n"] == 40 and again["map"] == pytest.approx(a["map"], abs=1e-6)
    assert again["macro_f1"] == pytest.approx(a["macro_f1"], abs=1e-6)

    # the toolbox run: ranks in step, one run directory, best.pt's EMA
    assert ranks[0]["runs"]["toolbox"] == ranks[1]["runs"]["toolbox"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["toolbox"]
    last = load_checkpoint(tmp_path / "runs" / "toolbox" / "last.pt")
    assert last["ema"]["updates"] == last["step"] and last["config"]["ema"] and last["config"]["mixup"] == 0.2

    # resume under torchrun
    env = {"OMP_NUM_THREADS": "1"} | forkserver.FORK_CHILDREN
    r = cli("train", "--resume", tmp_path / "resumed", "--epochs", "2", cwd=tmp_path, timeout=240, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming {tmp_path / 'resumed'} at epoch 2/2" in r.stdout and "2 processes x batch 64" in r.stdout

    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "resumed"))
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][k][name])), (k, name)
    rows = [[{k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")}
             for row in csv.DictReader(open(tmp_path / n / "results.csv"))] for n in ("straight", "resumed")]
    assert rows[0] == rows[1] and [row["epoch"] for row in rows[1]] == ["1", "2"]
