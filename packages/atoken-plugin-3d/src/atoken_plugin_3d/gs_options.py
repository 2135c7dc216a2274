"""Options of the ``gaussian_render`` task objective (pydantic only: registration stays cheap).

A training config sets them in ``[objectives.gaussian_render]`` (see ``configs/3d-gs.toml``);
every key is checked (unknown keys and wrong types are errors naming the key).

References: AToken (arXiv 2509.14476) 3D loss weights ``L1 + 0.2 LPIPS + 0.2 (1 - SSIM)``;
TRELLIS (microsoft/TRELLIS) Gaussian-decoder training set-up.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from atoken.plugin import Strict
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator


class GaussianDecoderOptions(Strict):
    """The Gaussian decoder: a directory to start from, or the release's network with overrides.

    Unset fields keep the release's values (`GaussianDecoderConfig`: 64³ grid, 12 blocks, width
    768, 32 Gaussians per voxel). ``attn_softcap = 0`` switches the attention soft-cap off.
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
    def _check(self) -> GaussianDecoderOptions:
        if self.from_pretrained is not None:
            extra = sorted(set(self.overrides()) - {"attn_backend"})
            if extra:
                raise ValueError(
                    f"from_pretrained keeps the saved decoder config; remove {', '.join(extra)}"
                )
            return self
        self.build()  # raises ValueError (e.g. width not divisible by heads) with a clear text
        return self

    def build(self):
        """The `GaussianDecoderConfig` of a new decoder (release values + overrides)."""
        from atoken_plugin_3d.gaussian_decoder import GaussianDecoderConfig
        from atoken_plugin_3d.gaussians import RepresentationConfig

        kw = self.overrides()
        rep = {k: kw.pop(k) for k in ("num_gaussians", "scaling_bias", "opacity_bias") if k in kw}
        if kw.get("attn_softcap") == 0:
            kw["attn_softcap"] = None
        return GaussianDecoderConfig(representation=RepresentationConfig(**rep), **kw)


class GaussianRenderOptions(Strict):
    """``[objectives.gaussian_render]``: train the Gaussian decoder on rendered views.

    Attributes:
        decoder: the Gaussian decoder (`GaussianDecoderOptions`).
        l1: weight of the L1 term (paper: 1).
        lpips: weight of the LPIPS term (paper: 0.2); the registered ``lpips`` loss's network.
        ssim: weight of the ``1 - SSIM`` term (paper: 0.2).
        lpips_net: LPIPS trunk (``vgg``; weights found offline).
        lpips_size: resize before LPIPS (None: the render size).
        lpips_random_trunk: a random LPIPS trunk (tests without the weights only).
        image_size: side of the supervision renders; the asset's input views (the ones that
            were voxelized) are resized to it.
        views_per_step: input views of each sample rendered per step (drawn with torch's
            generator, which checkpoints restore).
        render_backend: Gaussian renderer (``auto``, ``torch``, ``gsplat``).
        eval_views: held-out views per asset evaluated (None: all).
        eval_lpips: report held-out LPIPS even when the LPIPS weight is 0 (skipped, with a log
            line, when the network cannot be loaded).
    """

    decoder: GaussianDecoderOptions = Field(default_factory=GaussianDecoderOptions)
    l1: NonNegativeFloat = 1.0
    lpips: NonNegativeFloat = 0.2
    ssim: NonNegativeFloat = 0.2
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_size: Annotated[int, Field(ge=32)] | None = None
    lpips_random_trunk: bool = False
    image_size: Annotated[int, Field(ge=16, le=4096)] = 256
    views_per_step: PositiveInt = 4
    render_backend: Literal["auto", "torch", "gsplat"] = "auto"
    eval_views: PositiveInt | None = None
    eval_lpips: bool = True

    @model_validator(mode="after")
    def _check(self) -> GaussianRenderOptions:
        if self.l1 + self.lpips + self.ssim <= 0:
            raise ValueError("all loss weights are 0; give l1, lpips or ssim a positive weight")
        return self
