"""Bounded load and soak of `tudui serve` on loopback: the minimal server a user would write, against tudui serve
answering one request per forward pass and with micro-batching (the soak); then requests/s and latency at 1 to 128
clients from a compiled load generator (the sweep).

    python benchmarks/serve_load.py [MODEL] [--parts soak sweep] [--duration 60] [--warmup 10] [--concurrency 64]
                                    [--max-batch 32] [--max-wait-ms 2] [--workers 1] [--no-baseline]
                                    [--clients 1 8 32 64 128] [--sweep-duration 10] [--generator auto|wrk|python]
                                    [--before REF] [--quick]

The sweep: for each server (the minimal one; `tudui serve` as a user starts it, `--workers auto`; the same with
`--workers 1`; the same with `--runtime torch`, the forward pass on PyTorch eager instead of the ONNX Runtime copy
`--runtime auto` makes on a CPU; with --before REF, `tudui serve --workers 1` from that commit of this repository,
the same environment) and each number of keep-alive clients, 2 s uncounted then --sweep-duration s counted, from Debian's
`wrk` (one thread, C code, a Lua script cycling through the same PNGs) where it is on the PATH, else this script's
own asyncio client (which then takes a core itself). The generator's CPU time is reported (its rusage), so a
saturated generator shows.

MODEL is a checkpoint, run directory or .onnx; without it the default model (`fast`, 1x28x28, 10 classes) is
trained for one epoch on the bundled digits first (a few seconds; the weights do not matter for speed). The
baseline is the server a user would write in about 30 lines (MINIMAL_SERVER below: FastAPI, ONNX Runtime and
Pillow, one endpoint, the model's ONNX export, one request per forward pass). For each mode the server runs in its
own process on 127.0.0.1 (`tudui serve MODEL --port 0 --max-batch B --workers W`, as users run it), and
`--concurrency` clients (one httpx client and connection each, all on one asyncio loop in this
process) send POST /predict with 28x28 PNGs
(real Fashion-MNIST test images where installed, else noise) back to back: first `--warmup` seconds not
counted, then `--duration` seconds counted, then the load stops by itself. The server's resident memory
(psutil; with --workers, summed over its processes) is read at the end of the warm-up, every half second after it,
and at the end.

Prints one table with the modes side by side (requests/s, latency percentiles, batch sizes, memory) and
the ratios. Exits 1 if any request failed. A benchmark, not a test: speed is
printed with a verdict, never asserted.
"""
from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import httpx
import numpy as np
import psutil
from PIL import Image

from tudui.inference import Predictor


