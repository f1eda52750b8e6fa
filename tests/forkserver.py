"""Python child processes for the tests, forked from an interpreter that has imported torch once.

Each `python -m tudui ...`, `python -c CODE` or `python SCRIPT` a test starts spends about 2 s of CPU importing
torch before it does anything: in a 2026-12-06 profile of `make test` on 2 cores, the suite's child processes used
583 CPU-seconds, most of it in that import. Here one server process per pytest worker imports torch and numpy once;
each run is a fork of it that becomes the run: a real process with its own PID, exit status, signals, pipes and
descendants, which sets the environment, working folder, `sys.argv` and `sys.path[0]` the test gave and runs the
module, code or script through runpy as the interpreter's `-m`, `-c` and script modes do, then exits as Python does
(atexit, an uncaught exception's traceback and status 1, KeyboardInterrupt's SIGINT status).

The child's sys.path and stdio buffering follow its own PYTHONPATH and PYTHONUNBUFFERED. What a fork cannot
reproduce runs as a real subprocess instead (`forkable`): an environment that changes what Python, the C library or
torch read while starting (other PYTHON* variables, LANG, LC_*, OMP_*, MPL*, ...), a run whose stdin is not /dev/null, or
any run when TUDUI_TESTS_FORK=0. Tests whose point is the interpreter's own start (what `import
tudui.cli` loads) use subprocess directly.

`Popen` and `run` take the same arguments as subprocess's (the ones the tests use) and return objects that behave
the same way for them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
# subprocess.Popen itself, for the runs that cannot be forks, even where a test routes subprocess.Popen through here
_REAL_POPEN = subprocess.Popen

# Environment variables read while an interpreter starts (Python's own, the C library's locale and allocator,
# OpenMP's and torch's thread and device settings): a run that sets one differently from the server is not forked.
STARTUP_PREFIXES = ("PYTHON", "LC_", "LANG", "OMP_", "MKL_", "KMP_", "GOMP_", "TORCH", "PYTORCH", "CUDA", "LD_",
                    "MALLOC", "NCCL", "GLIBC", "MPL")
# ... except those read only when used, which torch itself sets in os.environ as it runs (inductor's cache folder)
# ... and torchrun's own variables for its ranks (read by torch.distributed as the rank runs: its restart count, run
# id, NCCL's error handling), so its ranks can be forks too (FORK_CHILDREN)
RUN_TIME_PREFIXES = ("TORCHINDUCTOR_", "TORCHELASTIC_", "TORCH_NCCL_")
# In a run's environment: the Python processes it starts through subprocess.Popen (torchrun's ranks, the torchrun that
# `tudui train --nproc N` starts) are forks of the same server where they can be, each ~3 s of importing torch saved.
# Their parent in the process tree is then the server, not the run: descendants() finds them for the tests that
# signal a job's processes. Tests set it for torchrun jobs only.
FORK_CHILDREN = {"TUDUI_TESTS_FORK_CHILDREN": "1"}

# The server: imports torch once, then forks one child per request. A request is one SOCK_SEQPACKET message (JSON:
# kind, target, args, env, cwd) carrying the child's stdin/stdout/stderr as file descriptors; the reply is
# {"pid": N}, later {"status": S} (subprocess's returncode convention) once the child has ended. It exits when its
# stdin (a pipe from the pytest worker) closes.
SERVER = r'''
import gc, json, os, select, signal, socket, sys
import numpy, torch  # what every child then has for free
import PIL.Image, matplotlib.figure  # and what most runs draw and decode with (their import reads MPL* settings)
import importlib.util
SOCKET_PATH, SERVER_ENV = sys.argv[1], dict(os.environ)
# this file's client half, for a child that starts forks of its own (FORK_CHILDREN)
_spec = importlib.util.spec_from_file_location("tudui_tests_forkclient", sys.argv[2])
client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client)
# torch._dynamo (~1.4 s of CPU): every training run imports it (torch.optim's first add_param_group does), and
# torchvision imports it too (then ~0.15 s more)
import torch._dynamo, torchvision

# A pytest started in the background by a non-interactive shell ignores SIGINT (POSIX shells do that to background
# jobs), and every child would inherit it: the children start with Python's own handler and no signal blocked, as a
# Python started from a terminal does
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_SETMASK, [])

gc.freeze()  # the collector leaves the imported objects alone: a child does not copy their pages by touching them

def serve(path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    waiting = {}  # child pid -> the connection its status goes back on
    family = {}  # live child pid -> {"parent": the PID that asked for it, its RANK and LOCAL_RANK}: descendants()
    print("ready", flush=True)
    while True:
        ready = select.select([srv, wake_r, 0], [], [])[0]
        if 0 in ready and not os.read(0, 1024):
            raise SystemExit(0)  # the pytest worker has gone
        if wake_r in ready:
            os.read(wake_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                family.pop(pid, None)
                conn = waiting.pop(pid, None)
                if conn is not None:
                    try:
                        conn.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())
                    except OSError:
                        pass
                    conn.close()
        if srv in ready:
            conn, _ = srv.accept()
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            req = json.loads(msg)
            if req["kind"] == "family":
                conn.send(json.dumps(family).encode())
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                if req.get("setsid"):  # start_new_session: torchrun signals each rank's process group
                    os.setsid()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd, target in zip(fds, (0, 1, 2)):
                    os.dup2(fd, target)
                    os.close(fd)
                for c in (srv, conn, *waiting.values()):
                    c.close()
                os.close(wake_r)
                os.close(wake_w)
                return req
            for fd in fds:
                os.close(fd)
            conn.send(json.dumps({"pid": pid}).encode())
            waiting[pid] = conn
            family[pid] = {"parent": req.get("parent"), "RANK": req["env"].get("RANK"),
                           "LOCAL_RANK": req["env"].get("LOCAL_RANK")}

def become(req):
    import io, tempfile
    env = req["env"]
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # the folder is found again from the child's own $TMPDIR, as a fresh interpreter would
    # sys.path as the child's own PYTHONPATH would have made it (the server's is this checkout's src, at [1])
    sys.path[1:2] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not env.get("PYTHONUNBUFFERED"):  # the server's stdio is unbuffered: a pipe's buffering, as Python sets it
        for name, fd, line in (("stdout", 1, os.isatty(1)), ("stderr", 2, True)):
            old = getattr(sys, name)
            new = io.TextIOWrapper(io.open(fd, "wb", closefd=False), encoding=old.encoding, errors=old.errors,
                                   line_buffering=line)
            setattr(sys, name, new)
            setattr(sys, f"__{name}__", new)
    os.chdir(req["cwd"])
    if req.get("rlimit_data") is not None:
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (req["rlimit_data"], req["rlimit_data"]))
    if env.get("TUDUI_TESTS_FORK_CHILDREN") == "1":
        client.attach(SOCKET_PATH, SERVER_ENV)
    numpy.random.seed()  # a fresh interpreter's global NumPy generator is seeded from the OS, not copied
    kind, target, args = req["kind"], req["target"], req["args"]
    # An uncaught KeyboardInterrupt ends Python by SIGINT, as a real interpreter does; here the child sends it to
    # itself once its own exit handlers have run: an exit handler of torch._dynamo (imported above) clears the
    # interpreter's own note of the interrupt, and Python would end with status 1
    import atexit
    interrupted = []

    def end_by_sigint():
        if interrupted:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)

    atexit.register(end_by_sigint)
    try:
        run(kind, target, args)
    except KeyboardInterrupt:
        interrupted.append(True)
        raise

def run(kind, target, args):
    import runpy, types
    if kind == "module":
        sys.argv = [target, *args]
        sys.path[0] = os.getcwd()
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif kind == "code":
        sys.argv = ["-c", *args]
        sys.path[0] = ""
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        sys.argv = [target, *args]
        sys.path[0] = os.path.dirname(os.path.realpath(target))
        runpy.run_path(target, run_name="__main__")

become(serve(sys.argv[1]))
'''


class _Server:
    """The fork server of this pytest process, started on first use."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="tudui-tests-fork-")
        self.path = os.path.join(self.folder, "s")
        self.env = os.environ.copy() | {"PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
        self.proc = _REAL_POPEN([sys.executable, "-c", SERVER, self.path, __file__], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=self.env, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the tests' fork server did not start (exit status {self.proc.wait()})")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.proc.stdin.close()  # it exits on EOF
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.folder)
        except OSError:
            pass


class _Attached:
    """The server as a child of it sees it (FORK_CHILDREN): its socket and the environment it started in."""

    def __init__(self, path: str, env: dict) -> None:
        self.path, self.env = path, env

    def alive(self) -> bool:
        return True


_server: _Server | _Attached | None = None
_lock = threading.Lock()


def _get_server() -> _Server | _Attached:
    global _server
    with _lock:
        if _server is None or not _server.alive():
            _server = _Server()
        return _server


def routed(real, fork, takes: set[str]):
    """subprocess.run or Popen (`real`), through the fork server (`fork`, this module's run or Popen) for a
    `python ...` child whose keyword arguments are all among those `fork` takes."""
    def call(args, **kwargs):
        if set(kwargs) <= takes and isinstance(args, (list, tuple)) and parse(args) is not None:
            return fork(args, **kwargs)
        return real(args, **kwargs)
    return call


def attach(path: str, env: dict) -> None:
    """In a child of the server (FORK_CHILDREN): its own Python children through subprocess.Popen, torchrun's ranks
    among them (torch elastic calls Popen(args, env=, stdout=, stderr=, start_new_session=True)), are forks too."""
    global _server
    _server = _Attached(path, env)
    subprocess.Popen = routed(_REAL_POPEN, Popen, {"stdout", "stderr", "stdin", "text", "env", "cwd",
                                                   "start_new_session"})


def family() -> dict[int, dict]:
    """The server's live children: pid -> {"parent": the PID that asked for it, "RANK" and "LOCAL_RANK": those of
    its environment, or None}."""
    server = _get_server()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.connect(server.path)
        socket.send_fds(conn, [json.dumps({"kind": "family"}).encode()], [])
        return {int(k): v for k, v in json.loads(conn.recv(1 << 20)).items()}


def descendants(pid: int, forks: dict[int, dict] | None = None) -> list[int]:
    """The PIDs descending from `pid`: its children in the process tree and the server's children it (or one of them)
    asked for (FORK_CHILDREN), and theirs, recursively. Only ever processes the given one started. `forks`: family()
    where the caller has just asked for it."""
    import psutil

    if forks is None:
        forks = family() if _server is not None else {}
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [c.pid for c in psutil.Process(p).children()]
        except psutil.NoSuchProcess:
            kids = []
        kids += [k for k, v in forks.items() if v["parent"] == p]
        kids = [k for k in dict.fromkeys(kids) if k not in found and k != pid]
        found += kids
        todo += kids
    return found


def close() -> None:
    """Stop this process's fork server (if one was started): at the end of the test session."""
    global _server
    with _lock:
        if _server is not None:
            _server.close()
            _server = None


def parse(args) -> tuple[str, str, list[str]] | None:
    """(kind, target, rest) of `python -m MOD ...`, `python -c CODE ...` or `python SCRIPT ...`; None otherwise."""
    args = [os.fspath(a) for a in args]
    if len(args) < 2 or args[0] != sys.executable:
        return None
    if args[1] == "-u":  # unbuffered stdio (torchrun starts its ranks so): PYTHONUNBUFFERED in a fork
        args = args[:1] + args[2:]
    if args[1] in ("-m", "-c"):
        return (("module" if args[1] == "-m" else "code"), args[2], args[3:]) if len(args) > 2 else None
    if args[1].startswith("-"):
        return None
    return "script", args[1], args[2:]


def forkable(env: dict, server_env: dict) -> bool:
    """Whether a run in `env` may be a fork of a server started in `server_env`: every variable read while an
    interpreter starts is the same (PYTHONPATH and PYTHONUNBUFFERED aside: the child follows its own)."""
    keys = {k for k in (*env, *server_env) if k.startswith(STARTUP_PREFIXES) and not k.startswith(RUN_TIME_PREFIXES)}
    keys -= {"PYTHONPATH", "PYTHONUNBUFFERED"}
    return all(env.get(k) == server_env.get(k) for k in keys)


class Forked:
    """subprocess.Popen's interface (pid, poll, wait, returncode, send_signal, terminate, kill, stdout, stderr) for a
    child of the fork server."""

    def __init__(self, args, conn: socket.socket, pid: int, stdout, stderr) -> None:
        self.args, self._conn, self.pid = args, conn, pid
        self.stdout, self.stderr, self.stdin = stdout, stderr, None
        self.returncode: int | None = None
        self._wait_lock = threading.Lock()

    def _receive(self, timeout: float | None) -> None:
        self._conn.settimeout(timeout)
        try:
            msg = self._conn.recv(4096)
        except (socket.timeout, BlockingIOError):
            return
        if not msg:  # the server went away without a status
            raise RuntimeError(f"the fork server ended before child {self.pid}")
        self.returncode = json.loads(msg)["status"]
        self._conn.close()

    def poll(self) -> int | None:
        with self._wait_lock:
            if self.returncode is None:
                self._receive(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._wait_lock:
            if self.returncode is None:
                self._receive(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a PID the server has already reaped (and the system may have reused)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for p in (self.stdout, self.stderr):
            if p is not None:
                p.close()
        self.wait()

    def communicate(self, input=None, timeout: float | None = None) -> tuple:
        """Read stdout and stderr to their ends and wait: (out, err), as Popen.communicate without input. After a
        TimeoutExpired it may be called again (the readers keep reading)."""
        if input is not None:
            raise ValueError("a forked child's stdin is /dev/null: no input can be sent")
        if not hasattr(self, "_readers"):
            self._out: dict[str, object] = {}

            def drain(name: str, pipe) -> None:
                self._out[name] = pipe.read() if pipe is not None else None

            self._readers = [threading.Thread(target=drain, args=(n, p), daemon=True)
                             for n, p in (("out", self.stdout), ("err", self.stderr))]
            for t in self._readers:
                t.start()
        for t in self._readers:
            t.join(timeout)
        if any(t.is_alive() for t in self._readers):
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        for p in (self.stdout, self.stderr):
            if p is not None:
                p.close()
        return self._out.get("out"), self._out.get("err")


def _limit_data(limit: int):
    """A preexec_fn that bounds the child's data segment to `limit` bytes (RLIMIT_DATA)."""
    def preexec():
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return preexec


def Popen(args, *, stdout=None, stderr=None, stdin=subprocess.DEVNULL, text: bool = False, env: dict | None = None,
          cwd=None, rlimit_data: int | None = None, start_new_session: bool = False, **kwargs):
    """subprocess.Popen(args, ...), forked from the server where `forkable`: stdout/stderr may be PIPE, STDOUT (for
    stderr), DEVNULL, a file object or None; stdin must be DEVNULL (the default here) or None. `rlimit_data`: bytes
    of data segment the child may use (RLIMIT_DATA, set in the child before it runs; POSIX)."""
    env = dict(os.environ if env is None else env)
    parsed = parse(args)
    if parsed is not None and os.fspath(args[1]) == "-u":
        env["PYTHONUNBUFFERED"] = "1"
    server = None
    if parsed is not None and not kwargs and stdin in (subprocess.DEVNULL, None) \
            and os.environ.get("TUDUI_TESTS_FORK", "1") != "0":
        server = _get_server()  # compared with the environment it really started in, not today's os.environ
    if server is None or not forkable(env, server.env):
        if rlimit_data is not None:  # a fork sets it itself (become)
            kwargs["preexec_fn"] = _limit_data(rlimit_data)
        return _REAL_POPEN(args, stdout=stdout, stderr=stderr, stdin=stdin, text=text, env=env, cwd=cwd,
                           start_new_session=start_new_session, **kwargs)
    kind, target, rest = parsed
    ours: list[int] = []  # descriptors this process closes once the child has its copies
    mine: dict[str, object] = {}

    def child_end(spec, name: str) -> int:
        if spec == subprocess.PIPE:
            r, w = os.pipe()
            ours.append(w)
            mine[name] = open(r, "r") if text else open(r, "rb")
            return w
        if spec == subprocess.DEVNULL or spec is None and name == "stdin":
            fd = os.open(os.devnull, os.O_RDWR)
            ours.append(fd)
            return fd
        if spec is None:
            return {"stdout": 1, "stderr": 2}[name]
        return spec if isinstance(spec, int) else spec.fileno()

    fds = [child_end(stdin, "stdin"), child_end(stdout, "stdout")]
    fds.append(fds[1] if stderr == subprocess.STDOUT else child_end(stderr, "stderr"))
    req = {"kind": kind, "target": target, "args": list(rest), "env": env, "rlimit_data": rlimit_data,
           "setsid": start_new_session, "parent": os.getpid(),
           "cwd": os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(server.path)
        socket.send_fds(conn, [json.dumps(req).encode()], fds)
        pid = json.loads(conn.recv(4096))["pid"]
    finally:
        for fd in ours:
            os.close(fd)
    return Forked(args, conn, pid, mine.get("stdout"), mine.get("stderr"))


def run(args, *, capture_output: bool = False, text: bool = False, timeout: float | None = None, env=None, cwd=None,
        check: bool = False, stdout=None, stderr=None, rlimit_data: int | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(args, ...) through Popen above."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    proc = Popen(args, stdout=stdout, stderr=stderr, text=text, env=env, cwd=cwd, rlimit_data=rlimit_data)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(args, timeout, out, err) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result
