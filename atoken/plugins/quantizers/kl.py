"""Continuous latents: a diagonal Gaussian posterior with the LDM VAE's KL regulariser.

References: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models"
(2022), DiagonalGaussianDistribution (clamped log-variance, reparameterised sample, KL).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor, nn

from atoken.core.quantizer import QuantizerOutput


class KLOptions(BaseModel):
    """Options of the ``kl`` quantizer.

    Attributes:
        logvar_min: lower clamp of the log-variance.
        logvar_max: upper clamp of the log-variance.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    logvar_min: float = -30.0
    logvar_max: float = 20.0

    @model_validator(mode="after")
    def _ordered(self) -> KLOptions:
        if self.logvar_min >= self.logvar_max:
            raise ValueError(
                f"logvar_min {self.logvar_min} must be below logvar_max {self.logvar_max}"
            )
        return self


class KLQuantizer(nn.Module):
    """Reparameterised sample (or the mean) of ``N(mean, exp(logvar))``; aux loss is the KL."""

    discrete = False
    codebook_size = 0
    num_codebooks = 0

    def __init__(self, latent_channels: int, options: KLOptions | None = None) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.options = options or KLOptions()

    def forward(self, z: Tensor, *, sample: bool = False, generator=None) -> QuantizerOutput:
        """``z [N, 2C]`` (means, log-variances) -> codes ``[N, C]``."""
        if z.shape[-1] != 2 * self.latent_channels:
            raise ValueError(
                f"kl quantizer expects [N, {2 * self.latent_channels}], got {tuple(z.shape)}"
            )
        mean, logvar = z.chunk(2, dim=-1)  # [N, C] each
        if not sample and not torch.is_grad_enabled():
            # inference: codes are the means (a view); the statistics are reduced in row chunks
            # so that a long clip's latents get no [N, C] temporaries
            kl_sum, std_sum = z.new_zeros((), dtype=torch.float64), 0.0
            for i in range(0, z.shape[0], self.INFERENCE_CHUNK):
                kl_i, std_i = self._stats(
                    mean[i : i + self.INFERENCE_CHUNK], logvar[i : i + self.INFERENCE_CHUNK]
                )
                kl_sum, std_sum = kl_sum + kl_i.sum(), std_sum + float(std_i.sum())
            n = max(1, z.shape[0])
            aux = (kl_sum / n).to(z.dtype)
            std = torch.tensor(std_sum / (n * self.latent_channels), dtype=z.dtype)
            return QuantizerOutput(mean, None, aux, {"kl": aux, "std": std})
        kl, std = self._stats(mean, logvar)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            codes = mean + std * eps  # [N, C]
        else:
            codes = mean
        aux = kl.mean() if kl.numel() else z.new_zeros(())
        return QuantizerOutput(codes, None, aux, {"kl": aux.detach(), "std": std.mean().detach()})

    #: rows per chunk of the inference-time statistics
    INFERENCE_CHUNK = 8192

    def _stats(self, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row KL to N(0, 1) ``[n]`` and the posterior standard deviations ``[n, C]``."""
        logvar = logvar.clamp(self.options.logvar_min, self.options.logvar_max)
        var = logvar.exp()
        kl = 0.5 * (mean.pow(2) + var - 1.0 - logvar).sum(-1)  # [n]
        return kl, var.sqrt()

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        raise NotImplementedError("the kl quantizer is continuous and has no indices")
