"""Start a tokenizer where a linear (PCA) patch tokenizer already is.

On a CPU budget a transformer autoencoder sees few steps, so its starting point decides the
result. The first and last layers of AToken are patch-linear; this sets them so that, at step 0,
encoder + decoder compute a 48-component PCA of 16×16×3 patches (≈27 dB on held-out photos) and
the transformer blocks (residual branches zeroed) are identities that training turns into a
residual on top.

How the normalisations are kept linear: the encoder writes ``+c`` and ``−c`` of every
(whitened) PCA coefficient into paired channels plus a large constant pair ``±C``, so each token's
channel mean is exactly 0 and its standard deviation is ≈ ``C·sqrt(2/D)`` whatever the patch; the
post-LayerNorm then only rescales, which the projection undoes. The decoder gets the same constant
pair from its position table (its input layer has no bias), so its RMSNorm also only rescales, and
the output layer adds the mean patch through the constant channel. The log-variance half of the
projection reads the constant channel to start at ``logvar_init``.

References: the idea follows TRAINING_NOTES.md (start the patch-linear first/last layers at a good
linear tokenizer); PCA as the optimal linear code (Pearson 1901; Hotelling 1933).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from atoken.core.errors import AtokenError
from atoken.core.tokenizer import Tokenizer


class PCAInitError(AtokenError, ValueError):
    """The model cannot be PCA-initialised (width too small, no patches)."""


def fit_patch_pca(patches: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``patches [M, P]`` -> (mean ``[P]``, components ``[P, k]`` orthonormal, stds ``[k]``)."""
    if patches.shape[0] < k + 1:
        raise PCAInitError(
            f"PCA of {k} components needs more than {k} patches, got {patches.shape[0]}"
        )
    x = patches.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (x.shape[0] - 1)  # [P, P]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    comps = evecs[:, -k:].flip(-1)  # [P, k] largest first
    stds = evals[-k:].flip(-1).clamp_min(1e-12).sqrt()
    return mean.float(), comps.float(), stds.float()


@torch.no_grad()
def pca_init(
    model: Tokenizer,
    patches: Iterable[Tensor],
    *,
    values: int | None = None,
    constant: float = 1000.0,
    logvar_init: float = -8.0,
) -> dict[str, float]:
    """Set ``model``'s first/last layers to a PCA tokenizer fitted on ``patches`` (in place).

    Args:
        model: the tokenizer (any width ≥ 2·latent + 2).
        patches: tensors ``[m, 3072]`` of training patch features (e.g. tokens' ``feats``).
        values: how many leading values of a patch carry data (768 = frame 0 of an image);
            default: all that vary.
        constant: magnitude of the constant channel pair (≫ the coefficients).
        logvar_init: initial posterior log-variance.

    Returns:
        facts about the fit (explained variance ratio, patches used).
    """
    feats = torch.cat([p.detach().float().cpu() for p in patches], 0)  # [M, 3072]
    cz, width = model.config.latent_channels, model.encoder.width
    if model.decoder is None or model.decoder.width != width:
        raise PCAInitError("PCA initialisation needs a decoder of the encoder's width")
    if width < 2 * cz + 2:
        raise PCAInitError(f"PCA initialisation needs width >= {2 * cz + 2}, model has {width}")
    p = values if values is not None else int((feats.std(0) > 0).nonzero().max()) + 1
    mean, comps, stds = fit_patch_pca(feats[:, :p], cz)  # [p], [p, cz], [cz]
    total = float(feats[:, :p].double().var(0).sum())
    dev = model.proj.weight.device
    scale = constant * math.sqrt(2.0 / width)  # std of a token's channels after the input layer
    a, b = slice(0, cz), slice(cz, 2 * cz)
    hi, lo = 2 * cz, 2 * cz + 1

    enc = model.encoder
    w_in = torch.zeros_like(enc.input_layer.weight)  # [D, 3072]
    b_in = torch.zeros_like(enc.input_layer.bias)
    proj_rows = (comps / stds).T  # [cz, p]: whitened coefficients
    w_in[a, :p], w_in[b, :p] = proj_rows, -proj_rows
    b_in[a], b_in[b] = -(proj_rows @ mean), proj_rows @ mean
    b_in[hi], b_in[lo] = constant, -constant
    enc.input_layer.weight.copy_(w_in.to(dev))
    enc.input_layer.bias.copy_(b_in.to(dev))
    enc.pos_embedder.position_embedding.weight.zero_()
    nn.init.ones_(enc.post_layernorm.weight)
    nn.init.zeros_(enc.post_layernorm.bias)
    proj = torch.zeros_like(model.proj.weight)  # [2cz, D]
    proj[:cz, a] = torch.eye(cz) * scale  # mean = whitened coefficient
    proj[cz:, hi] = logvar_init / (constant / scale)  # logvar = logvar_init
    model.proj.weight.copy_(proj.to(dev))

    dec = model.decoder
    w_dec = torch.zeros_like(dec.input_layer.weight)  # [D, cz]
    w_dec[a] = torch.eye(cz)
    w_dec[b] = -torch.eye(cz)
    dec.input_layer.weight.copy_(w_dec.to(dev))
    pos = torch.zeros_like(dec.pos_embedder.position_embedding.weight)  # [G*G, D]
    pos[:, hi], pos[:, lo] = constant, -constant
    dec.pos_embedder.position_embedding.weight.copy_(pos.to(dev))
    nn.init.ones_(dec.out_norm.weight)
    w_out = torch.zeros_like(dec.out_layer.weight)  # [3072, D]
    w_out[:p, a] = (comps * stds) * scale  # coefficient * std * component
    w_out[:p, hi] = mean * scale / constant
    dec.out_layer.weight.copy_(w_out.to(dev))

    for stack in (enc, dec):  # residual branches start at zero: every block is the identity
        for block in stack.blocks:
            for layer in (block.attn.to_out, block.mlp.mlp[2]):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    explained = float((stds.double() ** 2).sum()) / total if total > 0 else 0.0
    return {"patches": feats.shape[0], "values": p, "explained_variance": explained}
