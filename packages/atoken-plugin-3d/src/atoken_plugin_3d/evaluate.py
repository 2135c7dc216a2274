"""3D reconstruction quality over a folder of assets: PSNR / SSIM / LPIPS on held-out views.

Every mesh file (``.obj .ply .glb .gltf .stl .off``) and every NeRF-synthetic folder (holding
``transforms.json`` or ``transforms_train.json``) under a directory tree is loaded by the
``mesh3d`` adapter, tokenized, encoded, decoded to Gaussians and rendered at its held-out views
(`atoken.plugin.reconstruct_sample`), one asset at a time. Voxel files have no reference views
and are not evaluated. Unreadable assets are listed under ``skipped``.

``atoken eval --task reconstruction`` covers images and videos only; until it hands other
modalities to their adapters, ``atoken eval-3d`` (this plugin's command) runs this.

References: AToken (Lu et al., 2025) 3D reconstruction metrics (PSNR / LPIPS on Toys4k renders).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from atoken.plugin import Components, InputError, adapter_for, default_components

from atoken_plugin_3d.adapter import MESH_EXTENSIONS

logger = logging.getLogger("atoken_plugin_3d.evaluate")

NERF_FILES = ("transforms.json", "transforms_train.json")


def find_assets(root: str | os.PathLike[str]) -> list[Path]:
    """Mesh files and NeRF folders under ``root`` (sorted; files inside a NeRF folder skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"evaluation data {str(root)!r} is not a directory of 3D assets")
    nerf = sorted(
        {p.parent for name in NERF_FILES for p in root.rglob(name) if p.is_file()}, key=str
    )
    meshes = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in MESH_EXTENSIONS
        and not any(folder in p.parents for folder in nerf)
    ]
    assets = sorted([*meshes, *nerf], key=str)
    if not assets:
        raise InputError(
            f"no 3D assets under {root}: mesh files ({' '.join(MESH_EXTENSIONS)}) or NeRF"
            " folders (transforms.json) expected"
        )
    return assets


def reconstruction_metrics_3d(
    model,
    root: str | os.PathLike[str],
    *,
    options: dict[str, Any] | None = None,
    limit: int | None = None,
    components: Components | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean PSNR / SSIM (/ LPIPS) of ``model`` over the 3D assets under ``root``.

    Args:
        model: the tokenizer (its ``gaussian_decoder`` companion, if its directory carries one,
            decodes the Gaussians; the adapter is built for it).
        root: a directory searched recursively (`find_assets`).
        options: ``mesh3d`` adapter options (views, size, heldout_views, gaussian_decoder, ...).
        limit: evaluate only the first ``limit`` assets.
        components: registries; default: the installed plugins.
        progress: show a progress bar over assets on a terminal.

    Returns:
        JSON-ready dict: ``task``, ``assets``, the means ``psnr`` / ``ssim`` (/ ``lpips``),
        ``skipped`` (one line per unreadable asset) and ``per_asset`` rows.
    """
    from atoken.plugin import progress_bar, reconstruct_sample

    comps = components or default_components()
    adapter = adapter_for(root, "mesh3d", options or None, comps, model=model)
    assets = find_assets(root)[:limit]
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("3D assets", total=len(assets)) if bar is not None else None
        for path in assets:
            try:
                result = reconstruct_sample(model, adapter, adapter.load(path), path)
            except InputError as exc:
                skipped.append(f"{path}: {exc}")
            else:
                rows.append(
                    {"asset": str(path.relative_to(root)), "tokens": result.tokens} | result.metrics
                )
                logger.info("%s: %s", path, result.metrics)
            if bar is not None:
                bar.advance(task)
    if not rows:
        raise InputError(f"none of the {len(assets)} 3D assets under {root} could be read")
    keys = [k for k in ("psnr", "ssim", "lpips") if all(k in r for r in rows)]
    out: dict[str, Any] = {"task": "reconstruction-3d", "assets": len(rows)}
    out.update({k: sum(r[k] for r in rows) / len(rows) for k in keys})
    out.update(skipped=skipped, per_asset=rows)
    return out
