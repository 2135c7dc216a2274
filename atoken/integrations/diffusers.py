"""`AutoencoderAToken`: an atoken tokenizer as a dense diffusers autoencoder.

Generators built on diffusers expect a VAE that maps pixels ``[B, 3, H, W]`` in [-1, 1] to a
dense latent grid and back. atoken's latents are a sparse set of patch tokens; this module is
the dense view of them, for any continuous (``kl``) or discrete (``fsq``) tokenizer:

- ``encode(x)`` -> `AutoencoderKLOutput` whose ``latent_dist`` is diffusers'
  `DiagonalGaussianDistribution` over ``[B, Cz, H/ph, W/pw]`` (``sample()``, ``mode()``,
  ``kl()``); for a discrete model it is deterministic (``mode()`` = ``sample()`` = the codes).
- ``decode(z)`` -> `DecoderOutput` with ``sample [B, 3, H, W]`` in about [-1, 1].
- Videos: ``x [B, 3, T, H, W]`` <-> ``z [B, Cz, T/pt, H/ph, W/pw]``.

The patch ``(pt, ph, pw)`` is the model's (atoken: 4 x 16 x 16). H and W must be multiples of
``ph`` / ``pw`` and T of ``pt`` (one clear error otherwise): atoken's adapters centre-crop other
sizes, which a dense autoencoder must not do silently. The pixels go through the model's own
image and video adapters (an image is frame 0 of a ``pt``-frame patch, as `atoken reconstruct`
tokenizes it), so ``decode(encode(x).latent_dist.mode())`` gives the same numbers as the
tokenizer's own reconstruction of the same image. Latent position ``[:, :, i, j]`` is the token
at coords ``(t, x=i, y=j)``: patch row i, patch column j.

**Latent scaling** (``config``, diffusers' semantics): the latents this class returns and
takes are raw (un-normalised), as `AutoencoderKL`'s are; a generator trains on

    z_model = (z - latents_mean) * scaling_factor / latents_std      (per channel)

as diffusers' SDXL, LTX and Mochi pipelines do. With statistics (``atoken stats``, stored in the
model directory, `atoken.core.latent_stats`): ``latents_mean`` / ``latents_std`` are the
per-channel lists, ``scaling_factor`` is 1.0 and ``shift_factor`` is None, so a pipeline of the
scalar form ``(z - shift_factor) * scaling_factor`` (SD3, Flux) fails loudly instead of
silently training on unscaled latents. Without statistics: ``scaling_factor = 1.0``,
``shift_factor = 0.0``, ``latents_mean = latents_std = None`` (identity; the config's
``latents_stats_note`` says so). `normalize_latents` / `denormalize_latents` apply the
formula above. ``spatial_compression_ratio`` (``ph``) is what diffusers pipelines call
``vae_scale_factor``; ``temporal_compression_ratio`` is ``pt``.

`from_pretrained` takes a shipped model name (``"atoken-tiny-photo"``), a model directory or an
untrained preset, through `atoken.core.model_dir.load_tokenizer`; `save_pretrained` writes an
atoken model directory (``config.json`` + ``model.safetensors``, statistics included), which
`from_pretrained` and every ``atoken --model`` read; it is not diffusers' own VAE layout.

References: diffusers ``AutoencoderKL`` (``encode`` / ``decode`` outputs, config fields
``scaling_factor``, ``shift_factor``, ``latents_mean``, ``latents_std``) and
``DiagonalGaussianDistribution``; Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models" (2022); AToken (arXiv 2509.14476) patch layout.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from atoken.core.compat import ensure_torchvision_importable
from atoken.core.errors import InputError
from atoken.core.latent_stats import STATS_HINT
from atoken.core.model_dir import load_tokenizer
from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import Tokenizer
from atoken.core.tokens import PatchTokens, SparseTokens, collate

ensure_torchvision_importable()  # diffusers imports torchvision; CPU torch needs the shim first

from diffusers.configuration_utils import ConfigMixin  # noqa: E402
from diffusers.models.autoencoders.vae import (  # noqa: E402
    DecoderOutput,
    DiagonalGaussianDistribution,
)
from diffusers.models.modeling_outputs import AutoencoderKLOutput  # noqa: E402
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402

__all__ = ["AutoencoderAToken", "AutoencoderKLOutput", "DecoderOutput"]

#: pixel channels of images and clips
CHANNELS = 3
NO_STATS_NOTE = (
    "no latent statistics: scaling_factor 1.0, shift_factor 0.0 (identity); " + STATS_HINT
)


class AutoencoderAToken(ModelMixin, ConfigMixin):
    """A dense diffusers autoencoder over an atoken `Tokenizer` (see the module docstring).

    Args:
        tokenizer: the atoken tokenizer (with a decoder); its parameters are this module's.
        components: plugin registries for its adapters (default: the installed plugins).

    Raises:
        InputError: ``tokenizer`` is not a `Tokenizer`, or has no decoder.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    def __init__(self, tokenizer: Tokenizer, *, components: Components | None = None) -> None:
        super().__init__()
        if not isinstance(tokenizer, Tokenizer):
            raise InputError(
                f"AutoencoderAToken wraps an atoken Tokenizer, got {type(tokenizer).__name__};"
                " build one with AutoencoderAToken.from_pretrained(NAME_OR_DIR)"
            )
        if tokenizer.decoder is None:
            raise InputError("AutoencoderAToken needs a tokenizer with a decoder")
        self.tokenizer = tokenizer
        self._components = components
        self._adapters: dict[str, Any] = {}
        self._layouts: dict[tuple[int, ...], PatchTokens] = {}
        cfg = tokenizer.config
        stats = tokenizer.latent_stats
        pt, ph, pw = cfg.patch_size
        self.register_to_config(
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            latent_channels=cfg.latent_channels,
            patch_size=[pt, ph, pw],
            spatial_compression_ratio=ph,
            temporal_compression_ratio=pt,
            quantizer=cfg.quantizer.name,
            discrete=bool(tokenizer.quantizer.discrete),
            preset=cfg.preset,
            model_id=tokenizer.model_id,
            scaling_factor=1.0,
            shift_factor=None if stats is not None else 0.0,
            latents_mean=None if stats is None else list(stats.mean),
            latents_std=None if stats is None else list(stats.std),
            latents_stats_note=None if stats is not None else NO_STATS_NOTE,
            force_upcast=False,
        )

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        components: Components | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> AutoencoderAToken:
        """Wrap the tokenizer of a shipped model name, a model directory or a preset name
        (`atoken.core.model_dir.load_tokenizer`), in eval mode, with its latent statistics.

        Args:
            pretrained_model_name_or_path: ``"atoken-tiny-photo"``, ``RUN/model``, ...
            components: plugin registries (default: the installed plugins).
            torch_dtype: cast the weights to this dtype (default: as stored, float32).
        """
        tok = load_tokenizer(pretrained_model_name_or_path, components=components).eval()
        model = cls(tok, components=components).eval()
        return model.to(torch_dtype) if torch_dtype is not None else model

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write the wrapped tokenizer's atoken model directory (`Tokenizer.save_pretrained`;
        keywords are its ``card`` / ``companions`` / ``provenance``)."""
        self.tokenizer.save_pretrained(save_directory, **kwargs)

    # ------------------------------------------------------------------ layout
    @property
    def patch_size(self) -> tuple[int, int, int]:
        pt, ph, pw = self.tokenizer.config.patch_size
        return int(pt), int(ph), int(pw)

    def _adapter(self, modality: str):
        if modality not in self._adapters:
            from atoken.core.adapter_context import AdapterContext

            comps = self._components or default_components()
            context = AdapterContext.of(self.tokenizer)
            self._adapters[modality] = comps.adapters.build(modality, None, context=context)
        return self._adapters[modality]

    def _check_pixels(self, x: Tensor) -> str:
        """The modality of pixels ``x`` (``"image"`` for 4-D, ``"video"`` for 5-D), checked."""
        if not isinstance(x, Tensor) or x.ndim not in (4, 5) or x.shape[1] != CHANNELS:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"expected pixels [B, 3, H, W] (images) or [B, 3, T, H, W] (videos) in [-1, 1],"
                f" got {got}"
            )
        if not x.is_floating_point():
            raise InputError(f"expected float pixels in [-1, 1], got {x.dtype}")
        pt, ph, pw = self.patch_size
        *_, h, w = x.shape
        sides = [("H", h, ph), ("W", w, pw)] + ([("T", x.shape[2], pt)] if x.ndim == 5 else [])
        bad = [f"{n}={v}" for n, v, m in sides if v % m or v == 0]
        if bad:
            need = f"H, W multiples of {ph}, {pw}" + (f", T of {pt}" if x.ndim == 5 else "")
            raise InputError(
                f"pixels {tuple(x.shape)}: {', '.join(bad)} not divisible by the patch; this"
                f" model needs {need} (crop or resize first)"
            )
        return "image" if x.ndim == 4 else "video"

    def _grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(nt, nh, nw)`` latent grid of pixel dims ``(T, H, W)`` or ``(H, W)``."""
        pt, ph, pw = self.patch_size
        t = shape[-3] // pt if len(shape) == 3 else 1
        return t, shape[-2] // ph, shape[-1] // pw

    def _layout(self, modality: str, dims: tuple[int, ...]) -> PatchTokens:
        """Coords and meta the adapter gives a sample of pixel dims ``dims`` (cached)."""
        key = (len(dims), *dims)
        if key not in self._layouts:
            probe = torch.zeros(*dims, CHANNELS)  # [(T,) H, W, 3]
            tokens = self._adapter(modality).to_tokens(probe)
            self._layouts[key] = tokens.replace(feats=tokens.feats[:, :0])
        return self._layouts[key]

    @staticmethod
    def _flat_index(coords: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """``[n]`` row-major index of coords ``(t, x, y, 0)`` in the ``grid``."""
        c = coords.long()
        _, nh, nw = grid
        return c[:, 0] * nh * nw + c[:, 1] * nw + c[:, 2]

    def _to_dense(self, rows: Tensor, tokens: SparseTokens, grid, video: bool) -> Tensor:
        """Rows ``[N, C]`` laid out like ``tokens`` -> ``[B, C, (nt,) nh, nw]``."""
        b, cells = tokens.batch_size, grid[0] * grid[1] * grid[2]
        index = tokens.batch_index() * cells + self._flat_index(tokens.coords, grid)  # [N]
        if index.numel() != b * cells or torch.unique(index).numel() != b * cells:
            raise InputError(
                f"the adapter's tokens do not cover the {grid} latent grid of every sample;"
                " this model's adapters resize these pixels (give sides the patch divides)"
            )
        out = rows.new_zeros(b * cells, rows.shape[1]).index_copy(0, index, rows)  # [B*cells, C]
        dense = out.reshape(b, *grid, rows.shape[1]).permute(0, 4, 1, 2, 3)  # [B, C, nt, nh, nw]
        return dense if video else dense[:, :, 0]  # [B, C, (nt,) nh, nw]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Pixels ``[B, 3, H, W]`` (or ``[B, 3, T, H, W]``) in [-1, 1] -> the latent posterior.

        Returns:
            `AutoencoderKLOutput` whose ``latent_dist`` is over ``[B, Cz, H/ph, W/pw]`` (or
            ``[B, Cz, T/pt, H/ph, W/pw]``): diagonal Gaussian for a continuous model,
            deterministic (the codes) for a discrete one. ``(latent_dist,)`` without
            ``return_dict``.

        Raises:
            InputError: pixels of another shape, or sides the patch does not divide.
        """
        modality = self._check_pixels(x)
        video = modality == "video"
        adapter = self._adapter(modality)
        # channels last, contiguous: the adapter's finiteness check of a strided view goes
        # slice by slice (seconds per image)
        samples = (x.permute(0, 2, 3, 4, 1) if video else x.permute(0, 2, 3, 1)).contiguous()
        latents = self.tokenizer.encode(
            [adapter.to_tokens(s) for s in samples], sample=False
        )  # samples: [B, (T,) H, W, 3]
        grid = self._grid(tuple(x.shape[2:]))
        if self.tokenizer.quantizer.discrete or latents.mean is None:
            mean = self._to_dense(latents.codes, latents.tokens, grid, video)
            params = torch.cat([mean, torch.zeros_like(mean)], dim=1)  # [B, 2Cz, ...]
            dist = DiagonalGaussianDistribution(params, deterministic=True)
        else:
            mean = self._to_dense(latents.mean, latents.tokens, grid, video)  # [B, Cz, ...]
            logvar = self._to_dense(latents.logvar, latents.tokens, grid, video)
            dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        if not return_dict:
            return (dist,)
        return AutoencoderKLOutput(latent_dist=dist)

    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Raw latents ``[B, Cz, h, w]`` (or ``[B, Cz, t, h, w]``) -> pixels in about [-1, 1].

        Returns:
            `DecoderOutput` with ``sample [B, 3, h*ph, w*pw]`` (or ``[B, 3, t*pt, h*ph, w*pw]``);
            ``(sample,)`` without ``return_dict``.

        Raises:
            InputError: latents of another rank or channel count.
        """
        cz = self.tokenizer.config.latent_channels
        if not isinstance(z, Tensor) or z.ndim not in (4, 5) or z.shape[1] != cz:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise InputError(
                f"expected latents [B, {cz}, h, w] (images) or [B, {cz}, t, h, w] (videos), got {got}"
            )
        if not z.is_floating_point():
            raise InputError(f"expected float latents, got {z.dtype}")
        video = z.ndim == 5
        pt, ph, pw = self.patch_size
        dense = z if video else z[:, :, None]  # [B, Cz, nt, nh, nw]
        grid = tuple(int(s) for s in dense.shape[2:])
        dims = (grid[0] * pt, grid[1] * ph, grid[2] * pw) if video else (grid[1] * ph, grid[2] * pw)
        modality = "video" if video else "image"
        layout = self._layout(modality, dims)
        index = self._flat_index(layout.coords, grid)  # [n]
        cells = dense.reshape(dense.shape[0], cz, -1).transpose(1, 2)  # [B, cells, Cz]
        samples = [layout.replace(feats=cells[b].index_select(0, index)) for b in range(len(cells))]
        decoded = self.tokenizer.decode(collate(samples))
        adapter = self._adapter(modality)
        pixels = [adapter.from_tokens(p) for p in decoded.split()]  # each [(T,) H, W, 3]
        out = torch.stack(pixels)  # [B, (T,) H, W, 3]
        out = out.permute(0, 4, 1, 2, 3) if video else out.permute(0, 3, 1, 2)  # [B, 3, ...]
        if not return_dict:
            return (out,)
        return DecoderOutput(sample=out)

    def forward(
        self,
        sample: Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple:
        """Encode and decode (``sample_posterior``: decode a posterior sample, not the mode)."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator=generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict)

    # ------------------------------------------------------------------ scaling
    def normalize_latents(self, z: Tensor) -> Tensor:
        """``(z - latents_mean) * scaling_factor / latents_std`` per channel of dense latents
        ``[B, Cz, ...]`` (what a generator trains on).

        Raises:
            InputError: the model has no latent statistics (`STATS_HINT`).
        """
        return self.tokenizer.normalize_latents(z, dim=1) * self.config.scaling_factor

    def denormalize_latents(self, z: Tensor) -> Tensor:
        """The inverse of `normalize_latents` (what `decode` takes)."""
        return self.tokenizer.denormalize_latents(z / self.config.scaling_factor, dim=1)
