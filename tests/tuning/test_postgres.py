"""`tudui tune --storage postgresql://...`: a study in a real PostgreSQL server, Debian's binaries started by the test
in its own folder (`make test` installs Debian's `postgresql` where apt-get is usable): initdb, then `postgres` on a
Unix socket in that folder, stopped by its PID at the end."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
psycopg2 = pytest.importorskip("psycopg2")

from tudui import cli  # noqa: E402


def server_bin() -> Path | None:
    """The folder of initdb and postgres: Debian keeps them in /usr/lib/postgresql/VERSION/bin (the newest wins)."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "postgres").exists():
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0]))
    return Path(folders[-1]) if folders and (Path(folders[-1]) / "initdb").exists() else None


NOBODY = 65534  # the uid and gid the server runs as where root cannot open a user namespace


@cache
def user_namespaces() -> bool:
    """Whether this process may open a user namespace (Docker's default seccomp profile, for one, forbids it)."""
    userns = ["unshare", "--user", "--map-user=1000", "--map-group=1000", "true"]
    return shutil.which("unshare") is not None and subprocess.run(userns, capture_output=True).returncode == 0


def as_unprivileged(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root. As root, the server runs in a user namespace as uid 1000, which the kernel
    maps back to root for file access: it owns tmp_path's files as root does, and the client (root) reaches its
    socket. Where user namespaces are forbidden, it runs as nobody instead (setpriv: root drops its uid, gid and
    groups), in a folder that nobody owns (server_folder)."""
    if os.geteuid() != 0:
        return command
    if user_namespaces():
        return ["unshare", "--user", "--map-user=1000", "--map-group=1000", *command]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


def server_folder(tmp_path: Path) -> tuple[Path, bool]:
    """(the folder the server's files go in, whether the test must remove it): tmp_path, unless the server runs as
    nobody, who cannot enter pytest's root-only folders: then a folder of the test's own (mkdtemp in /tmp), given to
    nobody."""
    if os.geteuid() != 0 or user_namespaces():
        return tmp_path, False
    folder = Path(tempfile.mkdtemp(prefix="tudui-test-pg-", dir="/tmp"))  # /tmp itself: the tests' TMPDIR is root's
    os.chmod(folder, 0o700)
    os.chown(folder, NOBODY, NOBODY)
    return folder, True


@pytest.fixture
def postgres(tmp_path):
    """A running server: (URL of its `postgres` database over the Unix socket); stopped by its PID at the end."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server is not installed: `make test` installs Debian's postgresql")
    home, ours = server_folder(tmp_path)
    try:
        yield from running_server(bin_dir, home, tmp_path / "postgres.log")
    finally:
        if ours:
            shutil.rmtree(home)


def running_server(bin_dir: Path, home: Path, log_path: Path):
    """initdb in `home`, then the server on a Unix socket there: yields its URL, and stops it by its PID after."""
    data, sock = home / "pgdata", home / "sock"
    sock.mkdir()
    shutil.chown(sock, home.stat().st_uid, home.stat().st_gid)  # the server's user's, as `home` is
    subprocess.run(as_unprivileged([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tudui",
                                    "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C.UTF-8"]),
                   check=True, capture_output=True, timeout=120)
    with socket.socket() as s:  # a port the OS gives; it names the socket file (.s.PGSQL.PORT), no TCP is opened
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = log_path.open("wb")
    server = subprocess.Popen(as_unprivileged([str(bin_dir / "postgres"), "-D", str(data), "-k", str(sock), "-p",
                                               str(port), "-c", "listen_addresses=", "-c", "fsync=off"]),
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host=str(sock), port=port, user="tudui", dbname="postgres").close()
                break
            except psycopg2.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("postgres did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.1)
        yield f"postgresql+psycopg2://tudui@/postgres?host={sock}&port={port}"
    finally:
        # SIGINT: PostgreSQL's fast shutdown, which ends the backends of connections still open (SQLAlchemy's pool
        # keeps them; SIGTERM's smart shutdown would wait for them), then the postmaster itself
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_without_user_namespaces_the_server_would_run_as_nobody_in_a_folder_of_its_own(tmp_path, monkeypatch):
    """The fallback where user namespaces are forbidden, checked here whether or not they are: as root, the command
    runs as nobody, in a folder nobody owns and may write, which the test removes."""
    if os.geteuid() != 0:
        pytest.skip("as a user other than root, the server runs as that user: no fallback is needed")
    monkeypatch.setattr(sys.modules[__name__], "user_namespaces", lambda: False)
    home, ours = server_folder(tmp_path)
    try:
        assert ours and home.stat().st_uid == NOBODY and not home.is_relative_to(tmp_path)
        r = subprocess.run(as_unprivileged(["sh", "-c", f"id -u; touch {home}/written"]), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.split() == [str(NOBODY)], r.stderr
        assert (home / "written").stat().st_uid == NOBODY
    finally:
        shutil.rmtree(home)


def test_a_study_in_a_real_postgresql_server(tmp_path, postgres, capsys):
    argv = ["tune", "--data", "digits", "--model", "fast", "--epochs", "1", "--subset", "200", "--no-tensorboard",
            "--no-plots", "--project", str(tmp_path / "runs"), "--study", "pg", "--storage", postgres,
            "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--pruner", "none"]
    (tmp_path / "space.yaml").write_text("lr: [0.01, 0.02]\n")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # what the server holds, read back through a new connection: both trials, finished, with the runs' figures
    stored = optuna.load_study(study_name="pg", storage=postgres)
    assert sorted(t.number for t in stored.trials) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored.trials)
    for t in stored.trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == tmp_path / "runs" / "tune" / "pg" / f"trial-{t.number}" and (run / "best.pt").is_file()
        assert t.value == pytest.approx(json.loads((run / "metrics.json").read_text())["val"]["top1"])
    assert not (tmp_path / "runs/tune/pg/journal.log").exists()  # the study is the server's, not a journal file's
    assert re.search(r"^study pg \(postgresql\+psycopg2://.*\): 2 trials$", out, re.M), out[-1000:]
    # a second process's view: --report reads the same study from the server
    assert cli.main(["tune", "--study", "pg", "--project", str(tmp_path / "runs"), "--storage", postgres,
                     "--report"]) == 0
    assert re.search(r"^study pg \(postgresql\+psycopg2://.*\): 2 trials$", capsys.readouterr().out, re.M)