# The baseline: what a user would write to serve the ONNX export (argv: the .onnx file). Prints its URL, then serves.
MINIMAL_SERVER = """
import io, json, socket, sys
import numpy as np, onnxruntime as ort, uvicorn
from fastapi import FastAPI, Request
from PIL import Image

sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
size, mode = meta["img_size"], "L" if meta["channels"] == 1 else "RGB"
mean = np.array(meta["mean"], np.float32)[:, None, None]
std = np.array(meta["std"], np.float32)[:, None, None]
app = FastAPI()

@app.post("/predict")
async def predict(request: Request):
    img = Image.open(io.BytesIO(await request.body())).convert(mode).resize((size, size))
    x = (np.asarray(img, np.float32).reshape(size, size, -1).transpose(2, 0, 1) / 255 - mean) / std
    logits = sess.run(None, {"input": x[None]})[0][0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return {"predictions": [{"class": meta["classes"][i], "probability": float(p[i])}
                            for i in np.argsort(-p)[:5]], "batch": 1}

@app.get("/health")
def health():
    return {"status": "ok"}

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


def start_server(model: str, max_batch: int, max_wait_ms: float, workers: int | str = 1,
                 baseline: bool = False, src=None, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`tudui serve MODEL --port 0 ...` (from the `src` folder of another tudui, default this checkout's; or,
    baseline, MINIMAL_SERVER on the .onnx MODEL) in its own process; returns it and its base URL once it listens."""
    env = os.environ | {"PYTHONPATH": f"{src or C.ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", MINIMAL_SERVER, model] if baseline else \
        [sys.executable, "-m", "tudui", "serve", model, "--port", "0", "--device", "cpu", "--max-batch",
         str(max_batch), "--max-wait-ms", str(max_wait_ms), "--workers", str(workers), *extra]
    # Its log goes to a file: with a line per request (--access-log, or uvicorn's default in the minimal server), read
    # through a pipe by a thread here, it took CPU from the same cores as the server and the generator.
    log = tempfile.NamedTemporaryFile("w+", prefix="tudui-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        while True:
            text = Path(log.name).read_text(errors="replace")
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", text)
            if m:
                return proc, m.group(1)
            if proc.poll() is not None:
                raise SystemExit(f"tudui serve exited with code {proc.returncode}:\n{text}")
            time.sleep(0.1)
    finally:
        log.close()
        os.unlink(log.name)  # the server keeps writing to the open file, which goes when it stops


def sample_images(channels: int, side: int, n: int = 64) -> list[bytes]:
    """n PNG bodies of the model's kind: real Fashion-MNIST test images when installed (1 channel), else noise."""
    from tudui.data.sources import find

    rng = np.random.default_rng(0)
    if channels == 1 and find("fashion-mnist") is not None:
        arrays = list(C.load_fmnist(False, limit=n)[0])  # (28, 28) uint8 each
    else:
        shape = (side, side) + ((3,) if channels == 3 else ())
        arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    out = []
    for arr in arrays:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def load(url: str, pid: int, images: list[bytes], concurrency: int, warmup_s: float, duration_s: float) -> dict:
    """`concurrency` clients posting back to back for warmup_s + duration_s; what the counted part measured."""
    server = psutil.Process(pid)

    def resident() -> int:  # bytes, the server and its worker processes
        procs = [server, *server.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running())
    latencies, batches, errors, warm_errors = [], [], [], []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    t_start = time.perf_counter()
    t_warm, t_end = t_start + warmup_s, t_start + warmup_s + duration_s
    rss: dict = {"samples": []}  # bytes

    async def client_loop(client: httpx.AsyncClient, k: int) -> None:
        i = k
        while (t := time.perf_counter()) < t_end:
            body, failed = images[i % len(images)], None
            i += concurrency
            try:
                r = await client.post("/predict", content=body)
                if r.status_code == 200:
                    batch = r.json()["batch"]
                else:
                    failed = f"HTTP {r.status_code}: {r.text[:100]}"
            except httpx.HTTPError as e:
                failed = repr(e)
            if t < t_warm:  # started in the warm-up: not counted
                if failed:
                    warm_errors.append(failed)
                continue
            if failed:
                errors.append(failed)
            else:
                latencies.append((time.perf_counter() - t) * 1000)
                batches.append(batch)

    async def watch_memory() -> None:
        await asyncio.sleep(max(0.0, t_warm - time.perf_counter()))
        rss["warm"] = resident()
        while time.perf_counter() < t_end:
            await asyncio.sleep(0.5)
            rss["samples"].append(resident())

    # One client object (one keep-alive connection) per simulated client, as separate users would have: a single
    # httpx client shared by 64 tasks spends its time in its own connection pool (~170 requests/s at most here,
    # against ~1,600 with one client each, measured against a trivial server).
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60, **PLAIN_HTTP) for _ in range(concurrency)]
    try:
        await asyncio.gather(watch_memory(), *(client_loop(c, k) for k, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.aclose()
    wall = time.perf_counter() - t_warm  # from the end of the warm-up to the last answer
    rss["end"] = resident()
    return {"latencies": latencies, "batches": batches, "errors": errors, "warm_errors": warm_errors, "wall": wall,
            "rss_warm": rss["warm"], "rss_end": rss["end"], "rss_peak": max(rss["samples"] + [rss["end"]])}


def run_mode(model: str, max_batch: int, max_wait_ms: float, images: list[bytes], args, baseline: bool = False) -> dict:
    proc, url = start_server(model, max_batch, max_wait_ms, args.workers, baseline)
    try:
        load_before = os.getloadavg()[0]
        result = asyncio.run(load(url, proc.pid, images, args.concurrency, args.warmup, args.duration))
        # after the load
        result["alive"] = httpx.get(f"{url}/health", timeout=30, **PLAIN_HTTP).json() == {"status": "ok"}
        result["loadavg"] = (load_before, os.getloadavg()[0])
    finally:
        proc.terminate()
        proc.wait(30)
    return result


def wrk_script(work, images: list[bytes]) -> str:
    """A wrk Lua script posting the images (written under work/bodies) in turn as raw image/png bodies."""
    folder = work / "bodies"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, body in enumerate(images):
        (folder / f"{i:03d}.png").write_bytes(body)
        paths.append(str(folder / f"{i:03d}.png"))
    script = work / "post.lua"
    script.write_text("local bodies = {}\n"
                      + "".join(f'do local f = io.open("{p}", "rb"); bodies[#bodies + 1] = f:read("*a"); f:close() end\n'
                                for p in paths)
                      + "local i = 0\n"
                      + "request = function()\n  i = i % #bodies + 1\n"
                      + '  return wrk.format("POST", "/predict", {["Content-Type"] = "image/png"}, bodies[i])\nend\n')
    return str(script)


# Every server here is plain HTTP on 127.0.0.1: no TLS, so the clients skip loading the certificate bundle, which
# costs each httpx client ~30 ms of CPU (the load's 16 clients per mode, every health check) on the cores the
# server and the generator share.
PLAIN_HTTP = {"verify": False}
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, clients: int, seconds: float, script: str) -> dict:
    """One wrk run: requests/s, latency percentiles (ms), failed requests, and wrk's own CPU seconds (rusage)."""
    proc = subprocess.Popen(["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency",
                             "--timeout", "30s", "-s", script, f"{url}/predict"], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or "Requests/sec" not in out:
        raise SystemExit(f"wrk failed (exit {proc.returncode}):\n{out}")
    pct = {int(q): float(v) * UNITS_MS[u] for q, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": pct[50], "p99": pct[99],
            "failed": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
            "cpu_s": usage.ru_utime + usage.ru_stime, "seconds": max(1, round(seconds))}


def run_python_client(url: str, pid: int, images: list[bytes], clients: int, seconds: float) -> dict:
    """The same figures from this script's asyncio client (no wrk), its CPU time from this process's."""
    cpu0 = time.process_time()
    r = asyncio.run(load(url, pid, images, clients, 0.0, seconds))
    lat = np.array(r["latencies"]) if r["latencies"] else np.array([float("nan")])
    return {"rate": len(r["latencies"]) / r["wall"], "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "failed": len(r["errors"]) + len(r["warm_errors"]),
            "cpu_s": time.process_time() - cpu0, "seconds": r["wall"]}


def server_rss(pid: int) -> int:
    """Bytes resident in the server process and its worker processes."""
    server = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [server, *server.children(recursive=True)] if p.is_running())


def sweep(model: str, onnx: str | None, images: list[bytes], work, args) -> list[list[str]]:
    """The sweep's rows (and the targets' figures in args.sweep_results): every server at every client count."""
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    if generator == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--generator wrk: wrk is not on the PATH; install Debian's wrk (make bench does) or use "
                         "--generator python")
    script = wrk_script(work, images) if generator == "wrk" else None
    servers = []
    if onnx is not None:
        servers.append(("minimal FastAPI + ORT", dict(model=onnx, baseline=True, workers=1)))
    # --quick: one worker, the same code as --workers auto on one process (a second worker is a second interpreter
    # importing torch, seconds of a smoke test; tests/inference/test_server_processes.py runs several)
    args.serve_row = "tudui serve --workers 1" if args.quick else "tudui serve"
    servers.append((args.serve_row, dict(model=model, workers=1 if args.quick else "auto")))
    if not args.quick:
        servers.append(("tudui serve --workers 1", dict(model=model, workers=1)))
        # what the ONNX Runtime copy buys (--runtime auto on a CPU): the same server on PyTorch eager
        servers.append(("tudui serve --runtime torch", dict(model=model, workers="auto", extra=("--runtime", "torch"))))
    if args.before:
        before = work / f"before-{args.before}"
        if not (before / "src" / "tudui").is_dir():
            before.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(C.ROOT), "archive", args.before, "src"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        servers.append((f"tudui serve --workers 1 at {args.before}", dict(model=model, workers=1, src=before / "src")))
    warm = 0.3 if args.quick else 2.0  # s of uncounted load before each cell (the smoke test: only that it runs)
    print(f"sweep: {generator} as the load generator, clients {args.clients}, {warm:g} s warm-up + "
          f"{args.sweep_duration:g} s counted each", flush=True)
    rows, results = [], {}
    for name, kw in servers:
        proc, url = start_server(kw["model"], args.max_batch, args.max_wait_ms, kw["workers"],
                                 kw.get("baseline", False), kw.get("src"), kw.get("extra", ()))
        try:
            deadline = time.monotonic() + 60
            while True:  # printing its address comes before listening in the minimal server: wait for an answer
                try:
                    if httpx.get(f"{url}/health", timeout=5, **PLAIN_HTTP).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
            rss0 = None
            for clients in args.clients:
                def once(seconds):
                    if generator == "wrk":
                        return run_wrk(url, clients, seconds, script)
                    return run_python_client(url, proc.pid, images, clients, seconds)
                once(warm)  # warm-up, not counted
                rss0 = rss0 if rss0 is not None else server_rss(proc.pid)
                r = once(args.sweep_duration)
                results[name, clients] = r
                print(f"  {name}, {clients} clients: {r['rate']:,.0f} requests/s", flush=True)
            growth = (server_rss(proc.pid) - rss0) / rss0
            alive = httpx.get(f"{url}/health", timeout=30, **PLAIN_HTTP).json() == {"status": "ok"}
        finally:
            proc.terminate()
            proc.wait(30)
        for clients in args.clients:
            r = results[name, clients]
            rows.append([str(clients), name, f"{r['rate']:,.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", str(r["failed"]),
                         f"{r['cpu_s'] / r['seconds']:.0%}", f"{growth:+.1%}", "yes" if alive else "NO"])
        results[name, "growth"], results[name, "alive"] = growth, alive
    args.sweep_results, args.sweep_generator = results, generator
    return rows


