"""A bounded load run against the `tudui serve` API on loopback: latency percentiles and requests/s.

    python benchmarks/serve_load.py [MODEL] [--requests 1000] [--concurrency 16] [--quick]

MODEL is a checkpoint, run directory or .onnx; without it a tiny model is trained on
the bundled digits first (a few seconds). The server is `tudui serve MODEL --port 0`
in its own process on 127.0.0.1; the client is httpx's async client. Exits 1
if any request fails. A benchmark, not a test: nothing about speed is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    """`tudui serve MODEL --port 0` in its own process (as users run it); returns it and its base URL."""
    src = Path(__file__).resolve().parents[1] / "src"
    env = os.environ | {"PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tudui", "serve", model, "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        if m:
            # Keep reading its log so a full pipe never blocks the server.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit(f"tudui serve exited with code {proc.wait()}")


async def load(url: str, images: list[bytes], n: int, concurrency: int) -> tuple[list[float], list[str], float]:
    """Send n POST /predict requests, `concurrency` at a time; (latencies in ms, errors, wall seconds)."""
    latencies, errors = [], []
    queue = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker():
            for i in queue:  # a shared iterator: each request index is taken by exactly one worker
                t = time.perf_counter()
                try:
                    r = await client.post("/predict", content=images[i % len(images)])
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:100]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                latencies.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="checkpoint, run directory or .onnx (default: train a tiny one)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 40 requests, 4 at a time (the figures mean nothing)")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.concurrency = 40, 4
        print("[--quick smoke test: figures are not measurements]", flush=True)

    from tudui.inference import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import tudui

            print("training a tiny model (mnist-cnn, 1 epoch on digits)...", flush=True)
            model = str(tudui.train(data=["digits"], model="mnist-cnn", epochs=1, project=tmp, name="bench").best)
        predictor = Predictor.from_path(model, device="cpu")  # only to describe the model and its input
        server, url = start_server(model)
        rng = np.random.default_rng(0)
        side = max(predictor.spec.img_size, 28)
        images = []
        for _ in range(16):  # PNGs of the model's kind (gray or RGB), decoded and resized by the server each time
            arr = rng.integers(0, 256, (side, side) + ((3,) if predictor.spec.channels == 3 else ()), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "PNG")
            images.append(buf.getvalue())
        try:
            lat, errors, wall = asyncio.run(load(url, images, args.requests, args.concurrency))
        finally:
            server.terminate()
            server.wait(10)

    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    print(f"model    {predictor.source} ({predictor.format}, {predictor.spec.channels}x{predictor.spec.img_size}px)")
    print(f"load     {args.requests} requests, {args.concurrency} concurrent, loopback, {side}x{side} PNG bodies")
    print(f"latency  p50 {p50:.1f} ms  p90 {p90:.1f} ms  p99 {p99:.1f} ms  max {max(lat):.1f} ms")
    print(f"rate     {len(lat) / wall:.0f} requests/s over {wall:.1f} s")
    print(f"errors   {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
