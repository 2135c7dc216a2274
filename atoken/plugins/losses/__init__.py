"""Built-in losses.

Reconstruction (``LossInputs`` in, scalar out): ``l1`` and ``mse`` (masked, averaged over
patches), ``lpips`` and ``gram`` (perceptual, on 224² resizes by default). The KL regulariser is
not a loss: the ``kl`` quantizer owns it (its ``aux_loss``, weighted by ``kl_weight``). Semantic: ``semantic_distill`` (images) and
``siglip_sigmoid`` (video, 3D), which take embeddings. Perceptual losses import their network
only when built.
"""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.losses.distill import SemanticDistillLoss, SemanticDistillOptions
from atoken.plugins.losses.options import GramOptions, PerceptualOptions
from atoken.plugins.losses.reconstruction import L1Loss, L1Options, MSELoss
from atoken.plugins.losses.sigmoid import SigLIPSigmoidLoss, SigLIPSigmoidOptions


def _lpips(options: PerceptualOptions):
    from atoken.plugins.losses.perceptual import LPIPSLoss

    return LPIPSLoss(options)


def _gram(options: GramOptions):
    from atoken.plugins.losses.perceptual import GramLoss

    return GramLoss(options)


@hookimpl
def atoken_register_losses(registry) -> None:
    registry.add("l1", L1Loss, options=L1Options, description="L1 per patch, averaged over patches")
    registry.add("mse", MSELoss, options=L1Options, description="squared error per patch, averaged")
    registry.add(
        "lpips",
        _lpips,
        options=PerceptualOptions,
        description="LPIPS (VGG/AlexNet) on 224² resizes (or native size, windows)",
    )
    registry.add(
        "gram",
        _gram,
        options=GramOptions,
        description="VGG Gram-matrix distance (C·H·W-normalised)",
    )
    registry.add(
        "semantic_distill",
        SemanticDistillLoss,
        options=SemanticDistillOptions,
        description="KL(teacher || student) of image-to-text similarity distributions (T=2)",
    )
    registry.add(
        "siglip_sigmoid",
        SigLIPSigmoidLoss,
        options=SigLIPSigmoidOptions,
        description="SigLIP pairwise sigmoid loss, learnable scale (log 10) and bias (-10)",
    )
