"""A short run of benchmarks/serve_load.py (the soak and load benchmark) as a user runs it: the minimal FastAPI + ONNX
Runtime server and tudui serve's two modes, zero errors; the sweep's table (wrk where installed, else the script's
own client) with every server at every client count. The script runs in this interpreter and its servers are forks of
the tests' fork server (quick.quick_run), as every benchmark's --quick run does."""
import re

import pytest

from tests.benchmarks.quick import quick_run


def test_short_load_run_has_no_errors_and_batches_form(tiny_model, request, tmp_path, capfd, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("psutil")
    stdout = quick_run("serve_load.py", [str(tiny_model), "--duration", "1", "--warmup", "0.3", "--concurrency", "16",
                                         "--clients", "8"], request, tmp_path, capfd, monkeypatch, fmnist=False)

    def row(label: str) -> list[str]:  # the three modes' cells of one row of the side-by-side table
        return re.search(rf"^{re.escape(label)}\s+(\S+)\s+(\S+)\s+(\S+)\s*$", stdout, re.M).groups()

    assert re.search(r"^\s+minimal FastAPI \+ ORT\s+one request per pass\s+micro-batching", stdout, re.M)
    assert row("failed requests") == ("0", "0", "0")
    assert all(int(n.replace(",", "")) > 0 for n in row("requests counted"))
    assert row("/health after the load") == ("yes", "yes", "yes")
    assert row("largest batch")[:2] == ("1", "1")  # the minimal server and --max-batch 1: one request per pass
    assert float(row("mean batch")[2]) > 1  # 16 clients at once: the batched server did answer several per pass
    assert re.search(r"zero failed requests \(warm-up included\)\s+0\s+met", stdout)
    assert re.search(r"tudui serve >= 2x the minimal server's requests/s \(16 clients\)\s+\S+x\s+", stdout)

    sweep = re.findall(r"^8\s+(minimal FastAPI \+ ORT|tudui serve|tudui serve --workers 1)\s+([\d,]+)\s+([\d.]+)\s+"
                       r"([\d.]+)\s+(\d+)\s+\d+%\s+[+-][\d.]+%\s+yes\s*$", stdout, re.M)
    assert [row[0] for row in sweep] == ["minimal FastAPI + ORT", "tudui serve --workers 1"], stdout
    for _, rate, p50, p99, failed in sweep:
        assert int(rate.replace(",", "")) > 0 and 0 < float(p50) <= float(p99) and failed == "0"
    assert re.search(r"sweep: zero failed requests\s+0\s+met", stdout)