def sweep_targets(args) -> list[list[str]]:
    """The sweep's verdicts: tudui serve against the minimal server at 32 clients, and against --before at 64."""
    res, rows = args.sweep_results, []
    failed = sum(r["failed"] for k, r in res.items() if isinstance(k[1], int))
    rows.append(["sweep: zero failed requests", str(failed), C.verdict(failed == 0)])
    growth = max(v for k, v in res.items() if k[1] == "growth")
    rows.append(["sweep: resident memory growth after warm-up < 10%", f"{growth:+.1%}", C.verdict(growth < 0.10)])
    near = lambda n: min(args.clients, key=lambda c: abs(c - n))  # noqa: E731 - the sweep's level closest to n
    if ("minimal FastAPI + ORT", near(32)) in res:
        t, m = res[args.serve_row, near(32)], res["minimal FastAPI + ORT", near(32)]
        rows.append([f"{args.serve_row} >= 2x the minimal server's requests/s ({near(32)} clients)",
                     f"{t['rate'] / m['rate']:.2f}x", C.verdict(t["rate"] >= 2 * m["rate"])])
        rows.append(["... with a lower p99", f"{t['p99']:.1f} ms vs {m['p99']:.1f} ms", C.verdict(t["p99"] < m["p99"])])
    if args.before:
        b = res[f"tudui serve --workers 1 at {args.before}", near(64)]
        t = res[args.serve_row, near(64)]
        rows.append([f"{args.serve_row} >= 3x tudui serve at {args.before} ({near(64)} clients)",
                     f"{t['rate'] / b['rate']:.2f}x", C.verdict(t["rate"] >= 3 * b["rate"])])
    return rows


