"""The report page in a real browser: headless Debian Chromium driven by selenium.

Software WebGL (SwiftShader) draws the 3D viewer, so no GPU is needed. Checked: the page logs no
SEVERE console message; moving a comparison slider (its range input, and a mouse drag on the
picture) moves the clip of the revealed picture; the clip player plays and scrubs; the 3D
canvas shows Gaussians (pixels that differ from the background) and an orbit drag changes it.

Without ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``apt-get install chromium
chromium-driver``; .ci/run installs them) the test is skipped, except under CI (the ``CI``
environment variable set), where it fails, so CI can never skip it silently.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from atoken.report import write_report
from tests.test_report import make_reconstructions, make_run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
BACKGROUND = (32, 36, 42)  # splat.js's clear colour, 0.125 / 0.141 / 0.165 of 255


def chromium_options(width: int = 1280, height: int = 1000):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return opts


def start_chromium(width: int = 1280, height: int = 1000):
    """A headless Chromium session, or a skip (a failure under CI) saying what is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        why = f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the browser test may not skip: {why}")
        pytest.skip(why)
    try:
        from selenium import webdriver
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the browser test may not skip: {exc}")
        pytest.skip(f"selenium is not installed: {exc}")
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(service=service, options=chromium_options(width, height))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    make_run(root / "data" / "run")
    make_reconstructions(root / "data" / "rec")
    return write_report(root / "data", root / "report.html")


@pytest.fixture(scope="module")
def browser(page):
    driver = start_chromium()
    try:
        driver.set_script_timeout(20)
        driver.get(page.as_uri())
        wait_for(driver, "return (window.atokenSplatViewers || []).every(v => v.frames > 0)")
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 40.0, args: tuple = ()):
    end = time.monotonic() + timeout  # generous: a loaded CI machine
    while time.monotonic() < end:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


_NON_BACKGROUND = """
const canvas = arguments[0], bg = arguments[1];
const c = document.createElement("canvas");
c.width = canvas.width; c.height = canvas.height;
const ctx = c.getContext("2d");
ctx.drawImage(canvas, 0, 0);
const px = ctx.getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < px.length; i += 4) {
  if (Math.abs(px[i] - bg[0]) + Math.abs(px[i + 1] - bg[1]) + Math.abs(px[i + 2] - bg[2]) > 24) n++;
}
return [n, c.width * c.height, canvas.toDataURL()];
"""


def test_no_severe_console_messages(browser) -> None:
    logs = browser.get_log("browser")
    severe = [e["message"] for e in logs if e["level"] == "SEVERE"]
    assert not severe, severe
    assert browser.execute_script("return document.title").startswith("atoken report")


