"""The training objective: the KL has one owner (the quantizer), logged once, weighted once."""

from __future__ import annotations

import math

import pytest
import torch

from atoken import UnknownComponentError, collate
from atoken.core.config import ConfigError
from atoken.train.config import LossSpec
from atoken.train.objective import RESERVED_TERMS, ReconstructionObjective
from tests.conftest import crop_to


@pytest.fixture(scope="module")
def forward(tiny, components, photos):
    """One no-grad forward of atoken-tiny on two real photo crops, and its input tokens."""
    adapter = components.adapters.build("image")
    _, rows, cols = tiny.config.patch_size
    h, w = 3 * rows, 4 * cols  # a few patches of the model's own geometry
    tokens = collate(
        [adapter.to_tokens(crop_to(photos[n], h, w)) for n in ("astronaut", "chelsea")]
    )
    with torch.no_grad():
        return tiny(tokens), tokens


def test_the_loss_registry_has_no_second_kl(components) -> None:
    assert "kl" in components.quantizers.names()
    with pytest.raises(UnknownComponentError):
        components.losses.get("kl")


def test_logged_kl_is_the_quantizers_closed_form_weighted_once(forward, components) -> None:
    out, tokens = forward
    lat = out.latents
    assert lat.mean is not None and lat.logvar is not None
    logvar = lat.logvar.double().clamp(-30.0, 20.0)  # the kl quantizer's default clamp
    closed = (0.5 * (lat.mean.double() ** 2 + logvar.exp() - 1 - logvar).sum(-1)).mean()
    assert float(closed) > 0  # an untrained posterior is not N(0, I): the check has teeth

    rec_w, kl_w = 0.2, 0.5
    objective = ReconstructionObjective(
        [LossSpec(name="l1")], components, rec_weight=rec_w, kl_weight=kl_w
    )
    result = objective(out, tokens)
    assert list(result.terms) == ["l1", "kl", "loss"]  # the order logs have always had
    assert result.terms["kl"] == pytest.approx(float(closed), rel=1e-4)
    assert result.terms["kl"] == pytest.approx(float(lat.aux_loss), rel=1e-6)
    expected = kl_w * result.terms["kl"] + rec_w * result.terms["l1"]
    assert math.isclose(result.terms["loss"], expected, rel_tol=1e-5)
    assert math.isclose(float(result.total), expected, rel_tol=1e-5)

    # understanding batches: only the KL and the semantic term
    sem = torch.tensor(1.25)
    und = objective(out, tokens, reconstruct=False, semantic=sem)
    assert list(und.terms) == ["sem", "kl", "loss"]
    assert math.isclose(und.terms["loss"], kl_w * und.terms["kl"] + 1.0 * 1.25, rel_tol=1e-5)


@pytest.mark.parametrize("name", RESERVED_TERMS)
def test_a_loss_named_like_an_objective_term_is_refused(components, name) -> None:
    with pytest.raises(ConfigError, match=rf"\['{name}'\] clash with the objective's own terms"):
        ReconstructionObjective(
            [LossSpec(name="l1"), LossSpec(name=name)], components, rec_weight=1.0, kl_weight=1.0
        )