def main() -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="checkpoint, run directory or .onnx (default: train the default model)")
    ap.add_argument("--duration", type=float, default=60.0, help="counted seconds of load per mode [default: 60]")
    ap.add_argument("--warmup", type=float, default=10.0, help="uncounted seconds before them [default: 10]")
    ap.add_argument("--concurrency", type=int, default=64, help="clients sending at once [default: 64]")
    ap.add_argument("--max-batch", type=int, default=32, help="the batched mode's --max-batch [default: 32]")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="the batched mode's --max-wait-ms [default: 2]")
    ap.add_argument("--workers", type=int, default=1, help="tudui serve's --workers [default: 1]")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="leave out the minimal FastAPI + ONNX Runtime server")
    ap.add_argument("--parts", nargs="+", choices=["soak", "sweep"], default=["soak", "sweep"],
                    help="the soak (asyncio clients, batch sizes, memory), the sweep (1-128 clients) [default: both]")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64, 128],
                    help="the sweep's numbers of concurrent clients [default: 1 8 32 64 128]")
    ap.add_argument("--sweep-duration", type=float, default=10.0, help="counted seconds per sweep cell [default: 10]")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                    help="the sweep's load generator: wrk (Debian's package), this script's asyncio client, or auto "
                         "(wrk where on the PATH) [default: auto]")
    ap.add_argument("--before", metavar="REF", help="also sweep `tudui serve --workers 1` from this commit (git archive "
                                                    "of its src/ into the work folder), same environment")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
        args.sweep_duration, args.clients = min(args.sweep_duration, 1.0), args.clients[:2]
    C.header("serve load: one request per forward pass against micro-batching", args.quick)

    with C.workdir(args) as work:
        tmp = str(work)
        model = args.model
        if model is None:
            import tudui

            print("training the default model (fast, 1x28x28) for 1 epoch on digits...", flush=True)
            model = str(tudui.train(data=["digits"], model="fast", img_size=28, epochs=1, project=tmp, name="bench",
                                    tensorboard=False, plots=False).best)
        predictor = Predictor.from_path(model, device="cpu")  # only to describe the model and its input
        spec = predictor.spec
        images = sample_images(spec.channels, spec.img_size)
        modes = [("one request per pass", 1, 0.0), (f"micro-batching (max {args.max_batch}, {args.max_wait_ms:g} ms)",
                                                    args.max_batch, args.max_wait_ms)]
        results, sweep_rows = {}, []
        onnx = None
        if args.baseline:
            onnx = model if model.endswith(".onnx") else str(tudui_export(model, work / "baseline.onnx"))
        if "soak" in args.parts:
            if onnx is not None:
                name = "minimal FastAPI + ORT"
                print(f"{name}: {args.warmup:g} s warm-up + {args.duration:g} s of {args.concurrency} clients...",
                      flush=True)
                results[name] = run_mode(onnx, 1, 0.0, images, args, baseline=True)
            for name, max_batch, wait in modes:
                print(f"{name}: {args.warmup:g} s warm-up + {args.duration:g} s of {args.concurrency} clients...",
                      flush=True)
                results[name] = run_mode(model, max_batch, wait, images, args)
        if "sweep" in args.parts:
            sweep_rows = sweep(model, onnx, images, work, args)

    print(f"\nmodel    {predictor.meta.get('arch', {}).get('name')} ({predictor.format}), {spec.channels}x{spec.img_size}"
          f"x{spec.img_size}, {len(spec.classes)} classes, TTA {'on' if spec.tta else 'off'}; device cpu")
    rows = []
    if results:
        rows += soak_table(results, images, spec, args)
    if sweep_rows:
        print(f"\nthe sweep: POST /predict (raw image/png bodies, {len(images)} different images), keep-alive clients "
              f"from {args.sweep_generator}, {args.sweep_duration:g} s counted per cell; generator CPU: its CPU time "
              "over the cell's seconds (100% = one core); memory: the server's growth over the sweep")
        print(C.table(["clients", "server", "requests/s", "p50 ms", "p99 ms", "failed", "generator CPU",
                       "memory", "/health after"], sweep_rows))
        rows += sweep_targets(args)
    print("\ntargets (issues 16 and 32)\n" + C.table(["target", "measured", "verdict"], rows))
    failed = any(r[2] == C.verdict(False) for r in rows if r[0].startswith(("zero", "sweep: zero", "/health")))
    return 1 if failed else 0


