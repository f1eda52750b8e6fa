"""A learner's dataset with Chinese class folders (real Fashion-MNIST images): pictures and tables show the names."""
import os
import sys

import pytest
import wcwidth

from tudui.reporting import fonts

from tests import forkserver
from tests.conftest import REPO, run_cli

# Fashion-MNIST class index -> the folder name a Chinese learner would give it
ZH = {1: "裤子", 2: "套头衫", 7: "运动鞋", 8: "包"}


@pytest.fixture(scope="module")
def zh_folders(tmp_path_factory, fmnist):
    from PIL import Image

    train, test = fmnist
    root = tmp_path_factory.mktemp("中文数据")  # a non-ASCII path too
    for split, data, n in (("train", train, 40), ("val", test, 10)):
        for c, name in ZH.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in (data.targets == c).nonzero()[0][:n]:
                Image.fromarray(data.images[i][..., 0]).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def zh_run(zh_folders, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    r = run_cli("train", "--data", zh_folders, "--model", "mnist-cnn", "--epochs", "1", "--batch-size", "32",
                "--project", project, "--name", "zh", cwd=project)
    assert r.returncode == 0, r.stderr
    return project / "zh", r


def expected_warnings() -> int:
    """0 where a CJK font is installed (`make install` adds one), else 1."""
    return 0 if not fonts.families_for("".join(ZH.values()))[1] else 1


def font_warnings(stderr: str) -> list[str]:
    assert "missing from font" not in stderr  # never one warning per glyph
    return [line for line in stderr.splitlines() if line.startswith("warning: no installed font")]


def table_block(stdout: str, header: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_train_draws_the_names_and_warns_at_most_once(zh_run):
    run, r = zh_run
    assert len(font_warnings(r.stderr)) == expected_warnings(), r.stderr
    for png in ("confusion_matrix.png", "train_batch.png", "curves.png"):
        assert (run / png).stat().st_size > 1000
    header = (run / "confusion_matrix.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",")[1:] == sorted(ZH.values())  # ImageFolder order of the Chinese names


def test_eval_predict_and_check_tables_align(zh_run, zh_folders, cli):
    run, _ = zh_run
    r = cli("eval", run / "best.pt", "--data", zh_folders, "--split", "val", "--out", run / "eval")
    assert r.returncode == 0, r.stderr
    assert len(font_warnings(r.stderr)) == expected_warnings(), r.stderr
    block = table_block(r.stdout, "class ")
    assert len(block) == 2 + len(ZH) and {line.split()[0] for line in block[2:]} == set(ZH.values())
    assert len({wcwidth.width(line) for line in block}) == 1, "\n".join(block)  # right-aligned numbers line up

    r = cli("predict", run / "best.pt", zh_folders / "val" / "运动鞋", "--topk", "2")
    assert r.returncode == 0, r.stderr
    block = table_block(r.stdout, "image ")
    starts = {wcwidth.width(line[:line.index(" ", line.index(".png"))]) for line in block[2:]}
    assert len(block) == 12 and len(starts) == 1  # the predictions column starts at one display column
    assert all(any(name in line for name in ZH.values()) for line in block[2:])

    r = cli("data", "check", zh_folders)
    block = table_block(r.stdout, "class ")
    assert {line.split()[0] for line in block[2:]} >= set(ZH.values())
    assert len({wcwidth.width(line) for line in block}) == 1, "\n".join(block)


def test_one_warning_without_a_cjk_font(zh_run, zh_folders, tmp_path):
    """The same eval on a system with no CJK font (the font list emptied in the process): one clear warning."""
    run, _ = zh_run
    code = ("import sys; from tudui.reporting import fonts; fonts.CJK_FAMILIES = (); fonts._rescanned = True; "
            "from tudui.cli import main; sys.exit(main(sys.argv[1:]))")
    r = forkserver.run([sys.executable, "-c", code, "eval", str(run / "best.pt"), "--data", str(zh_folders),
                        "--split", "val", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr
    warned = font_warnings(r.stderr)
    assert len(warned) == 1 and "fonts-wqy-microhei" in warned[0], r.stderr
    assert (tmp_path / "eval_val_confusion_matrix.png").stat().st_size > 1000
