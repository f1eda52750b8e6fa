"""The smaller commands and global flags as the README shows them: `--debug`, `tudui models`, `tudui board`,
`tudui summary RUN_DIR` and the `serve --host 0.0.0.0` warning.

Each command runs at least once as a user runs it (a subprocess); further checks of the same command run in-process.
"""
from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import Child
from tudui.cli import main as tudui_main
from tudui.core.errors import TuduiError


def get_json(url: str, child: Child, timeout: float = 30):
    """GET url once the child's server accepts connections (it prints its address just before it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.URLError:
            assert child.proc.poll() is None and time.monotonic() < deadline, child.err[-2000:]
            time.sleep(0.1)


def test_debug_shows_the_traceback(cli, tmp_path):
    r = cli("--debug", "train", "--data", str(tmp_path / "missing"))
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert re.search(r"tudui\.core\.errors\.TuduiError: .*no such file or folder", r.stderr), r.stderr
    with pytest.raises(TuduiError, match="no such file or folder"):  # also after the subcommand
        tudui_main(["train", "--debug", "--data", str(tmp_path / "missing")])
    # Without it: one line (what users normally see).
    assert tudui_main(["train", "--data", str(tmp_path / "missing")]) == 2


def test_models_lists_every_registered_model_with_its_size(cli, capsys):
    from tudui.models import list_models

    r = cli("models")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:] if line.strip()}
    assert sorted(rows) == sorted(m.name for m in list_models()) and len(rows) == len(r.stdout.splitlines()) - 2
    # Counted by hand: conv 2,432 + 25,632 + 51,264, linear 65,600 + 650; torchvision's resnet18 has 11,689,512
    # parameters with its 1000-class fc (513,000); a 10-class fc has 5,130.
    assert rows["cifar-net"][1:4] == ["course", "145,578", "8"]
    assert rows["resnet18"][1:4] == ["torchvision", "11,181,642", "16"]
    assert tudui_main(["models", "--num-classes", "3"]) == 0
    assert re.search(r"cifar-net\s+course\s+145,123\s", capsys.readouterr().out)  # a 64 -> 3 head: 195 parameters


def test_board_serves_a_run_and_stops_with_it(cli, digits_run):
    # No --port: TensorBoard binds a port the OS gives it and tudui prints it (a port freed here and handed on could
    # be taken by another program in between).
    child = Child("board", digits_run.run_dir)
    try:
        child.wait_for_line("TensorBoard: http://127.0.0.1:", timeout=120)
        url = re.search(r"TensorBoard: (http://127\.0\.0\.1:\d+/)", "".join(child.stdout)).group(1)
        tags = get_json(url + "data/plugin/scalars/tags", child)
        assert "epoch/val_top1" in tags["."]  # the run's own event files
        child.send(signal.SIGTERM)  # `kill`: the command stops TensorBoard as it exits
        assert child.wait(60) == 143
    finally:
        child.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


def test_summary_of_a_run_directory(digits_run, capsys):
    import torch

    from tudui.models import count_parameters, create_model

    assert tudui_main(["summary", str(digits_run.run_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        n = count_parameters(create_model("fast", 10, 1, 8))
    assert s["input"] == [1, 8, 8] and s["params"] == n  # the checkpoint's own architecture and input size
    assert s["layers"][0]["type"] == "Conv2d" and s["layers"][-1]["output"] == [10]
    assert tudui_main(["summary", str(digits_run.best)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{digits_run.best}, input 1x8x8\n") and f"{n:,}" in out


def test_serve_on_all_interfaces_warns_and_serves(tiny_model):
    child = Child("serve", tiny_model, "--host", "0.0.0.0", "--port", "0", "--device", "cpu")
    try:
        child.wait_for_line("tudui: serving", timeout=120)
        port = int(re.search(r"on http://0\.0\.0\.0:(\d+)/", "".join(child.stdout)).group(1))
        assert get_json(f"http://127.0.0.1:{port}/health", child) == {"status": "ok"}
    finally:
        child.kill()
    warning = [line for line in child.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "serving on 0.0.0.0" in warning[0] and "no authentication" in warning[0]
