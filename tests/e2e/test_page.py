"""The page served by `tudui serve`, in a real headless browser (Debian's chromium driven by Playwright).

No browser is downloaded: Playwright launches the system chromium. The server is
the real CLI (`python -m tudui serve MODEL --port 0`) on 127.0.0.1.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from tests import forkserver

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture
def served(tiny_onnx):
    """(base URL, model) of `tudui serve` on a free loopback port, serving the session's ONNX export; stopped after."""
    onnx, _ = tiny_onnx
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    proc = forkserver.Popen([sys.executable, "-m", "tudui", "serve", str(onnx), "--port", "0"],
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
            # "why?": an ONNX export has no gradients to read a map from; the page says so instead of asking
            page.wait_for_selector("#why-note:has-text('maps need the PyTorch model')")
            assert page.locator("#map").is_hidden()
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


def test_the_page_shows_the_map_of_the_top_class_beside_the_bars(tiny_model, tmp_path):
    """Served from a checkpoint (in this process, on a free port), the page asks POST /explain for the uploaded image
    and its top class and shows the server's PNG: the very bytes /explain answers for that image and class."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (apt-get install chromium; `make install` does it where apt is usable)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    pytest.importorskip("pytorch_grad_cam")
    import httpx

    from tests.inference.conftest import _live_server
    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    from sklearn.datasets import load_digits
    image = tmp_path / "digit.png"
    Image.fromarray((load_digits().images[5] * 255 / 16).astype(np.uint8), "L").save(image)
    predictor = Predictor.from_path(tiny_model, device="cpu")
    top = predictor.predict([str(image)], topk=1)[0].label
    with _live_server(create_app(predictor, topk=3)) as url, playwright.sync_playwright() as p:
        expected = httpx.post(f"{url}/explain", params={"class": top}, files={"file": image.read_bytes()}).content
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#model:has-text('classes')")
            with page.expect_response(lambda r: "/explain" in r.url) as answer:
                page.set_input_files("#file", str(image))
            page.wait_for_selector("#map:visible", timeout=30_000)
            assert page.locator("#predictions li .cls").first.inner_text() == top
            assert f"evidence for {top}" in page.locator("#why-note").inner_text()
            assert answer.value.request.method == "POST" and answer.value.url.endswith(
                "/explain?class=" + quote(top, safe=""))
            drawn = page.evaluate("""() => {  // the pixels the page shows, read back through a canvas
                const img = document.getElementById('map'), c = document.createElement('canvas');
                c.width = img.naturalWidth; c.height = img.naturalHeight;
                const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data)]; }""")
            want = np.asarray(Image.open(io.BytesIO(expected)).convert("RGBA"))
            assert expected.startswith(b"\x89PNG") and drawn[:2] == [want.shape[1], want.shape[0]]
            assert np.array_equal(np.array(drawn[2], np.uint8).reshape(want.shape), want)
        finally:
            browser.close()
