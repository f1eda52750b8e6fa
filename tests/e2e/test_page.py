"""The page served by `tudui serve`, in a real headless browser (Debian's chromium driven by Playwright).

No browser is downloaded: Playwright launches the system chromium. The server is
the real CLI (`python -m tudui serve MODEL --port 0`) on 127.0.0.1.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture
def served(tiny_onnx):
    """(base URL, model) of `tudui serve` on a free loopback port, serving the session's ONNX export; stopped after."""
    onnx, _ = tiny_onnx
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tudui", "serve", str(onnx), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, lines, deadline = None, [], time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            url = m and m.group(1)
        assert url, "tudui serve did not start:\n" + "".join(lines)
        yield url, onnx
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # the server this test started, and only it
            proc.kill()
            proc.wait()


def test_upload_a_png_and_see_the_predicted_class(served, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (apt-get install chromium; `make install` does it where apt is usable)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from tudui.inference import Predictor

    url, model = served
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(image)
    expected = Predictor.from_path(model).predict([str(image)], topk=1)[0].label

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            outside = []  # any request that leaves this server would be an external resource
            page.on("request", lambda r: None if r.url.startswith(url) or r.url.startswith(("blob:", "data:"))
                    else outside.append(r.url))
            page.goto(url + "/")
            page.wait_for_selector("#model:has-text('classes')")
            page.set_input_files("#file", str(image))
            first = page.locator("#predictions li").first.locator(".cls")
            first.wait_for(timeout=30_000)
            assert first.inner_text() == expected
            assert page.locator("#predictions li").count() == 5  # the server's default top-k
            assert page.locator("#preview").get_attribute("src").startswith("blob:")
            # A file that is not an image: the page shows the server's message, then still works.
            bad = tmp_path / "notes.png"
            bad.write_text("not a picture")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error")
            assert "not an image" in page.locator("#status").inner_text()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#predictions li .cls")
            assert page.locator("#predictions li .cls").first.inner_text() == expected
            assert outside == []
        finally:
            browser.close()


def test_api_docs_render_and_try_an_upload_without_other_hosts(served, tmp_path):
    """/docs (Swagger UI from the server's own files) renders, and its "Try it out" runs a real prediction."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (apt-get install chromium; `make install` does it where apt is usable)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")

    url, _ = served
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(image)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            outside, refused = [], []
            page.on("request", lambda r: None if r.url.startswith((url, "blob:", "data:")) else outside.append(r.url))
            # The page's Content-Security-Policy would block anything from elsewhere; a blocked load shows here.
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title:has-text('tudui')", timeout=30_000)
            page.locator("#operations-default-predict_predict_post .opblock-summary").click()
            page.locator("#operations-default-predict_predict_post button.try-out__btn").click()
            page.locator("#operations-default-predict_predict_post input[type=file]").set_input_files(str(image))
            page.locator("#operations-default-predict_predict_post button.execute").click()
            op = page.locator("#operations-default-predict_predict_post")
            status = op.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=30_000)
            assert status.inner_text().strip().startswith("200")
            assert '"probability"' in op.locator(".live-responses-table tbody").inner_text()
            if os.environ.get("TUDUI_SCREENSHOTS"):  # to look at it: TUDUI_SCREENSHOTS=DIR
                page.screenshot(path=str(Path(os.environ["TUDUI_SCREENSHOTS"]) / "docs.png"), full_page=True)
            assert outside == [] and refused == []
        finally:
            browser.close()
