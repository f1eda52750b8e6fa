"""A short run of benchmarks/serve_load.py (the soak and load benchmark) as a user runs it: the minimal FastAPI + ONNX
Runtime server and tudui serve's two modes, zero errors; the sweep's table (wrk where installed, else the script's
own client) with every server at every client count."""
import re
import sys
from pathlib import Path

import pytest

from tests import forkserver

REPO = Path(__file__).resolve().parents[2]


def test_short_load_run_has_no_errors_and_batches_form(tiny_model, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("psutil")
    r = forkserver.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), str(tiny_model), "--quick",
                        "--duration", "1.5", "--warmup", "0.5", "--concurrency", "16", "--clients", "8", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    def row(label: str) -> list[str]:  # the three modes' cells of one row of the side-by-side table
        return re.search(rf"^{re.escape(label)}\s+(\S+)\s+(\S+)\s+(\S+)\s*$", r.stdout, re.M).groups()

    assert re.search(r"^\s+minimal FastAPI \+ ORT\s+one request per pass\s+micro-batching", r.stdout, re.M)
    assert row("failed requests") == ("0", "0", "0")
    assert all(int(n.replace(",", "")) > 0 for n in row("requests counted"))
    assert row("/health after the load") == ("yes", "yes", "yes")
    assert row("largest batch")[:2] == ("1", "1")  # the minimal server and --max-batch 1: one request per pass
    assert float(row("mean batch")[2]) > 1  # 16 clients at once: the batched server did answer several per pass
    assert re.search(r"zero failed requests \(warm-up included\)\s+0\s+met", r.stdout)
    assert re.search(r"tudui serve >= 2x the minimal server's requests/s \(16 clients\)\s+\S+x\s+", r.stdout)

    sweep = re.findall(r"^8\s+(minimal FastAPI \+ ORT|tudui serve|tudui serve --workers 1)\s+([\d,]+)\s+([\d.]+)\s+"
                       r"([\d.]+)\s+(\d+)\s+\d+%\s+[+-][\d.]+%\s+yes\s*$", r.stdout, re.M)
    assert [row[0] for row in sweep] == ["minimal FastAPI + ORT", "tudui serve"], r.stdout
    for _, rate, p50, p99, failed in sweep:
        assert int(rate.replace(",", "")) > 0 and 0 < float(p50) <= float(p99) and failed == "0"
    assert re.search(r"sweep: zero failed requests\s+0\s+met", r.stdout)
