"""Start a tokenizer where a linear (PCA) patch tokenizer already is.

On a CPU budget a transformer autoencoder sees few steps, so its starting point decides the
result. The first and last layers of AToken are patch-linear; this sets them so that, at step 0,
encoder + decoder compute a 48-component PCA of 16×16×3 patches (≈27 dB on held-out photos) and
the transformer blocks (residual branches zeroed) are identities that training turns into a
residual on top.

How the normalisations are kept linear: the encoder writes ``+c`` and ``−c`` of every PCA
coefficient into paired channels plus a large constant pair ``±C``, so each token's channel mean
is exactly 0 and its standard deviation is ≈ ``C·sqrt(2/D)`` whatever the patch; the
post-LayerNorm then only rescales. The decoder gets the same constant pair from its position
table (its input layer has no bias), so its RMSNorm also only rescales, and the output layer adds
the mean patch through the constant channel. The log-variance half of the projection reads the
constant channel to start at ``logvar_init``.

How the blocks can learn from there:

* **The stream is isometric.** Coefficients sit in the residual stream in units of the RMS
  coefficient, not whitened: a change of ``d`` in any coefficient channel changes the patch by
  the same amount, so an optimiser step costs every channel alike. The latent (``mean``) is the
  whitened coefficient, as a KL-regularised latent should be.
* **The blocks see the coefficients, not the constant.** Every pre-norm's gain is 0 on the
  constant pair and ``C·sqrt(2/D)`` elsewhere, so attention and MLPs read the coefficients at
  stream scale. With the constant left in (the earlier start), every normalised token was ≈ the
  same vector and the blocks learnt nothing that showed.
* **Patch-linear layers read O(1) inputs.** The norms in front of the projection and the output
  layer scale the coefficients to stream units and the constant to 1, so no weight column moves
  1000× faster than the others under Adam (the mean-patch column did, adding a block pattern).
* **Spare channels carry the next components** (``spare``): the channels the PCA leaves free get
  principal components 49, 50, ... (encoder: readable ± pairs; decoder: output directions),
  zero-weighted at step 0 so the start is still exactly the PCA, and the blocks can add detail
  beyond the 48 in a well-conditioned basis.

References: the idea follows TRAINING_NOTES.md (start the patch-linear first/last layers at a good
linear tokenizer); PCA as the optimal linear code (Pearson 1901; Hotelling 1933).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from atoken.core.errors import AtokenError
from atoken.core.tokenizer import Tokenizer

if TYPE_CHECKING:
    from atoken.core.plugins import Components
    from atoken.train.config import TrainConfig


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
    spare: bool = True,
) -> dict[str, float]:
    """Set ``model``'s first/last layers to a PCA tokenizer fitted on ``patches`` (in place).

    Args:
        model: the tokenizer (any width ≥ 2·latent + 2).
        patches: tensors ``[m, 3072]`` of training patch features (e.g. tokens' ``feats``).
        values: how many leading values of a patch carry data (768 = frame 0 of an image);
            default: all that vary.
        constant: magnitude of the constant channel pair (≫ the coefficients).
        logvar_init: initial posterior log-variance.
        spare: give the channels the PCA leaves free the next principal components (encoder:
            as ± pairs the blocks can read; decoder: as output directions the blocks can write).
            Both stay zero-weighted at step 0, so the start is still exactly the PCA.

    Returns:
        facts about the fit (explained variance ratio, patches used, spare components).
    """
    feats = torch.cat([p.detach().float().cpu() for p in patches], 0)  # [M, 3072]
    cz, width = model.config.latent_channels, model.encoder.width
    if model.decoder is None or model.decoder.width != width:
        raise PCAInitError("PCA initialisation needs a decoder of the encoder's width")
    if width < 2 * cz + 2:
        raise PCAInitError(f"PCA initialisation needs width >= {2 * cz + 2}, model has {width}")
    p = values if values is not None else int((feats.std(0) > 0).nonzero().max()) + 1
    free = width - 2 * cz - 2 if spare else 0  # channels the PCA start leaves unused
    extra = max(0, min(free, p - 1 - cz))
    mean, comps_all, stds_all = fit_patch_pca(feats[:, :p], cz + extra)  # [p], [p, k], [k]
    comps, stds = comps_all[:, :cz], stds_all[:cz]
    total = float(feats[:, :p].double().var(0).sum())
    dev = model.proj.weight.device
    scale = constant * math.sqrt(2.0 / width)  # std of a token's channels after the input layer
    unit = float(stds.square().mean().sqrt())  # one stream unit: the RMS coefficient
    a, b = slice(0, cz), slice(cz, 2 * cz)
    hi, lo = 2 * cz, 2 * cz + 1
    sp = slice(2 * cz + 2, 2 * cz + 2 + extra)  # decoder: spare output directions
    pairs = extra // 2
    sp_pos = slice(2 * cz + 2, 2 * cz + 2 + pairs)  # encoder: spare components as ± pairs
    sp_neg = slice(2 * cz + 2 + pairs, 2 * cz + 2 + 2 * pairs)
    norm_gain = torch.full((width,), scale)  # normalised stream -> stream units ...
    norm_gain[hi] = norm_gain[lo] = scale / constant  # ... and the constant pair -> ±1

    enc = model.encoder
    w_in = torch.zeros_like(enc.input_layer.weight)  # [D, 3072]
    b_in = torch.zeros_like(enc.input_layer.bias)
    rows = comps.T / unit  # [cz, p]: isometric coefficients (stream error = pixel error)
    w_in[a, :p], w_in[b, :p] = rows, -rows
    b_in[a], b_in[b] = -(rows @ mean), rows @ mean
    if pairs:
        more = comps_all[:, cz : cz + pairs].T / unit  # [pairs, p]
        w_in[sp_pos, :p], w_in[sp_neg, :p] = more, -more
        b_in[sp_pos], b_in[sp_neg] = -(more @ mean), more @ mean
    b_in[hi], b_in[lo] = constant, -constant
    enc.input_layer.weight.copy_(w_in.to(dev))
    enc.input_layer.bias.copy_(b_in.to(dev))
    enc.pos_embedder.position_embedding.weight.zero_()
    # Every norm that feeds a patch-linear layer scales the coefficients back to stream units and
    # the constant to 1, so those layers' weights are O(1) and an optimiser step moves each of
    # their columns by a like amount (no column 1000x faster than the others).
    enc.post_layernorm.weight.copy_(norm_gain.to(dev))
    nn.init.zeros_(enc.post_layernorm.bias)
    proj = torch.zeros_like(model.proj.weight)  # [2cz, D]
    proj[:cz, a] = torch.diag(unit / stds)  # mean = whitened coefficient
    proj[cz:, hi] = logvar_init  # logvar = logvar_init
    model.proj.weight.copy_(proj.to(dev))

    dec = model.decoder
    w_dec = torch.zeros_like(dec.input_layer.weight)  # [D, cz]
    w_dec[a] = torch.diag(stds / unit)  # whitened latent -> isometric coefficients
    w_dec[b] = -torch.diag(stds / unit)
    dec.input_layer.weight.copy_(w_dec.to(dev))
    pos = torch.zeros_like(dec.pos_embedder.position_embedding.weight)  # [G*G, D]
    pos[:, hi], pos[:, lo] = constant, -constant
    dec.pos_embedder.position_embedding.weight.copy_(pos.to(dev))
    dec.out_norm.weight.copy_(norm_gain.to(dev))
    w_out = torch.zeros_like(dec.out_layer.weight)  # [3072, D]
    w_out[:p, a] = comps * unit  # coefficient * component
    w_out[:p, sp] = comps_all[:, cz:] * unit  # spare channels: the next components
    w_out[:p, hi] = mean  # the constant channel adds the mean patch
    dec.out_layer.weight.copy_(w_out.to(dev))

    # The blocks read their pre-norms' output; the constant pair would swamp every token (all
    # tokens would look alike), so the norms drop it and scale the rest back to stream units.
    gain = torch.full((width,), scale)
    gain[hi] = gain[lo] = 0.0
    for stack in (enc, dec):  # residual branches start at zero: every block is the identity
        for block in stack.blocks:
            block.norm1.weight.copy_(gain.to(dev))
            block.norm2.weight.copy_(gain.to(dev))
            for layer in (block.attn.to_out, block.mlp.mlp[2]):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    explained = float((stds.double() ** 2).sum()) / total if total > 0 else 0.0
    return {
        "patches": feats.shape[0],
        "values": p,
        "explained_variance": explained,
        "spare_components": extra,
    }


def pca_init_from_config(model: Tokenizer, config: TrainConfig, components: Components) -> dict:
    """`pca_init` fitted on a run's first ``model.pca_images`` training samples of one
    reconstruction task, tokenized by that task's registered adapter at the first stage's
    resolution range for it (`atoken.train.data.build.adapter_options`); the facts gain
    ``images`` (how many samples were read) and ``task``.

    The task is the run's first reconstruction task with ``[[data]]`` sources
    (`atoken.train.data.build.first_reconstruction_task`: in the first stage's mix, in the order
    written, else in the ``[[data]]`` list).

    Raises:
        ConfigError: the config has no data source of a reconstruction task.
    """
    from atoken.core.config import ConfigError
    from atoken.train.config import task_spec
    from atoken.train.data.build import adapter_options, build_source, first_reconstruction_task

    stage = config.stages[0]
    task = first_reconstruction_task(config, components)
    if task is None:
        raise ConfigError(
            "model.init = 'pca' needs a data source of a reconstruction task to fit on; the"
            f" [[data]] tasks are {sorted({s.task for s in config.data})}"
        )
    specs = [s for s in config.data if s.task == task]
    modality = task_spec(task, components).modality
    adapter = components.adapters.build(modality, adapter_options(specs, stage, components))
    feats: list[Tensor] = []
    for spec in specs:
        for _, sample in build_source(spec, adapter, components=components):
            if len(feats) >= config.model.pca_images:
                break
            feats.append(adapter.to_tokens(sample).feats)
    return {**pca_init(model, feats), "images": len(feats), "task": task}
