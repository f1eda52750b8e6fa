"""tudui board: TensorBoard really serves the run directories on loopback, and stops."""
import json
import urllib.request

import pytest

from tudui.core.errors import TuduiError
from tudui.reporting.tensorboard_server import logdir_args, start_board, stop_board


def _write_events(run_dir, value):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir)) as w:
        w.add_scalar("epoch/val_top1", value, 1)


def test_board_serves_two_runs_and_stops(tmp_path):
    a, b = tmp_path / "runs" / "exp", tmp_path / "other" / "exp"
    _write_events(a, 0.5)
    _write_events(b, 0.7)
    proc, url = start_board([str(a), str(b)], wait_s=60)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "data/runs", timeout=20) as r:
            runs = json.loads(r.read())
        # Both runs of the same name stay visible, each under its folder's name (not "exp/.")
        assert sorted(runs) == ["exp", "exp_2"]
        with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=20) as r:
            tags = json.loads(r.read())
        assert "epoch/val_top1" in tags["exp"] and "epoch/val_top1" in tags["exp_2"]
    finally:
        stop_board(proc)
    assert proc.poll() is not None
    assert a.is_dir() and b.is_dir() and not proc.tudui_links.exists()  # the links went, the runs stayed


def test_board_errors(tmp_path):
    with pytest.raises(TuduiError, match="not a folder"):
        logdir_args([str(tmp_path / "missing")])
    assert logdir_args([str(tmp_path)]) == ["--logdir", str(tmp_path.resolve())]
    # A port that is already taken: TensorBoard exits, and its own reason is reported.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(TuduiError, match="TensorBoard could not start"):
            start_board([str(tmp_path)], port=s.getsockname()[1], wait_s=60)


def test_board_without_a_folder_serves_runs_in_the_working_folder(tmp_path, monkeypatch, capsys):
    """`tudui board` alone means `tudui board runs` (docs/seeing-training.md): the folder TensorBoard is given is
    ./runs resolved. TensorBoard itself is not started: its start is replaced by one that records the --logdir."""
    import signal

    from tudui import api, cli

    monkeypatch.chdir(tmp_path)
    sigterm = signal.getsignal(signal.SIGTERM)  # cmd_board installs its own SIGTERM handler
    try:
        assert cli.main(["board"]) == 2  # the real start: nothing to serve yet, one line says what to pass
        assert capsys.readouterr().err == ("error: not a folder: runs; pass run directories (e.g. runs/exp) or the "
                                           "folder holding them (runs)\n")

        logdirs = []

        class Exited:  # a TensorBoard that was stopped at once
            def wait(self, timeout=None):
                return 0

            def poll(self):
                return 0

        def start(run_dirs, port=None):
            logdirs.append(logdir_args(run_dirs))
            return Exited(), "http://127.0.0.1:6006/"

        monkeypatch.setattr(api, "start_board", start)
        (tmp_path / "runs" / "exp").mkdir(parents=True)
        assert cli.main(["board"]) == 0
        assert logdirs == [["--logdir", str((tmp_path / "runs").resolve())]]
        assert "TensorBoard: http://127.0.0.1:6006/" in capsys.readouterr().out
    finally:
        signal.signal(signal.SIGTERM, sigterm)