def soak_table(results: dict, images: list[bytes], spec, args) -> list[list[str]]:
    """Prints the soak's side-by-side table; its target rows."""
    print(f"load     {args.concurrency} concurrent clients on 127.0.0.1, POST /predict with {len(images)} different "
          f"{spec.img_size}x{spec.img_size} PNGs, {args.warmup:g} s warm-up then {args.duration:g} s counted\n")
    # One column per mode, one row per figure: the two modes side by side.
    names = list(results)
    single = results["one request per pass"]
    base = len(single["latencies"]) / single["wall"]
    lines = {k: [] for k in ("requests counted", "failed requests", "requests/s", "requests/s vs one per pass",
                             "latency p50 ms", "latency p90 ms", "latency p99 ms", "latency max ms", "mean batch",
                             "largest batch", "RSS after warm-up MiB", "RSS peak MiB", "RSS at end MiB",
                             "RSS growth after warm-up", "/health after the load", "load average before/after")}
    for r in results.values():
        lat = np.array(r["latencies"]) if r["latencies"] else np.array([float("nan")])
        rate = len(r["latencies"]) / r["wall"]
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        for k, v in zip(lines, [
                f"{len(r['latencies']):,}", f"{len(r['errors']) + len(r['warm_errors'])}", f"{rate:,.0f}",
                f"{rate / base:.2f}x", f"{p50:.1f}", f"{p90:.1f}", f"{p99:.1f}", f"{lat.max():.1f}",
                f"{np.mean(r['batches']):.1f}" if r["batches"] else "-", str(max(r["batches"], default=0)),
                f"{r['rss_warm'] / 2**20:.0f}", f"{r['rss_peak'] / 2**20:.0f}", f"{r['rss_end'] / 2**20:.0f}",
                f"{(r['rss_end'] - r['rss_warm']) / r['rss_warm']:+.1%}", "yes" if r["alive"] else "NO",
                f"{r['loadavg'][0]:.1f} / {r['loadavg'][1]:.1f}"]):
            lines[k].append(v)
    print("POST /predict under load (the counted part; failed requests include the warm-up)")
    print(C.table(["", *names], [[k, *v] for k, v in lines.items()]))
    for name, r in results.items():
        if r["errors"] or r["warm_errors"]:
            print(f"{name}: first error: {(r['errors'] or r['warm_errors'])[0]}")

    batched = results[names[-1]]
    ratio = (len(batched["latencies"]) / batched["wall"]) / (len(single["latencies"]) / single["wall"])
    rows = []
    if args.baseline:
        minimal = results[names[0]]
        vs = (len(batched["latencies"]) / batched["wall"]) / max(len(minimal["latencies"]) / minimal["wall"], 1e-9)
        p99 = [float(np.percentile(r["latencies"], 99)) if r["latencies"] else float("nan")
               for r in (batched, minimal)]
        rows.append([f"tudui serve >= 2x the minimal server's requests/s ({args.concurrency} clients)", f"{vs:.2f}x",
                     C.verdict(vs >= 2.0)])
        rows.append(["... with a lower p99", f"{p99[0]:.1f} ms vs {p99[1]:.1f} ms", C.verdict(p99[0] < p99[1])])
    worst_growth = max((r["rss_end"] - r["rss_warm"]) / r["rss_warm"] for r in results.values())
    n_errors = sum(len(r["errors"]) + len(r["warm_errors"]) for r in results.values())
    return [["zero failed requests (warm-up included)", str(n_errors), C.verdict(n_errors == 0)], *rows,
            ["resident memory growth after warm-up < 10%", f"{worst_growth:+.1%}", C.verdict(worst_growth < 0.10)],
            ["micro-batching serves more requests/s", f"{ratio:.2f}x", C.verdict(ratio > 1.0)],
            ["/health answers after the load", "yes" if all(r["alive"] for r in results.values()) else "no",
             C.verdict(all(r["alive"] for r in results.values()))]]


def tudui_export(model: str, out) -> str:
    """The model's fp32 ONNX export (one image per pass, as the minimal server runs it), for the baseline."""
    import tudui

    return str(tudui.export(model, "onnx", str(out), force=True).path)


if __name__ == "__main__":
    sys.exit(main())
