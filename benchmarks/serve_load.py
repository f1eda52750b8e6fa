"""Bounded load and soak of `tudui serve` on loopback: the minimal server a user would write, against tudui serve
answering one request per forward pass and with micro-batching.

    python benchmarks/serve_load.py [MODEL] [--duration 60] [--warmup 10] [--concurrency 64] [--max-batch 32]
                                    [--max-wait-ms 2] [--workers 1] [--no-baseline] [--quick]

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
import subprocess
import sys
import threading
import time

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


def start_server(model: str, max_batch: int, max_wait_ms: float, workers: int = 1,
                 baseline: bool = False) -> tuple[subprocess.Popen, str]:
    """`tudui serve MODEL --port 0 ...` (or, baseline, MINIMAL_SERVER on the .onnx MODEL) in its own process;
    returns it and its base URL once it listens."""
    env = os.environ | {"PYTHONPATH": f"{C.ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", MINIMAL_SERVER, model] if baseline else \
        [sys.executable, "-m", "tudui", "serve", model, "--port", "0", "--device", "cpu", "--max-batch",
         str(max_batch), "--max-wait-ms", str(max_wait_ms), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        if m:
            # Keep reading its log (one access line per request) so a full pipe never blocks the server.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit(f"tudui serve exited with code {proc.wait()}:\n{''.join(lines)}")


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
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60) for _ in range(concurrency)]
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
        result["alive"] = httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}  # after the load
        result["loadavg"] = (load_before, os.getloadavg()[0])
    finally:
        proc.terminate()
        proc.wait(30)
    return result


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
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
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
        results = {}
        if args.baseline:
            onnx = model if model.endswith(".onnx") else str(tudui_export(model, work / "baseline.onnx"))
            name = "minimal FastAPI + ORT"
            print(f"{name}: {args.warmup:g} s warm-up + {args.duration:g} s of {args.concurrency} clients...", flush=True)
            results[name] = run_mode(onnx, 1, 0.0, images, args, baseline=True)
        for name, max_batch, wait in modes:
            print(f"{name}: {args.warmup:g} s warm-up + {args.duration:g} s of {args.concurrency} clients...", flush=True)
            results[name] = run_mode(model, max_batch, wait, images, args)

    print(f"\nmodel    {predictor.meta.get('arch', {}).get('name')} ({predictor.format}), {spec.channels}x{spec.img_size}"
          f"x{spec.img_size}, {len(spec.classes)} classes, TTA {'on' if spec.tta else 'off'}; device cpu")
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
    print("\ntargets (issues 16 and 32)\n" + C.table(["target", "measured", "verdict"], [
        ["zero failed requests (warm-up included)", str(n_errors), C.verdict(n_errors == 0)], *rows,
        ["resident memory growth after warm-up < 10%", f"{worst_growth:+.1%}", C.verdict(worst_growth < 0.10)],
        ["micro-batching serves more requests/s", f"{ratio:.2f}x", C.verdict(ratio > 1.0)],
        ["/health answers after the load", "yes" if all(r["alive"] for r in results.values()) else "no",
         C.verdict(all(r["alive"] for r in results.values()))],
    ]))
    return 1 if n_errors or not all(r["alive"] for r in results.values()) else 0


def tudui_export(model: str, out) -> str:
    """The model's fp32 ONNX export (one image per pass, as the minimal server runs it), for the baseline."""
    import tudui

    return str(tudui.export(model, "onnx", str(out), force=True).path)


if __name__ == "__main__":
    sys.exit(main())
