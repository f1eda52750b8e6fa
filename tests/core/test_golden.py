"""Files written by older tudui versions keep working: golden files in tests/fixtures/golden/<commit>/.

Each folder holds what tests/fixtures/golden/make_golden.py wrote with that commit's code (best.pt, last.pt,
config.yaml, model.onnx, model.safetensors + its JSON sidecar) and golden.json: the probabilities each file gave on
tests/fixtures/golden/images/*.png and the test-split metrics of best.pt, as that version computed them. Today's
code must give the same numbers (the model of Lightning's legacy-checkpoint tests and torchvision's expect files).
A change that legitimately alters them (a decode or preprocessing fix) must say so and write a new folder, never
loosen these tolerances.

The folders: 46c9d06 (before flip TTA, channels-last and --model-args; the package before its layers, so the
course's mnist-cnn), 8f1300c (before crop_pct, --fine-tune and the decoded-image cache), bb969f9 (before
--cuda-graph), 35d2b53 (the code of 2026-12-05), 3308eb8 (the last code before fast-mlp's hidden layer slid over
the map: `fast` with a hidden layer at 40 px, whose head must rebuild as it was trained). All were written with torch
2.14.1 on a CPU.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tudui.cli import main as tudui_main

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
FOLDERS = sorted(p for p in GOLDEN.iterdir() if (p / "golden.json").is_file())
IMAGES = sorted(str(p) for p in (GOLDEN / "images").glob("*.png"))
TOL = 1e-6  # probabilities: the same float32 arithmetic on the same weights and pixels


def golden(folder: Path) -> dict:
    return json.loads((folder / "golden.json").read_text())


@pytest.fixture(params=FOLDERS, ids=[p.name for p in FOLDERS])
def folder(request) -> Path:
    return request.param


@pytest.fixture
def run_copy(folder, tmp_path) -> Path:
    """A copy of the golden folder to run commands in (they write next to the checkpoint; the fixtures stay as
    written)."""
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_golden_folders_from_older_versions_are_present():
    """At least two folders written by older commits besides one by recent code, each small and complete."""
    assert len(FOLDERS) >= 3, [p.name for p in FOLDERS]
    assert len(IMAGES) >= 5
    for p in FOLDERS:
        g = golden(p)
        assert g["images"] == [Path(i).name for i in IMAGES], p
        for name in ("best.pt", "last.pt", "config.yaml", "model.onnx", "model.safetensors",
                     "model.safetensors.json"):
            assert (p / name).is_file(), p / name
        assert sum(f.stat().st_size for f in p.iterdir()) < 400 * 1024, p  # a few hundred KB per version at most


def _check_probabilities(folder: Path, name: str) -> None:
    import tudui

    expected = np.array(golden(folder)["probabilities"][name])  # (images, classes)
    predictor = tudui.Predictor.from_path(str(folder / name), device="cpu")
    got = predictor.probabilities(predictor.preprocess(IMAGES)).double().numpy()
    assert predictor.classes == golden(folder)["classes"]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOL, (name, np.abs(got - expected).max())


def test_old_checkpoint_predicts_the_stored_probabilities(folder):
    _check_probabilities(folder, "best.pt")


@pytest.mark.parametrize("name", ["model.onnx", "model.safetensors"])
def test_old_exports_predict_the_stored_probabilities(folder, name):
    pytest.importorskip("onnxruntime" if name.endswith(".onnx") else "safetensors")
    _check_probabilities(folder, name)


def test_eval_reproduces_the_stored_metrics(folder, tmp_path, capsys):
    """`tudui eval` on the digits test split gives the same counts and, to float rounding, the same loss and F1."""
    assert tudui_main(["eval", str(folder / "best.pt"), "--data", "digits", "--split", "test", "--json",
                       "--device", "cpu", "--out", str(tmp_path)]) == 0
    got = json.loads(capsys.readouterr().out)
    for key, want in golden(folder)["eval_test"].items():
        if isinstance(want, int):
            assert got[key] == want, key
        else:
            assert got[key] == pytest.approx(want, abs=1e-6), key


def test_resume_of_an_old_last_pt_continues(run_copy, capsys):
    """--resume with one more epoch continues the old run in its folder: the new last.pt is at the next epoch and
    carries the old epochs' metrics rows unchanged."""
    from tudui.core.checkpoint import load_checkpoint

    epoch = golden(run_copy)["epoch"]
    old_rows = torch.load(run_copy / "last.pt", map_location="cpu", weights_only=True)["resume"]["history"]
    rc = tudui_main(["train", "--resume", str(run_copy / "last.pt"), "--epochs", str(epoch + 1), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    ckpt = load_checkpoint(run_copy / "last.pt")
    assert ckpt["epoch"] == epoch + 1
    rows = ckpt["resume"]["history"]
    assert [r["epoch"] for r in rows] == list(range(1, epoch + 2))
    assert rows[:epoch] == old_rows


def test_an_old_config_yaml_still_configures_the_same_run(folder):
    """`tudui train --config old/config.yaml` reads every value as written; only `name` is dropped (a repeated run
    gets a new directory) and the old boolean --amp reads as off/on."""
    import yaml

    from tudui.api import resolve_config

    written = yaml.safe_load((folder / "config.yaml").read_text())
    got = resolve_config({}, folder / "config.yaml").to_dict()
    written.pop("name")
    if isinstance(written.get("amp"), bool):
        written["amp"] = "on" if written["amp"] else "off"
    assert {k: got[k] for k in written} == written


def test_old_checkpoint_exports_and_summarises(run_copy, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "again.onnx"
    assert tudui_main(["export", str(run_copy / "best.pt"), "--format", "onnx", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert out.is_file()
    capsys.readouterr()
    assert tudui_main(["summary", str(run_copy / "best.pt")]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert f"parameters: {golden(run_copy)['parameters']:,}" in text  # as the writing version counted them


@pytest.mark.parametrize("command", ["predict", "eval", "export", "summary", "resume"])
def test_a_checkpoint_from_a_newer_tudui_is_refused_in_one_line(command, tmp_path, capsys):
    """Every command that reads a checkpoint says it was written by a newer tudui (a copy with format_version + 1),
    in one line and before it does anything else."""
    from tudui.core.checkpoint import FORMAT_VERSION

    run = Path(shutil.copytree(FOLDERS[-1], tmp_path / "run"))
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        ckpt["format_version"] = FORMAT_VERSION + 1
        torch.save(ckpt, run / name)
    best = str(run / "best.pt")
    argv = {"predict": ["predict", best, IMAGES[0]],
            "eval": ["eval", best, "--data", "digits", "--out", str(tmp_path)],
            "export": ["export", best, "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")],
            "summary": ["summary", best],
            "resume": ["train", "--resume", str(run / "last.pt"), "--epochs", "9"]}[command]
    assert tudui_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "written by a newer tudui" in err and f"format {FORMAT_VERSION + 1}" in err and "upgrade tudui" in err
    assert not (tmp_path / "m.safetensors").exists()
