"""`tudui data export`: a named dataset written as class folders that read back as the same classes."""
from __future__ import annotations

import json

import torch

import tudui
import tudui.data.export_images
from tudui.cli import main as tudui_main
from tudui.data.check import check_data
from tudui.data.folders import read_folder_splits


def test_an_export_keeps_the_class_names_its_folders_cannot_carry(fmnist, tmp_path, capsys):
    """'T-shirt/top' is written to the folder T-shirt_top with classes.json beside it; reading the folders (train,
    data check) gives 'T-shirt/top' back, so a model trained on the export answers the dataset's own names."""
    out = tmp_path / "fm"
    assert tudui_main(["data", "export", "fashion-mnist", "--split", "test", "--limit", "40", "--out", str(out)]) == 0
    assert f"and the class each folder holds to {out / 'classes.json'}" in capsys.readouterr().out
    assert (out / "T-shirt_top").is_dir()
    manifest = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    assert manifest["T-shirt_top"] == "T-shirt/top" and manifest["Bag"] == "Bag"
    names = fmnist[1].classes
    assert read_folder_splits(str(out))["train"].classes == sorted(names)  # every class, by its true name
    report = check_data([str(out)])
    # classes.json is no stray file (40 images: the only issue is their few validation images a class)
    assert "T-shirt/top" in report.splits[0].classes and [i.kind for i in report.issues] == ["few-val"]
    capsys.readouterr()
    run = tudui.train(data=str(out), model="fast-mlp", epochs=1, batch_size=16, val_split=0.25, project=str(tmp_path),
                      name="on-export", plots=False)
    saved = torch.load(run.best, map_location="cpu", weights_only=True)["data"]["classes"]
    assert "T-shirt/top" in run.spec.classes and saved == run.spec.classes == sorted(names)


def test_a_model_trained_on_the_named_dataset_scores_its_export(fmnist, tmp_path, capsys):
    """The classes of the export are the named dataset's own: `tudui eval` of a Fashion-MNIST model on the exported
    folder scores every image, T-shirt/top included (it refused 'classes the model does not know: T-shirt_top')."""
    out = tmp_path / "fm"
    tudui.data.export_images.export_images("fashion-mnist", str(out), "test", limit=30)
    run = tudui.train(data="fashion-mnist", model="fast-mlp", fast_dev_run=True, batch_size=32,
                      project=str(tmp_path), name="named", plots=False)  # one batch of each split: a model file
    capsys.readouterr()
    assert tudui_main(["eval", str(run.best), "--data", str(out), "--json", "--out", str(tmp_path / "eval")]) == 0
    scored = json.loads(capsys.readouterr().out)
    shirts = len(list((out / "T-shirt_top").iterdir()))
    assert scored["n"] == 30 and shirts and scored["per_class"]["support"][scored["classes"].index("T-shirt/top")] == shirts


def test_folder_names_are_distinct_even_where_safe_names_collide():
    from tudui.data.export_images import folder_names

    assert folder_names(["a/b", "a?b", "A_b", "c"]) == {"a/b": "a_b", "a?b": "a_b 2", "A_b": "A_b 3", "c": "c"}
