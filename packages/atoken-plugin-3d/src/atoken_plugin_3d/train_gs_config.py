"""The ``configs/3d-gs.toml`` schema: training the 3D Gaussian decoder behind a frozen tokenizer.

A TOML file with ``trainer = "gaussian-decoder"`` at the top level; `atoken train` hands it to
`atoken_plugin_3d.train_gs.GaussianDecoderTrainer`. Every section is a strict pydantic model:
unknown keys are errors that name their path (``gaussian_decoder.widht: unknown key``).

Sections (all optional; defaults follow the paper and the release):

- ``[tokenizer]``: the frozen AToken model whose decoded voxel tokens feed the Gaussian decoder:
  ``from_pretrained = DIR`` or ``preset = NAME`` (fresh weights; ``init = "pca"`` fits its first
  and last layers to the voxel patches so a fresh tiny model reconstructs them).
- ``[gaussian_decoder]``: ``from_pretrained = DIR`` (a converted / trained decoder directory), or
  overrides of the release's ``3d_decode_gs`` values (12 blocks, width 768, 32 Gaussians).
- ``[data]``: the assets (mesh files, NeRF-synthetic folders, ``builtin:NAME``), views per asset,
  held-out views, render sizes.
- ``[loss]``: ``l1 * L1 + lpips * LPIPS + ssim * (1 - SSIM)`` (paper: 1, 0.2, 0.2).
- ``[optimizer]``: AdamW with linear warm-up and cosine decay.
- ``[run]``: steps, seed, logging / checkpoint / sample intervals, device.

References: AToken (arXiv 2509.14476) 3D section (loss weights); TRELLIS (microsoft/TRELLIS)
Gaussian-decoder training set-up (AdamW, lr 1e-4, no weight decay).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from atoken.plugin import ConfigError, Strict, format_validation_error
from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from atoken_plugin_3d.gaussian_decoder import GaussianDecoderConfig
from atoken_plugin_3d.gaussians import RepresentationConfig

TRAINER_NAME = "gaussian-decoder"
#: built-in assets: the Stanford bunny (pymeshfix) and generated, vertex-coloured primitives
BUILTIN_ASSETS = ("bunny", "cube", "sphere", "cylinder", "torus", "cone")
BUILTIN_PREFIX = "builtin:"


class TokenizerSection(Strict):
    """The frozen tokenizer: a ``from_pretrained`` directory, or a preset (fresh weights).

    Attributes:
        preset: preset name (used when ``from_pretrained`` is not given).
        from_pretrained: a ``save_pretrained`` directory (e.g. a trained ``runs/*/model``).
        init: ``default`` (the preset's seeded init) or ``pca`` (a PCA patch tokenizer fitted
            on the voxel patches of the training assets; preset only).
    """

    preset: str = "atoken-tiny"
    from_pretrained: str | None = None
    init: Literal["default", "pca"] = "default"

    @model_validator(mode="after")
    def _check(self) -> TokenizerSection:
        from atoken import PRESETS

        if self.from_pretrained is None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets: {', '.join(PRESETS)}")
        if self.init == "pca" and self.from_pretrained is not None:
            raise ValueError("init = 'pca' starts a new model; it cannot apply to from_pretrained")
        return self


class DecoderSection(Strict):
    """The Gaussian decoder: a directory to start from, or the release's network with overrides.

    Unset fields keep the release's values (`GaussianDecoderConfig`). ``attn_softcap = 0``
    switches the attention soft-cap off.
    """

    from_pretrained: str | None = None
    resolution: PositiveInt | None = None
    model_channels: PositiveInt | None = None
    num_blocks: PositiveInt | None = None
    num_heads: PositiveInt | None = None
    mlp_channels: PositiveInt | None = None
    window_size: PositiveInt | None = None
    num_gaussians: PositiveInt | None = None
    scaling_bias: PositiveFloat | None = None
    opacity_bias: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    attn_softcap: NonNegativeFloat | None = None
    attn_backend: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields that were set (excluding ``from_pretrained``)."""
        return {
            k: v for k, v in self.model_dump(exclude={"from_pretrained"}).items() if v is not None
        }

    @model_validator(mode="after")
    def _check(self) -> DecoderSection:
        if self.from_pretrained is not None:
            extra = sorted(set(self.overrides()) - {"attn_backend"})
            if extra:
                raise ValueError(
                    f"from_pretrained keeps the saved decoder config; remove {', '.join(extra)}"
                )
            return self
        self.build()  # raises ValueError (e.g. width not divisible by heads) with a clear text
        return self

    def build(self) -> GaussianDecoderConfig:
        """The `GaussianDecoderConfig` for a new decoder (release values + overrides)."""
        kw = self.overrides()
        rep = {}
        for key in ("num_gaussians", "scaling_bias", "opacity_bias"):
            if key in kw:
                rep[key] = kw.pop(key)
        if kw.get("attn_softcap") == 0:
            kw["attn_softcap"] = None
        return GaussianDecoderConfig(representation=RepresentationConfig(**rep), **kw)


class DataSection(Strict):
    """Assets and views.

    Attributes:
        assets: mesh files (OBJ/PLY/GLB/STL...), NeRF-synthetic folders (``transforms.json`` with
            depth), or ``builtin:NAME`` (``bunny``: the Stanford bunny from pymeshfix; ``cube``,
            ``sphere``, ``cylinder``, ``torus``, ``cone``: generated, vertex-coloured shapes).
        views: training views per mesh (Hammersley sphere, radius / fov below); they are also
            the views that are voxelized.
        held_out: held-out views per mesh (a rotated point set, never trained on or voxelized);
            for a NeRF folder, this many evenly spaced frames are held out.
        image_size: side of the supervision renders (square).
        voxel_image_size: side the views are resized to before cutting 16x16 patches (256).
        views_per_step: views rendered per training step.
        voxel_mode: ``nearest`` (release) or ``average`` patch per voxel.
        radius: camera distance from the origin.
        fov_deg: horizontal field of view.
        shading: mesh shading (``auto``: unlit colours, Lambert-lit grey for uncoloured meshes).
        fill: longest side of a mesh after normalisation into the unit cube.
    """

    assets: list[str] = Field(
        default=["builtin:bunny", "builtin:cube", "builtin:sphere"], min_length=1
    )
    views: PositiveInt = 16
    held_out: PositiveInt = 4
    image_size: Annotated[int, Field(ge=16, le=4096)] = 256
    voxel_image_size: Annotated[int, Field(ge=16, le=4096, multiple_of=16)] = 256
    views_per_step: PositiveInt = 4
    voxel_mode: Literal["nearest", "average"] = "nearest"
    radius: Annotated[float, Field(gt=0.87)] = 2.0
    fov_deg: Annotated[float, Field(gt=0.0, lt=180.0)] = 40.0
    shading: Literal["auto", "albedo", "lambert"] = "auto"
    fill: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if self.views_per_step > self.views:
            raise ValueError(
                f"views_per_step {self.views_per_step} exceeds the {self.views} training views"
            )
        for i, asset in enumerate(self.assets):
            if asset.startswith(BUILTIN_PREFIX):
                name = asset.removeprefix(BUILTIN_PREFIX)
                if name not in BUILTIN_ASSETS:
                    raise ValueError(
                        f"assets[{i}]: unknown built-in asset {name!r}; built-ins:"
                        f" {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_ASSETS)}"
                    )
        return self


class LossSection(Strict):
    """``l1 * L1 + lpips * LPIPS + ssim * (1 - SSIM)`` on rendered vs ground-truth views.

    Attributes:
        lpips_net: LPIPS trunk (``vgg``; weights found offline, see atoken's trunk_weights).
        lpips_size: resize before LPIPS (None: the render size).
        lpips_random_trunk: a random LPIPS trunk (tests without the weights only).
    """

    l1: NonNegativeFloat = 1.0
    lpips: NonNegativeFloat = 0.2
    ssim: NonNegativeFloat = 0.2
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_size: Annotated[int, Field(ge=32)] | None = None
    lpips_random_trunk: bool = False

    @model_validator(mode="after")
    def _check(self) -> LossSection:
        if self.l1 + self.lpips + self.ssim <= 0:
            raise ValueError("all loss weights are 0; give l1, lpips or ssim a positive weight")
        return self


class OptimizerSection(Strict):
    """AdamW; linear warm-up to ``lr``, then cosine down to ``min_lr``."""

    lr: PositiveFloat = 1e-4
    min_lr: NonNegativeFloat = 1e-5
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = 1.0


class RunSection(Strict):
    """Length, seed and what the run writes when.

    Attributes:
        steps: optimiser steps.
        seed: seed of the decoder init and of every step's asset / view draw.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:N``.
        render_backend: Gaussian renderer backend (``auto``, ``torch``, ``gsplat``).
        log_every: steps between metrics.jsonl records / progress lines.
        checkpoint_every: steps between checkpoints (and always the last step).
        sample_every: steps between held-out evaluations + sample PNGs (also step 0 and last).
        keep_last: checkpoints kept.
        eval_views: held-out views per asset to evaluate (None: all).
        eval_lpips: report held-out LPIPS even when the LPIPS loss weight is 0.
    """

    steps: PositiveInt = 1000
    seed: int = 0
    device: str = "auto"
    render_backend: str = "auto"
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 200
    sample_every: PositiveInt = 200
    keep_last: PositiveInt = 3
    eval_views: PositiveInt | None = None
    eval_lpips: bool = True


class GaussianTrainConfig(Strict):
    """The whole ``3d-gs.toml``."""

    trainer: Literal["gaussian-decoder"] = TRAINER_NAME
    tokenizer: TokenizerSection = TokenizerSection()
    gaussian_decoder: DecoderSection = DecoderSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    optimizer: OptimizerSection = OptimizerSection()
    run: RunSection = RunSection()

    def with_steps(self, steps: int | None) -> GaussianTrainConfig:
        """A copy whose ``run.steps`` is ``steps`` (None: unchanged)."""
        if steps is None:
            return self
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}")
        return self.model_copy(update={"run": self.run.model_copy(update={"steps": steps})})


def validate_gs_config(data: dict[str, Any], where: str = "3D Gaussian training config"):
    """Validate a parsed config; raises `ConfigError` naming each bad key path."""
    try:
        return GaussianTrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def load_gs_config(path: str | os.PathLike[str]) -> GaussianTrainConfig:
    """Read and validate a ``trainer = "gaussian-decoder"`` TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"training config {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return validate_gs_config(data, where=str(path))
