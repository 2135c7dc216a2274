"""``atoken train configs/3d-gs.toml``: train the 3D Gaussian decoder behind a frozen tokenizer.

Pipeline (the paper's 3D reconstruction objective, with the tokenizer held fixed):

1. Every asset is rendered to posed views, voxelized into 3D tokens and reconstructed once by
   the frozen tokenizer (`atoken_plugin_3d.train_gs_data`, cached in ``RUN/cache``).
2. Each step picks an asset and ``views_per_step`` of its training views (drawn from a generator
   seeded by ``(seed, step)``, so a resumed run draws exactly what an uninterrupted one would),
   decodes the asset's Gaussians, renders the views (`render_gaussians.render`) and minimises
   ``l1 * L1 + lpips * LPIPS + ssim * (1 - SSIM)`` (paper: 1, 0.2, 0.2) with AdamW under a
   linear warm-up + cosine schedule. Only the Gaussian decoder learns.

A run folder::

    RUN/
      config.json            the validated config
      cache/                 views, voxel tokens, decoded features (safetensors)
      tokenizer/             the frozen tokenizer (save_pretrained; a PCA start is fitted once)
      checkpoints/step-N/    decoder weights, optimizer, scheduler, RNG (atoken's checkpoints)
      metrics.jsonl          loss terms and s/step (means since the last record), lr
      eval.jsonl             held-out PSNR / SSIM / LPIPS at step 0, every sample_every, the end
      loss_curve.png         loss terms over steps
      samples/step-N.png     ground truth | render of held-out views
      model/                 tokenizer (from_pretrained dir) + gaussian_decoder/: what
                             ``atoken reconstruct x.ply --model RUN/model`` loads

References: AToken (arXiv 2509.14476) 3D loss ``L1 + 0.2 LPIPS + 0.2 (1 - SSIM)``; TRELLIS
(microsoft/TRELLIS) Gaussian decoder training (rendered views vs ground-truth renders).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from atoken.plugin import ConfigError, InputError, atomic_write, atomic_write_json
from torch import Tensor

from atoken_plugin_3d.gaussian_decoder import GaussianDecoder
from atoken_plugin_3d.train_gs_config import GaussianTrainConfig, load_gs_config
from atoken_plugin_3d.train_gs_data import (
    CACHE_DIR,
    Asset,
    cached_features,
    prepare_asset,
    reconstruction_psnr,
    voxel_patch_tokens,
)

TOKENIZER_DIR = "tokenizer"
DECODER_DIR = "gaussian_decoder"
MODEL_DIR = "model"
_SHOWN = ("loss", "l1", "lpips", "dssim")


@dataclass
class GaussianTrainResult:
    """What a run produced: folder, steps done, final model dir, held-out metrics over time."""

    run_dir: Path
    steps: int
    model_dir: Path | None
    evals: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class GaussianDecoderTrainer:
    """The ``gaussian-decoder`` trainer that ``atoken train`` runs (`fit`).

    Args:
        options: registry options (none are defined; accepted for the factory signature).
        progress: print progress lines to stderr.
        stop_at: stop after this step as an interrupted run would (no final model; tests).
    """

    def __init__(
        self, options: object | None = None, *, progress: bool = True, stop_at: int | None = None
    ) -> None:
        self.progress = progress
        self.stop_at = stop_at

    # ------------------------------------------------------------------ entry points
    def fit(
        self,
        config_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        resume: bool = False,
        steps: int | None = None,
    ) -> GaussianTrainResult:
        """Validate the TOML at ``config_path`` and train into ``out_dir`` (see the module doc)."""
        config = load_gs_config(config_path).with_steps(steps)
        return self.fit_config(config, out_dir, resume=resume)

    def fit_config(
        self, config: GaussianTrainConfig, out_dir: str | os.PathLike[str], *, resume: bool = False
    ) -> GaussianTrainResult:
        """Train from an already validated config."""
        return _Run(config, Path(out_dir), resume=resume, log=self._log, stop_at=self.stop_at).run()

    def _log(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one run


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"run.device: {name!r} is not a torch device (auto, cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device = {name!r} but CUDA is not available")
    return device


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's draws: a function of (seed, step) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


class _Run:
    def __init__(
        self,
        config: GaussianTrainConfig,
        run_dir: Path,
        *,
        resume: bool,
        log,
        stop_at: int | None,
    ) -> None:
        from atoken.train.checkpoint import CheckpointManager

        self.config = config
        self.run_dir = run_dir
        self.resume = resume
        self.log = log
        self.stop_at = stop_at
        self.device = _device(config.run.device)
        self.checkpoints = CheckpointManager(run_dir, keep_last=config.run.keep_last)
        if not resume and self.checkpoints.latest() is not None:
            raise ConfigError(
                f"run folder {str(run_dir)!r} already holds checkpoints; pass --resume to continue"
                " that run, or choose another --out"
            )
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up
    def _decoder(self) -> GaussianDecoder:
        section = self.config.gaussian_decoder
        if section.from_pretrained is not None:
            from atoken_plugin_3d.convert import load_gaussian_decoder

            over = {"attn_backend": section.attn_backend} if section.attn_backend else {}
            decoder = load_gaussian_decoder(section.from_pretrained, **over)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.run.seed)
                decoder = GaussianDecoder(section.build())
        if decoder.config.latent_channels != 768:
            raise ConfigError(
                "gaussian_decoder: latent_channels must be 768 (the decoded patch's first frame),"
                f" got {decoder.config.latent_channels}"
            )
        return decoder.to(self.device).train()

    def _tokenizer(self, assets: list[Asset]):
        """The frozen tokenizer: reloaded from ``RUN/tokenizer`` on resume, else built + saved."""
        from atoken import Tokenizer, build_tokenizer

        section = self.config.tokenizer
        saved = self.run_dir / TOKENIZER_DIR
        if self.resume and (saved / "config.json").is_file():
            model = Tokenizer.from_pretrained(saved)
            self.log(f"tokenizer: {saved} (saved by this run)")
        elif section.from_pretrained is not None:
            model = Tokenizer.from_pretrained(section.from_pretrained)
            self.log(f"tokenizer: {section.from_pretrained}")
        else:
            model = build_tokenizer(section.preset)
            if section.init == "pca":
                from atoken.train.pca_init import pca_init

                patches = [voxel_patch_tokens(a.feats, a.coords).feats for a in assets]
                info = pca_init(model, patches, values=768)
                self.log(
                    f"tokenizer: {section.preset}, PCA start on {info['patches']} voxel patches"
                    f" ({info['explained_variance']:.1%} of their variance in the latent)"
                )
            else:
                self.log(f"tokenizer: {section.preset} (fresh weights)")
        if model.decoder is None:
            raise ConfigError("tokenizer: the model has no decoder; 3D reconstruction needs one")
        if not (self.resume and (saved / "config.json").is_file()):
            tmp = self.run_dir / f"{TOKENIZER_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            _replace_dir(tmp, saved)
        return model.eval().requires_grad_(False)

    def _prepare(self) -> list[Asset]:
        cfg = self.config
        resolution = self.decoder.config.resolution
        cache = self.run_dir / CACHE_DIR
        self.log(f"preparing {len(cfg.data.assets)} asset(s) into {cache}")
        assets = [
            prepare_asset(a, cfg.data, resolution, cache, i, self.log)
            for i, a in enumerate(cfg.data.assets)
        ]
        tokenizer = self._tokenizer(assets).to(self.device)
        for i, asset in enumerate(assets):
            asset.gs_feats = cached_features(tokenizer, asset, cache, i)
            self.log(
                f"  {asset.name}: {len(asset.coords)} voxels, tokenizer reconstruction"
                f" {reconstruction_psnr(asset):.1f} dB"
            )
        self.tokenizer = tokenizer.cpu()
        return assets

    def _losses(self):
        from atoken.plugins.losses.options import PerceptualOptions
        from atoken.plugins.losses.perceptual import LPIPSLoss

        section = self.config.loss
        if section.lpips == 0 and not self.config.run.eval_lpips:
            return None
        options = PerceptualOptions(
            net=section.lpips_net,
            random_trunk=section.lpips_random_trunk,
            size=section.lpips_size or 224,
        )
        try:
            with torch.random.fork_rng(devices=[]):  # a random trunk is the same on resume
                torch.manual_seed(self.config.run.seed)
                return LPIPSLoss(options).to(self.device).eval()
        except (ImportError, FileNotFoundError) as exc:
            if section.lpips > 0:
                raise
            self.log(f"LPIPS unavailable ({exc}); held-out LPIPS is not reported")
            return None

    # ------------------------------------------------------------------ pieces
    def _gaussians(self, asset: Asset):
        feats = asset.gs_feats.to(self.device)
        coords = asset.decoder_coords().to(self.device)
        return self.decoder.decode(feats, coords)[0]

    def _render(self, gaussians, cameras) -> Tensor:
        from atoken_plugin_3d.render_gaussians import render

        backend = self.config.run.render_backend
        return torch.stack([render(gaussians, cam, backend=backend).rgb for cam in cameras])

    def _lpips(self, pred: Tensor, target: Tensor) -> Tensor:
        """``[B, H, W, 3]`` pairs in [0, 1] -> ``[B]`` LPIPS."""
        p = pred.permute(0, 3, 1, 2) * 2 - 1
        t = target.permute(0, 3, 1, 2) * 2 - 1
        size = self.config.loss.lpips_size
        if size is not None and size != p.shape[-1]:
            from atoken.plugins.losses.perceptual import resize_batch

            p = resize_batch(list(p.permute(0, 2, 3, 1)), size)
            t = resize_batch(list(t.permute(0, 2, 3, 1)), size)
        return self.lpips.distance(p, t)

    def _loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        from atoken.plugin import ssim

        w = self.config.loss
        l1 = (pred - target).abs().mean()
        total = w.l1 * l1
        terms = {"l1": float(l1.detach())}
        if w.ssim > 0:
            dssim = 1 - ssim(pred, target, data_range=1.0).mean()
            total = total + w.ssim * dssim
            terms["dssim"] = float(dssim.detach())
        if w.lpips > 0:
            lp = self._lpips(pred, target).mean()
            total = total + w.lpips * lp
            terms["lpips"] = float(lp.detach())
        terms["loss"] = float(total.detach())
        return total, terms

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out PSNR / SSIM / LPIPS (renders in [0, 1]); appends to eval.jsonl, draws samples."""
        from atoken.plugin import psnr, ssim
        from atoken.train.plots import reconstruction_grid

        limit = self.config.run.eval_views
        rows, pairs, captions = [], [], []
        self.decoder.eval()
        for asset in self.assets:
            cams = asset.held_cameras[:limit] if limit else asset.held_cameras
            target = asset.held_rgb[: len(cams)].to(self.device)
            pred = self._render(self._gaussians(asset), cams).clamp(0, 1)
            row = {
                "asset": asset.name,
                "psnr": float(psnr(target, pred, data_range=1.0).mean()),
                "ssim": float(ssim(target, pred, data_range=1.0).mean()),
            }
            if self.lpips is not None:
                row["lpips"] = float(self._lpips(pred, target).mean())
            rows.append(row)
            for i in range(min(2, len(cams))):
                pairs.append((target[i].cpu() * 2 - 1, pred[i].cpu() * 2 - 1))
                captions.append(
                    f"{Path(asset.name).name} view {i}: PSNR"
                    f" {float(psnr(target[i], pred[i], data_range=1.0)):.2f} dB"
                )
        self.decoder.train()
        summary: dict[str, Any] = {"step": step}
        for key in ("psnr", "ssim", "lpips"):
            if all(key in r for r in rows):
                summary[key] = sum(r[key] for r in rows) / len(rows)
        summary["assets"] = rows
        with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary) + "\n")
        reconstruction_grid(
            pairs, self.run_dir / "samples" / f"step-{step:08d}.png", captions=captions
        )
        self.evals.append(summary)
        lp = f", LPIPS {summary['lpips']:.3f}" if "lpips" in summary else ""
        self.log(
            f"step {step}: held-out PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.3f}{lp}"
        )
        return summary

    def draw_curve(self) -> None:
        from atoken.train.plots import loss_curve

        series = {
            k: [(r["step"], r[k]) for r in self.history if k in r]
            for k in _SHOWN
            if any(k in r for r in self.history)
        }
        loss_curve(series, self.run_dir / "loss_curve.png", title="Gaussian decoder losses (log)")

    # ------------------------------------------------------------------ the loop
    def run(self) -> GaussianTrainResult:
        from atoken.train.optim import lr_factor

        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", cfg.model_dump(mode="json"))
        self.decoder = self._decoder()
        self.assets = self._prepare()
        self.lpips = self._losses()
        params = [p for p in self.decoder.parameters() if p.requires_grad]
        opt = cfg.optimizer
        optimizer = torch.optim.AdamW(
            params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        total = cfg.run.steps
        warmup = min(opt.warmup_steps, max(0, total - 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, total=total, warmup=warmup, lr=opt.lr, min_lr=opt.min_lr),
        )
        step = 0
        if self.resume:
            state = self.checkpoints.resume(
                model=self.decoder, optimizer=optimizer, scheduler=scheduler
            )
            if state is not None:
                step = state["step"]
                extra = state.get("extra") or {}
                self.history = list(extra.get("history", []))
                self.evals = list(extra.get("evals", []))
                self.log(f"resuming from {state['path']} (step {step})")
        for name in ("metrics.jsonl", "eval.jsonl"):
            _truncate_jsonl(self.run_dir / name, step)
        n_params = sum(p.numel() for p in params)
        self.log(
            f"training the Gaussian decoder ({n_params / 1e6:.2f}M parameters) for {total} steps"
            f" on {self.device}"
        )
        if step == 0:
            self.evaluate(0)
        window: dict[str, float] = {}
        window_steps = 0
        while step < total:
            t0 = time.perf_counter()
            gen = _step_generator(cfg.run.seed, step)
            asset = self.assets[int(torch.randint(len(self.assets), (1,), generator=gen))]
            views = torch.randperm(len(asset.train_cameras), generator=gen)[
                : cfg.data.views_per_step
            ].tolist()
            pred = self._render(self._gaussians(asset), [asset.train_cameras[i] for i in views])
            target = asset.train_rgb[views].to(self.device)
            loss, terms = self._loss(pred, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opt.grad_clip is not None:
                terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, opt.grad_clip))
            if not math.isfinite(terms["loss"]):
                raise InputError(
                    f"step {step + 1}: the loss is {terms['loss']}; lower optimizer.lr or check"
                    " the assets"
                )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            terms["s_per_step"] = time.perf_counter() - t0
            for key, value in terms.items():
                window[key] = window.get(key, 0.0) + value
            window_steps += 1
            if step % cfg.run.log_every == 0 or step == total:
                # means over the steps since the last record (each step sees one asset's views)
                record = {
                    "step": step,
                    **{k: v / window_steps for k, v in window.items()},
                    "lr": lr,
                    "steps_averaged": window_steps,
                }
                window, window_steps = {}, 0
                self.history.append(record)
                with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                shown = " ".join(f"{k} {record[k]:.4f}" for k in _SHOWN if k in record)
                self.log(
                    f"step {step}/{total} {shown} lr {lr:.2e} {record['s_per_step']:.2f} s/step"
                )
            if step % cfg.run.sample_every == 0 or step == total:
                self.evaluate(step)
                self.draw_curve()
            if step % cfg.run.checkpoint_every == 0 or step == total:
                self.checkpoints.save(
                    step,
                    model=self.decoder,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra={"history": self.history, "evals": self.evals},
                    export=False,
                )
            if self.stop_at is not None and step >= self.stop_at and step < total:
                return GaussianTrainResult(self.run_dir, step, None, self.evals, self.history)
        self.draw_curve()
        model_dir = self.export(step)
        self.log(f"trained {step} steps; model: {model_dir} (atoken reconstruct --model)")
        if len(self.evals) >= 2:
            a, b = self.evals[0], self.evals[-1]
            self.log(
                f"held-out PSNR {a['psnr']:.2f} -> {b['psnr']:.2f} dB (steps {a['step']} -> {b['step']})"
            )
        return GaussianTrainResult(self.run_dir, step, model_dir, self.evals, self.history)

    def export(self, step: int) -> Path:
        """Write ``RUN/model``: tokenizer ``save_pretrained`` + ``gaussian_decoder/``, atomically."""
        from atoken_plugin_3d.convert import save_gaussian_decoder

        tmp = self.run_dir / f"{MODEL_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.tokenizer.save_pretrained(tmp)
        save_gaussian_decoder(
            self.decoder, tmp / DECODER_DIR, info={"step": step, "run": str(self.run_dir)}
        )
        final = self.evals[-1] if self.evals else {}
        atomic_write_json(
            tmp / "source.json",
            {
                "step": step,
                "trainer": "gaussian-decoder",
                "weights": "model",
                "held_out": {k: final[k] for k in ("psnr", "ssim", "lpips") if k in final},
            },
        )
        return _replace_dir(tmp, self.run_dir / MODEL_DIR)


def _replace_dir(tmp: Path, target: Path) -> Path:
    """Put directory ``tmp`` in place of ``target``, keeping the old one until the new is in."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop records of steps after ``step`` (left by the interrupted part of a resumed run)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    text = "".join(f"{line}\n" for line in keep)
    atomic_write(path, lambda fh: fh.write(text), mode="w")
