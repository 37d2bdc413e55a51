"""The viewer page in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Skips cleanly when Playwright or Chromium is missing. Screenshots go to the test's tmp folder,
or to $COVIDCT_SCREENSHOT_DIR when set (to look at them).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from conftest_refine_helpers import StandinClick as _Click
from conftest_refine_helpers import standin_refine as _standin_refine

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("COVIDCT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, monkeypatch):
    """uvicorn in a thread on 127.0.0.1 (a free port), with the shipped click model (else a stand-in)."""
    import uvicorn

    from covidct.models import zoo
    from covidct.service.app import create_app

    if not zoo.has_model("refine"):
        mod = types.ModuleType("covidct.interactive")
        mod.Click, mod.refine = _Click, _standin_refine
        monkeypatch.setitem(sys.modules, "covidct.interactive", mod)
        import covidct

        monkeypatch.setattr(covidct, "interactive", mod, raising=False)
    port = _free_port()
    app = create_app(tmp_path / "data", workers=1)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        if time.time() - t0 > 20:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


@pytest.fixture
def phantom_nifti(tmp_path) -> Path:
    from covidct.phantom import make_phantom, write_phantom

    # a heavy burden: on 5 mm slices the HU rule keeps only lesions seen on three slices
    return write_phantom(make_phantom(shape=(16, 96, 96), seed=2, lesion_burden=0.35), tmp_path / "ph", fmt="nifti")


def _png(url: str) -> np.ndarray:
    import urllib.request

    from PIL import Image

    with urllib.request.urlopen(url, timeout=10) as r:  # loopback only
        return np.asarray(Image.open(io.BytesIO(r.read())))


def test_page_upload_view_correct(server, phantom_nifti, tmp_path):
    shots = Path(os.environ.get("COVIDCT_SCREENSHOT_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            assert page.locator("#intro").is_visible()
            page.screenshot(path=str(shots / "1-start.png"))

            page.set_input_files("#file-input", str(phantom_nifti))
            page.wait_for_selector("body[data-job-status=done]", timeout=60_000)
            page.wait_for_selector("#viewer[data-state=ready]", timeout=20_000)
            viewer = page.locator("#viewer")
            assert page.locator("#job-status").inner_text() == "done"
            assert page.locator("#dx-label").inner_text() in ("COVID-19", "Other pneumonia", "Normal")
            # the pattern card: RSNA category, CO-RADS and the reasons from report.json
            assert page.locator("#pattern-card").is_visible()
            rsna = page.evaluate("S.report.pattern.rsna_category")
            assert page.locator("#pattern-rsna").inner_text() == {
                "typical": "Typical", "indeterminate": "Indeterminate", "atypical": "Atypical",
                "negative": "Negative for pneumonia"}[rsna]
            assert page.locator("#pattern-corads").inner_text() == f"CO-RADS {page.evaluate('S.report.pattern.co_rads')}"
            assert page.locator("#pattern-reasons li").count() == len(page.evaluate("S.report.pattern.reasons")) >= 1
            # the lung's density from report.json beside the volumes
            mean_hu = page.evaluate("S.report.densitometry.total.mean_hu")
            assert page.locator("#vols tr.density").count() == 3 and mean_hu < -500  # the phantom's aerated lung
            assert page.locator("#vols tr.density").first.inner_text().split() == [
                "Mean", "lung", "density", page.evaluate("S.report.densitometry.total.mean_hu.toFixed(0)"), "HU"]
            assert page.locator("#downloads a").count() >= 3
            assert page.locator("#jobs li").count() == 1
            page.screenshot(path=str(shots / "2-done.png"))

            # scroll: keys and the wheel move through the slices
            k0 = int(viewer.get_attribute("data-slice"))
            page.keyboard.press("ArrowDown")
            page.wait_for_selector(f"#viewer[data-slice='{k0 - 1}']")
            page.keyboard.press("Home")
            page.wait_for_selector("#viewer[data-slice='0']")
            page.locator("#viewer").hover()
            page.mouse.wheel(0, -100)
            page.wait_for_selector("#viewer[data-slice='1']")
            assert page.locator("#hud-slice").inner_text().startswith("Slice 2 / 16")

            # the worst slice button, then the mediastinal window and the lesion overlay toggle
            page.locator("#worst button").first.click()
            page.wait_for_selector(f"#viewer[data-slice='{k0}']")
            page.wait_for_selector("#viewer[data-state=ready]")
            canvas_sum = "(() => { const c = document.querySelector('#canvas'); const d = c.getContext('2d')" \
                         ".getImageData(0, 0, c.width, c.height).data; let s = 0; for (const v of d) s += v; return s; })()"
            with_lesions = page.evaluate(canvas_sum)
            page.click("#tog-lesions")
            page.wait_for_selector("#viewer[data-show-lesions=false][data-state=ready]")
            assert page.evaluate(canvas_sum) != with_lesions
            page.click("#tog-lesions")
            page.wait_for_selector("#viewer[data-show-lesions=true][data-state=ready]")
            # the heatmap toggle (button and key H) draws the lesion probability over the slice, and removes it
            assert page.locator("#tog-heat").is_enabled() and page.locator("#heat-legend").is_hidden()
            # a whole HU volume: the HU rule drew the lesions, so the uncertainty and the heatmap are the lesion
            # model's own view, and the page says so
            assert page.locator("#inv-unsure").inner_text().startswith("Lesion model uncertainty (the HU rule")
            page.click("#tog-heat")
            page.wait_for_selector("#viewer[data-show-heatmap=true][data-state=ready]")
            assert page.evaluate(canvas_sum) != with_lesions and page.locator("#heat-legend").is_visible()
            assert "not the drawn lesions" in page.locator("#heat-legend").inner_text()
            assert page.locator("#tog-heat").get_attribute("aria-pressed") == "true"
            page.screenshot(path=str(shots / "2b-heatmap.png"))
            page.keyboard.press("h")
            page.wait_for_selector("#viewer[data-show-heatmap=false][data-state=ready]")
            assert page.evaluate(canvas_sum) == with_lesions
            page.click("#btn-medi")
            page.wait_for_selector("#viewer[data-window=mediastinum][data-state=ready]")
            page.screenshot(path=str(shots / "3-mediastinum.png"))
            page.click("#btn-lung")
            page.wait_for_selector("#viewer[data-window=lung][data-state=ready]")

            # a positive click on lung without lesion: the mask on the page grows, the figures change
            job_id = page.evaluate("S.job.id")
            k = int(viewer.get_attribute("data-slice"))
            lungs = _png(f"{server}/api/jobs/{job_id}/slices/{k}/lungs.png")
            lesions = _png(f"{server}/api/jobs/{job_id}/slices/{k}/lesions.png")
            free = (lungs[..., 3] > 0) & (lesions[..., 3] == 0)
            free = free & ~np.roll(lesions[..., 3] > 0, 6, 0) & ~np.roll(lesions[..., 3] > 0, -6, 0)
            ys, xs = np.nonzero(free)
            i = len(ys) // 2
            y, x = int(ys[i]), int(xs[i])
            before_px = int(viewer.get_attribute("data-lesion-px"))
            assert before_px == int((lesions[..., 3] > 0).sum())
            before_total = page.evaluate("S.report.involvement_percent.total")
            page.click("#tog-edit")
            box = page.locator("#canvas").bounding_box()
            h, w = lungs.shape[:2]
            cx, cy = box["x"] + (x + 0.5) / w * box["width"], box["y"] + (y + 0.5) / h * box["height"]
            page.mouse.click(cx, cy)
            page.wait_for_selector("#viewer[data-revision='1'][data-state=ready]", timeout=20_000)
            after_px = int(viewer.get_attribute("data-lesion-px"))
            assert after_px > before_px
            # the figures are recomputed from the edited mask (compare the numbers: the page rounds to 0.1 %)
            assert page.evaluate("S.report.involvement_percent.total") > before_total
            assert page.locator("#inv .row[data-key=total] .v").inner_text().endswith("%")
            assert "revision 1" in page.locator("#rev-label").text_content()
            assert "revision=1" in page.locator("#downloads a").first.get_attribute("href")
            page.screenshot(path=str(shots / "4-corrected.png"))

            # a right click (negative) on the new lesion removes it; undo brings it back
            page.mouse.click(cx, cy, button="right")
            page.wait_for_selector("#viewer[data-revision='2'][data-state=ready]", timeout=20_000)
            assert int(viewer.get_attribute("data-lesion-px")) < after_px
            page.click("#btn-undo")
            page.wait_for_selector("#viewer[data-revision='3'][data-state=ready]", timeout=20_000)
            assert int(viewer.get_attribute("data-lesion-px")) == after_px
            page.screenshot(path=str(shots / "5-undo.png"))
            assert not errors, errors
        finally:
            browser.close()
    assert (shots / "4-corrected.png").stat().st_size > 10_000


def test_page_shows_a_failed_job(server, tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(b"hello")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.set_input_files("#file-input", str(bad))
            page.wait_for_selector("#upload-error:not([hidden])")
            assert "unsupported file content" in page.locator("#upload-error").inner_text()
            assert "415" in page.locator("#upload-error").inner_text()
        finally:
            browser.close()

