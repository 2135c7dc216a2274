"""The ``gaussian_render`` task objective: the Gaussian decoder trained on rendered views.

atoken's trainer runs it for the ``3d_gs`` task (registered by this plugin). For each sample of
a batch it takes the tokenizer's reconstruction of the voxel tokens (the first 768 channels of
each decoded row, what the release hands the Gaussian decoder), decodes Gaussians, renders
``views_per_step`` of the asset's input views (the views that were voxelized, resized to
``image_size``) and compares them with the ground-truth renders:
``l1 * L1 + lpips * LPIPS + ssim * (1 - SSIM)`` (paper: 1, 0.2, 0.2), averaged over the samples.
The tokenizer learns too unless the stage freezes it (``train = []``: the paper's set-up, a
frozen tokenizer behind a trained decoder).

Its parameters are the Gaussian decoder's (the trainer gives them their own AdamW group,
checkpoints them and keeps their EMA). Declared capabilities: ``export_companions`` writes the
(EMA) decoder to ``RUN/model/gaussian_decoder/`` (what ``atoken reconstruct x.ply --model
RUN/model`` loads), and ``evaluate_held_out`` measures PSNR / SSIM / LPIPS of the Gaussians
rendered at each evaluated asset's held-out views (never trained on nor voxelized).

References: AToken (arXiv 2509.14476) 3D reconstruction objective; TRELLIS (microsoft/TRELLIS)
Gaussian decoder training (rendered views vs ground-truth renders).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from atoken.plugin import (
    AtokenError,
    ConfigError,
    HeldOutReport,
    InputError,
    ObjectiveContext,
    PatchTokens,
    SharedHelpers,
    collate,
    lpips_input,
    psnr,
    ssim,
)
from torch import Tensor, nn

from atoken_plugin_3d.asset import Asset3D
from atoken_plugin_3d.gs_options import GaussianRenderOptions

logger = logging.getLogger("atoken_plugin_3d.gs_objective")

#: channels of a decoded row the Gaussian decoder reads (frame 0 of the patch)
DECODER_INPUT = 768
#: folder of the decoder inside a model directory (what the mesh3d adapter looks for)
DECODER_DIR = "gaussian_decoder"


def resize_views(rgb: Tensor, size: int) -> Tensor:
    """``[V, H, W, 3]`` -> ``[V, size, size, 3]`` (antialiased bilinear), clamped to [0, 1]."""
    if rgb.shape[1] == size and rgb.shape[2] == size:
        return rgb.float().contiguous()
    out = F.interpolate(
        rgb.permute(0, 3, 1, 2).float(),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return out.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


class GaussianRenderObjective(nn.Module):
    """The loss of ``3d_gs`` batches (see the module docstring).

    Args:
        options: the validated ``[objectives.gaussian_render]`` table.
        context: what the trainer says about the run (device, seed, registries).
    """

    capabilities = frozenset({"export_companions", "evaluate_held_out"})

    def __init__(self, options: GaussianRenderOptions, context: ObjectiveContext) -> None:
        super().__init__()
        self.options = options
        self.device = context.device
        self.decoder = self._build_decoder(options, context.seed)
        self.helpers = SharedHelpers(lpips=self._build_lpips(options, context))

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _build_decoder(options: GaussianRenderOptions, seed: int) -> nn.Module:
        from atoken_plugin_3d.gaussian_decoder import GaussianDecoder

        section = options.decoder
        if section.from_pretrained is not None:
            from atoken_plugin_3d.convert import load_gaussian_decoder

            over = {"attn_backend": section.attn_backend} if section.attn_backend else {}
            decoder = load_gaussian_decoder(section.from_pretrained, **over)
        else:
            with torch.random.fork_rng(devices=[]):  # the same start whatever ran before
                torch.manual_seed(seed)
                decoder = GaussianDecoder(section.build())
        if decoder.config.latent_channels != DECODER_INPUT:
            raise ConfigError(
                f"objectives.gaussian_render.decoder: latent_channels must be {DECODER_INPUT}"
                f" (the decoded patch's first frame), got {decoder.config.latent_channels}"
            )
        return decoder.train()

    @staticmethod
    def _build_lpips(options: GaussianRenderOptions, context: ObjectiveContext):
        """The registered ``lpips`` loss (frozen; None when only evaluation wanted it and it
        cannot be loaded here)."""
        if options.lpips == 0 and not options.eval_lpips:
            return None
        try:
            with torch.random.fork_rng(devices=[]):  # a random trunk is the same on resume
                torch.manual_seed(context.seed)
                loss = context.components.losses.build(
                    "lpips", {"net": options.lpips_net, "random_trunk": options.lpips_random_trunk}
                )
        except (ImportError, FileNotFoundError, AtokenError) as exc:
            if options.lpips > 0:
                raise
            logger.info("LPIPS unavailable (%s); held-out LPIPS is not reported", exc)
            return None
        return loss.to(context.device).eval()

    # ------------------------------------------------------------------ pieces
    def _gaussians(self, rows: PatchTokens):
        """Decoded rows ``[n, >=768]`` at ``(t, x, y, z)`` -> the sample's `Gaussians`."""
        res = self.decoder.config.resolution
        xyz = rows.coords[:, 1:].to(torch.int32)
        if len(xyz) == 0:
            raise InputError("gaussian_render: a sample has no voxels")
        if int(xyz.min()) < 0 or int(xyz.max()) >= res:
            raise ConfigError(
                f"gaussian_render: voxel coordinates {int(xyz.min())}..{int(xyz.max())} do not fit"
                f" the Gaussian decoder's {res}³ grid; set the data's adapter resolution ="
                f" {res} (options.adapter) or the decoder's resolution to the data's grid"
            )
        bxyz = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1).to(self.device)  # [n, 4]
        feats = rows.feats[:, :DECODER_INPUT].float().to(self.device)  # [n, 768]
        return self.decoder.decode(feats, bxyz)[0]

    def _render(self, gaussians, cameras) -> Tensor:
        from atoken_plugin_3d.render_gaussians import render

        backend = self.options.render_backend
        return torch.stack([render(gaussians, cam, backend=backend).rgb for cam in cameras])

    def _lpips(self, pred: Tensor, target: Tensor) -> Tensor:
        """``[B, H, W, 3]`` pairs in [0, 1] -> ``[B]`` LPIPS."""
        size = self.options.lpips_size
        return self.helpers.lpips.distance(
            lpips_input(pred * 2 - 1, size), lpips_input(target * 2 - 1, size)
        )

    def _targets(self, asset: Asset3D):
        """The asset's input views at ``image_size`` and their cameras (cached on the asset)."""
        from atoken_plugin_3d.cameras import Camera

        size = self.options.image_size
        key = ("gaussian_render.targets", size)
        if key not in asset.cache:
            views = asset.views
            cams = [Camera(c.c2w, c.fov_x, size, size) for c in views.cameras]
            asset.cache[key] = (resize_views(views.rgb, size), cams)
        return asset.cache[key]

    @staticmethod
    def _asset(tokens: PatchTokens) -> Asset3D:
        sample = tokens.meta.get("sample")
        if sample is None:
            raise ConfigError(
                "gaussian_render needs each sample with its tokens (meta['sample']); train it"
                " through a task that declares samples = True, such as 3d_gs"
            )
        if not isinstance(sample, Asset3D) or sample.views is None:
            what = sample.kind if isinstance(sample, Asset3D) else type(sample).__name__
            raise InputError(
                f"gaussian_render: a {what} sample has no posed views to render against; train"
                " on mesh files, NeRF-synthetic folders or builtin:NAME assets"
            )
        return sample

    def _loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        l1 = (pred - target).abs().mean()
        total = o.l1 * l1
        terms = {"l1": l1.detach()}
        if o.ssim > 0:
            dssim = 1 - ssim(pred, target, data_range=1.0).mean()
            total = total + o.ssim * dssim
            terms["dssim"] = dssim.detach()
        if o.lpips > 0:
            lp = self._lpips(pred, target).mean()
            total = total + o.lpips * lp
            terms["lpips"] = lp.detach()
        return total, terms

    # ------------------------------------------------------------------ the loss
    def forward(self, out, batch: Sequence[PatchTokens]) -> tuple[Tensor, dict[str, float]]:
        """``(total, terms)`` of one batch: the mean over its samples (module docstring)."""
        totals, sums = [], {}
        for rows, tokens in zip(out.reconstruction.split(), batch, strict=True):
            asset = self._asset(tokens)
            rgb, cams = self._targets(asset)
            k = min(self.options.views_per_step, len(cams))
            views = torch.randperm(len(cams))[:k].tolist()  # the global generator: resumable
            pred = self._render(self._gaussians(rows), [cams[i] for i in views])  # [k, S, S, 3]
            total, terms = self._loss(pred, rgb[views].to(pred.device))
            totals.append(total)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
        total = torch.stack(totals).mean()
        return total, {name: float(v) / len(totals) for name, v in sums.items()}

    # ------------------------------------------------------------------ capabilities
    def export_companions(self, directory: os.PathLike[str]) -> None:
        """Write this objective's decoder to ``directory/gaussian_decoder``."""
        from atoken_plugin_3d.convert import save_gaussian_decoder

        save_gaussian_decoder(
            self.decoder, Path(directory) / DECODER_DIR, info={"objective": "gaussian_render"}
        )

    @torch.no_grad()
    def evaluate_held_out(self, model: Any, samples: Sequence[Any]) -> HeldOutReport:
        """PSNR / SSIM (renders in [0, 1]) and LPIPS at each sample's held-out views.

        Args:
            model: the tokenizer to evaluate (the run's EMA weights).
            samples: `HeldOutSample` entries (assets without held-out views are skipped).
        """
        was_training = self.decoder.training
        self.decoder.eval()
        rows, pairs = [], []
        limit = self.options.eval_views
        for entry in samples:
            asset = entry.sample
            if not isinstance(asset, Asset3D) or asset.heldout is None:
                continue
            packed = collate([entry.tokens]).to(model.device)
            rec = model.decode(model.encode(packed, sample=False)).split()[0]
            held = asset.heldout
            cams = list(held.cameras)[:limit] if limit else list(held.cameras)
            target = held.rgb[: len(cams)].float().to(self.device)  # [V, H, W, 3]
            pred = self._render(self._gaussians(rec), cams).clamp(0, 1)
            row: dict[str, Any] = {
                "image": entry.key,
                "psnr": float(psnr(target, pred, data_range=1.0).mean()),
                "ssim": float(ssim(target, pred, data_range=1.0).mean()),
                "views": len(cams),
            }
            if self.helpers.lpips is not None:
                row["lpips"] = float(self._lpips(pred, target).mean())
            rows.append(row)
            shown = min(2, len(cams))  # the first views side by side: reference | render
            pairs.append(
                (
                    torch.cat(list(target[:shown].cpu()), 1) * 2 - 1,
                    torch.cat(list(pred[:shown].cpu()), 1) * 2 - 1,
                )
            )
        self.decoder.train(was_training)
        summary = {
            k: sum(r[k] for r in rows) / len(rows)
            for k in ("psnr", "ssim", "lpips")
            if rows and all(k in r for r in rows)
        }
        return HeldOutReport(
            summary=summary,
            rows=rows,
            pairs=pairs,
            data=f"held-out views of {len(rows)} 3D assets",
            convention={
                "images": "Gaussians rendered at the held-out cameras vs ground truth, [0, 1]",
                "psnr": "data_range 1, mean over views",
                "ssim": "atoken.plugin.ssim, data_range 1, mean over views",
                "lpips": f"{self.options.lpips_net}, size {self.options.lpips_size or 'native'}",
            },
        )


def build_objective(
    options: GaussianRenderOptions, context: ObjectiveContext
) -> GaussianRenderObjective:
    """Registry factory of ``gaussian_render``."""
    return GaussianRenderObjective(options, context)
