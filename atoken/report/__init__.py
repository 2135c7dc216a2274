"""``atoken report``: one self-contained HTML page of a training run or of reconstructions.

`build_report` reads a run folder (``metrics.jsonl``, ``eval.jsonl``, ``samples/``: curves,
summaries, held-out tables and pictures) or a reconstruction folder (one subfolder per input with
``metrics.json``, ``reconstruction.*`` and ``side_by_side.*``: comparison sliders for pictures,
synchronised players for clips, a WebGL2 viewer for 3D Gaussian ``.ply`` files, a metric table
per item), or a folder holding several of both; `write_report` writes it atomically.

The page needs no network: pictures are ``data:`` URIs, clips are embedded as JPEG frames that
the page plays itself, and the stylesheet, scripts and Gaussian-splat renderer are inline. The
renderer is atoken's own small WebGL2 program (``splat.js``) rather than a vendored npm viewer,
because nothing can be downloaded where atoken is built and it keeps the page small
(`atoken.report.splats` says how it draws).

Layout: `atoken.report.sources` finds and reads the folders, `atoken.report.media` the pictures
and clips, `atoken.report.splats` the ``.ply`` files, `atoken.report.charts` draws the curves,
`atoken.report.run_section` and `atoken.report.item_section` write the sections of runs and of
reconstructions from the shared pieces of `atoken.report.markup`, and `atoken.report.page`
assembles the page from ``report.html``, ``report.css``, ``report.js`` and ``splat.js`` (package
data).

References: Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering" (2023),
the EWA projection of a 3D covariance to the screen; antimatter15/splat (Kevin Kwok, 2023), the
idea of drawing depth-sorted screen-space quads in WebGL; Zwicker et al., "EWA Splatting" (2002).
All code is written here.
"""

from __future__ import annotations

from atoken.report.page import build_report, write_report

__all__ = ["build_report", "write_report"]