def test_sliders_move_the_revealed_part(browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    figures = browser.find_elements(By.CSS_SELECTOR, "figure.compare")
    assert len(figures) == 3  # the held-out grids of the run, the photo, the 3D views
    for fig in figures:
        left = fig.find_element(By.CSS_SELECTOR, ".compare-left")
        handle = fig.find_element(By.CSS_SELECTOR, ".compare-handle")
        assert left.value_of_css_property("clip-path") == "inset(0px 50% 0px 0px)"
        browser.execute_script(
            "arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'));",
            fig.find_element(By.CSS_SELECTOR, ".compare-range"),
        )
        assert left.value_of_css_property("clip-path") == "inset(0px 80% 0px 0px)"
        assert handle.get_attribute("style").strip() == "left: 20%;"
        # a mouse drag on the picture itself: press near the left edge, drag to 3/4 of the width
        frame = fig.find_element(By.CSS_SELECTOR, ".compare-frame")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", frame)
        width = frame.size["width"]
        ActionChains(browser).move_to_element_with_offset(
            frame, -width // 2 + 5, 0
        ).click_and_hold().move_by_offset(width * 3 // 4 - 5, 0).release().perform()
        pos = float(fig.find_element(By.CSS_SELECTOR, ".compare-range").get_attribute("value"))
        assert 70 < pos < 80, pos
        right = float(left.value_of_css_property("clip-path").split()[1].rstrip("%"))
        assert right == pytest.approx(100 - pos, abs=0.01)


def test_the_clip_player_plays_and_scrubs(browser) -> None:
    from selenium.webdriver.common.by import By

    fig = browser.find_element(By.CSS_SELECTOR, "figure.video")
    imgs = fig.find_elements(By.CSS_SELECTOR, ".pane img")
    assert len(imgs) == 2
    label = fig.find_element(By.CSS_SELECTOR, ".frame-no")
    assert label.text == "frame 1 / 8"
    first = [img.get_attribute("src") for img in imgs]
    assert first[0] != first[1] and all(s.startswith("data:image/jpeg") for s in first)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", fig)
    fig.find_element(By.CSS_SELECTOR, ".play").click()
    assert fig.find_element(By.CSS_SELECTOR, ".play").text.startswith("❚❚")  # the click landed
    moved = wait_for(
        browser,
        "const t = arguments[0].textContent; return t !== 'frame 1 / 8' && t;",
        timeout=20,
        args=(label,),
    )
    assert moved.startswith("frame ") and moved.endswith(" / 8"), moved
    scrub = fig.find_element(By.CSS_SELECTOR, ".scrub")
    browser.execute_script(
        "arguments[0].value = 5; arguments[0].dispatchEvent(new Event('input'));", scrub
    )
    assert label.text == "frame 6 / 8"
    assert fig.find_element(By.CSS_SELECTOR, ".play").text.startswith("▶")  # scrubbing pauses
    both = [img.get_attribute("src") for img in imgs]
    assert both != first and both[0] != both[1]


def test_the_3d_viewer_draws_gaussians_and_orbits(browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    fig = browser.find_element(By.CSS_SELECTOR, "figure.splat")
    canvas = fig.find_element(By.CSS_SELECTOR, "canvas")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    spin = fig.find_element(By.CSS_SELECTOR, ".spin")
    if spin.is_selected():
        spin.click()  # stop auto-rotation so the pictures compare
    browser.execute_script("arguments[0].splatViewer.draw()", fig)
    drawn, total, before = browser.execute_script(_NON_BACKGROUND, canvas, BACKGROUND)
    assert drawn > 0.02 * total, (drawn, total)  # the sphere covers a good part of the view
    assert drawn < 0.9 * total  # and the background shows around it
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(
        120, 40
    ).release().perform()
    browser.execute_script("arguments[0].splatViewer.draw()", fig)
    _, _, after = browser.execute_script(_NON_BACKGROUND, canvas, BACKGROUND)
    assert after != before  # the orbit changed the picture
    assert "600 Gaussians" in fig.text
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


_CENTROIDS = """
const canvas = arguments[0];
const c = document.createElement("canvas");
c.width = canvas.width; c.height = canvas.height;
const ctx = c.getContext("2d");
ctx.drawImage(canvas, 0, 0);
const px = ctx.getImageData(0, 0, c.width, c.height).data;
const sums = {r: [0, 0, 0], g: [0, 0, 0], b: [0, 0, 0]};
for (let i = 0; i < px.length; i += 4) {
  const x = (i / 4) % c.width, y = Math.floor(i / 4 / c.width);
  const [r, g, b] = [px[i], px[i + 1], px[i + 2]];
  const k = r > 150 && g < 90 && b < 90 ? "r" : g > 150 && r < 90 && b < 90 ? "g"
    : b > 150 && r < 90 && g < 90 ? "b" : null;
  if (k) { sums[k][0] += x; sums[k][1] += y; sums[k][2] += 1; }
}
return Object.fromEntries(Object.entries(sums).map(([k, [x, y, n]]) => [k, [x / n, y / n, n]]));
"""


def test_the_projection_puts_the_axes_where_they_belong(browser, page, tmp_path) -> None:
    """Red at +x, blue at +z (up), green at the origin: from the first view (in front, a little
    to the right and above), +x is drawn to the right and +z above the origin."""
    pytest.importorskip("atoken_plugin_3d")
    import torch
    from atoken_plugin_3d.ply import PlyGaussians, write_ply
    from selenium.webdriver.common.by import By

    rgb = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    axes = PlyGaussians(
        means=torch.tensor([[0.5, 0, 0], [0, 0, 0.5], [0, 0, 0]]),
        features_dc=((rgb - 0.5) / 0.28209479).reshape(3, 1, 3),
        opacities=torch.full((3,), 0.99),
        scales=torch.full((3, 3), 0.05),
        quats=torch.tensor([[1.0, 0, 0, 0]] * 3),
    )
    write_ply(tmp_path / "axes" / "reconstruction.ply", axes)
    (tmp_path / "axes" / "metrics.json").write_text('{"modality": "mesh3d"}')
    try:
        browser.get(write_report(tmp_path, tmp_path / "axes.html").as_uri())
        fig = browser.find_element(By.CSS_SELECTOR, "figure.splat")
        browser.execute_script(
            "arguments[0].querySelector('.spin').checked = false;"
            "arguments[0].querySelector('.reset').click(); arguments[0].splatViewer.draw();",
            fig,
        )
        c = browser.execute_script(_CENTROIDS, fig.find_element(By.CSS_SELECTOR, "canvas"))
        assert all(c[k][2] > 50 for k in "rgb"), c  # each Gaussian is drawn
        (rx, ry, _), (gx, gy, _), (bx, by, _) = c["r"], c["g"], c["b"]
        assert rx > gx + 80 and abs(ry - gy) < 60, c  # +x: to the right
        assert by < gy - 80 and abs(bx - gx) < 10, c  # +z: straight up
    finally:
        browser.get(page.as_uri())
