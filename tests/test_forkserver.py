"""The tests' fork server (tests/forkserver.py) runs a child as the interpreter would: argv, working folder,
environment, sys.path from PYTHONPATH, exit status, signals, pipes; and falls back to a real subprocess where a
fork cannot be the same."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import forkserver
from tests.conftest import REPO, kill_tree

PROBE = ("import json, os, sys, numpy\n"
         "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'path0': sys.path[0], 'src': sys.path[1],\n"
         "                  'env': os.environ.get('PROBE'), 'pid': os.getpid(), 'ppid': os.getppid(),\n"
         "                  'draw': float(numpy.random.random()), 'main': __name__,\n"
         "                  'torch': 'torch' in sys.modules}))\n"
         "sys.exit(int(sys.argv[1]))\n")


def probe(tmp_path, *, code: int = 0, **env) -> tuple[subprocess.CompletedProcess, dict]:
    import json

    full = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", "PROBE": "值 1"} | env
    r = forkserver.run([sys.executable, "-c", PROBE, str(code), "参数 2"], capture_output=True, text=True,
                       env=full, cwd=tmp_path, timeout=60)
    return r, json.loads(r.stdout)


def test_a_forked_child_sees_what_a_fresh_interpreter_would(tmp_path):
    r, seen = probe(tmp_path, code=3)
    assert r.returncode == 3 and r.stderr == ""
    assert seen["argv"] == ["-c", "3", "参数 2"] and seen["cwd"] == str(tmp_path) and seen["path0"] == ""
    assert seen["src"] == str(REPO / "src") and seen["env"] == "值 1" and seen["main"] == "__main__"
    assert seen["pid"] != os.getpid() and seen["ppid"] != os.getpid()  # a fork of the server, not of this process
    assert seen["torch"]  # imported before the fork: what the server is for
    _, again = probe(tmp_path)
    assert again["draw"] != seen["draw"]  # NumPy's global generator is seeded afresh in every child


def test_the_childs_sys_path_follows_its_own_pythonpath(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "only_here.py").write_text("X = 42\n")
    env = os.environ | {"PYTHONPATH": str(tmp_path / "mine"), "PYTHONUNBUFFERED": "1"}
    r = forkserver.run([sys.executable, "-c", "import only_here, sys; print(only_here.X, sys.path[1])"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["42", str(tmp_path / "mine")], r.stderr
    env.pop("PYTHONPATH")
    r = forkserver.run([sys.executable, "-c", "import tudui"], capture_output=True, text=True, env=env, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 1 and "No module named 'tudui'" in r.stderr  # the server's own src is not lent to it


def test_scripts_modules_exceptions_and_signals(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nfrom helper import V\nprint(__name__, V, sys.argv[1:])\nraise ValueError('bad 值')\n")
    (tmp_path / "helper.py").write_text("V = 'beside the script'\n")
    r = forkserver.run([sys.executable, str(script), "a"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == "__main__ beside the script ['a']\n"
    assert r.stderr.startswith("Traceback") and r.stderr.rstrip().endswith("ValueError: bad 值")

    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    r = forkserver.run([sys.executable, "-m", "tudui", "--version"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("tudui "), r.stderr

    p = forkserver.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert isinstance(p, forkserver.Forked) and p.stdout.readline() == "up\n" and p.poll() is None
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == -signal.SIGINT  # an uncaught KeyboardInterrupt ends Python by the signal
    p.stdout.close()
    p = forkserver.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        p.wait(0.2)
        raise AssertionError("wait should have timed out")
    except subprocess.TimeoutExpired:
        pass
    p.kill()
    assert p.wait(30) == -signal.SIGKILL


def test_a_new_session_and_forks_of_forks_found_as_descendants(tmp_path):
    """start_new_session (as torchrun starts its ranks) gives the fork a session and process group of its own; with
    FORK_CHILDREN a fork's own `python ...` children (subprocess.Popen, `-u` included) are forks too, and
    descendants() finds them from the PID the test started, with the RANK each was given."""
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    r = forkserver.run([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid() == os.getpgid(0))"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout == "False\n"  # a plain fork stays in the server's session
    p = forkserver.Popen([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid() == os.getpgid(0))"],
                         stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert isinstance(p, forkserver.Forked) and p.communicate(timeout=60)[0] == "True\n" and p.returncode == 0

    parent = (tmp_path / "parent.py")
    parent.write_text(
        "import os, subprocess, sys\n"
        "kid = subprocess.Popen([sys.executable, '-u', '-c', 'import sys, time; sys.stdout.write(\"kid\\\\n\"); "
        "time.sleep(60)'], env=os.environ | {'RANK': '1'}, start_new_session=True)\n"
        "sys.stdout.write(f'{type(kid).__name__} {kid.pid}\\n'); sys.stdout.flush()\n"
        "sys.stdin = open(sys.argv[1]); kid.wait()\n")
    p = forkserver.Popen([sys.executable, str(parent), os.devnull], stdout=subprocess.PIPE, text=True,
                         env=env | forkserver.FORK_CHILDREN)
    try:
        # one write each (unbuffered print writes its parts one by one), in either order: the kid may write first
        lines = sorted([p.stdout.readline(), p.stdout.readline()])
        assert lines[1] == "kid\n"  # the kid's own output, through its parent's pipe
        kind, pid = lines[0].split()
        assert kind == "Forked"
        assert forkserver.descendants(p.pid) == [int(pid)] and forkserver.family()[int(pid)]["RANK"] == "1"
    finally:
        kill_tree(p)
    assert p.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while int(pid) in forkserver.family():  # killed with it, then reaped by the server (when its SIGCHLD is read)
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_what_a_fork_cannot_reproduce_runs_as_a_real_subprocess(tmp_path, monkeypatch):
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    for changed in ({"LC_ALL": "C"}, {"OMP_NUM_THREADS": "7"}, {"PYTHONIOENCODING": "latin-1"}):
        p = forkserver.Popen([sys.executable, "-c", "pass"], env=env | changed)
        assert isinstance(p, subprocess.Popen), changed
        assert p.wait(60) == 0
    assert forkserver.Popen([sys.executable, "-c", "pass"], env=env).wait(60) == 0  # the server runs by now
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # changed in this process after the server started
    p = forkserver.Popen([sys.executable, "-c", "pass"], env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    assert isinstance(p, subprocess.Popen) and p.wait(60) == 0  # the server's own start is what counts
    monkeypatch.setenv("TUDUI_TESTS_FORK", "0")
    p = forkserver.Popen([sys.executable, "-c", "pass"], env=env)
    assert isinstance(p, subprocess.Popen) and p.wait(60) == 0


def test_a_bound_on_the_data_segment_holds_in_a_fork_and_in_a_real_subprocess(monkeypatch):
    """rlimit_data: the child's RLIMIT_DATA, set in the fork itself or by the real subprocess's preexec_fn."""
    resource = pytest.importorskip("resource")
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_DATA)[0])"
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    limit = 6 << 30
    for fork in ("1", "0"):
        monkeypatch.setenv("TUDUI_TESTS_FORK", fork)
        r = forkserver.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                           rlimit_data=limit)
        assert r.returncode == 0 and int(r.stdout) == limit, (fork, r.stdout, r.stderr)
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] != limit  # this process is not bound
