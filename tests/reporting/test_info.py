"""tudui info: versions, accelerators, threads, datasets."""
import torch

import tudui
from tudui.reporting.info import environment, format_environment


def test_environment_reports_what_is_there(tmp_path):
    env = environment(str(tmp_path))
    assert env["versions"]["tudui"] == tudui.__version__ and env["versions"]["torch"] == str(torch.__version__)
    assert env["cuda"]["available"] == torch.cuda.is_available()
    assert len(env["cuda"]["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert env["cpu"]["torch_threads"] == torch.get_num_threads()
    assert set(env["datasets"]) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "digits"}
    assert env["datasets"]["digits"] == "bundled with scikit-learn"
    assert env["dataset_search_dirs"][0] == str(tmp_path)
    text = format_environment(env)
    assert "torchvision" in text and "CUDA:" in text and "MPS" in text and "cifar100" in text


def test_a_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    from tudui.data import sources

    monkeypatch.setattr(sources, "SYSTEM_DIRS", [])
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("TUDUI_DATA", raising=False)
    env = environment(str(tmp_path))
    assert env["datasets"]["cifar10"].startswith("not found") and "cifar-10" in env["datasets"]["cifar10"]
    (tmp_path / "mnist").mkdir()
    for f in sources.NAMED["mnist"].files:
        (tmp_path / "mnist" / f).write_bytes(b"")
    assert environment(str(tmp_path))["datasets"]["mnist"] == str((tmp_path / "mnist").resolve())
