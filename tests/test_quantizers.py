"""FSQ and KL quantizers, plus the contract every registered quantizer must pass."""

from __future__ import annotations

import pytest
import torch

import atoken
from atoken import OptionsError
from atoken.plugins.quantizers.fsq import FSQOptions, FSQuantizer
from atoken.plugins.quantizers.kl import KLQuantizer
from atoken.testing import QuantizerContract

QUANTIZERS = atoken.default_components().quantizers.names()


@pytest.mark.parametrize("name", QUANTIZERS)
class TestEveryQuantizer(QuantizerContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.quantizer_name = name


def test_fsq_default_code_set_and_index_range() -> None:
    q = FSQuantizer(48)
    z = 3.0 * torch.randn(4096, 96, generator=torch.Generator().manual_seed(0))
    out = q(z)
    assert set(out.codes.unique().tolist()) == {-1.0, -0.5, 0.0, 0.5}
    assert out.indices.shape == (4096, 8) and q.codebook_size == 4096
    assert int(out.indices.min()) == 0 and int(out.indices.max()) == 4095
    assert torch.equal(q.indices_to_codes(out.indices), out.codes)
    # FSQ reads the posterior means only
    z2 = z.clone()
    z2[:, 48:] = 123.0
    assert torch.equal(q(z2).codes, out.codes)


def test_fsq_index_is_mixed_radix_of_digits() -> None:
    q = FSQuantizer(6, FSQOptions(levels=(4, 4, 4, 4, 4, 4), groups=1))
    codes = torch.tensor([[-1.0, -0.5, 0.0, 0.5, -1.0, 0.5]]).view(1, 1, 6)
    digits = [0, 1, 2, 3, 0, 3]
    expected = sum(d * 4**i for i, d in enumerate(digits))
    assert q.codes_to_indices(codes).item() == expected


def test_fsq_bounds_follow_the_formula() -> None:
    q = FSQuantizer(6, FSQOptions(levels=(4, 4, 4, 4, 4, 4), groups=1))
    z = torch.linspace(-6, 6, 13)[:, None].expand(13, 6)
    half, offset = 3 * 1.001 / 2, 0.5
    expected = torch.tanh(z + torch.atanh(torch.tensor(offset / half))) * half - offset
    torch.testing.assert_close(q.bound(z), expected)
    # L = 4: bounded values lie in (-2.0015, 1.0015), so they round to {-2, -1, 0, 1}
    assert set(q.bound(z).round().unique().tolist()) == {-2.0, -1.0, 0.0, 1.0}


def test_fsq_odd_levels_and_straight_through_gradient() -> None:
    q = FSQuantizer(48, FSQOptions(levels=(5, 3), groups=24))
    z = torch.randn(64, 96, requires_grad=True)
    out = q(z)
    assert set(out.codes[:, 0::2].unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert set(out.codes[:, 1::2].unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(q.indices_to_codes(out.indices), out.codes)
    out.codes.sum().backward()
    assert z.grad[:, :48].abs().min() > 0  # tanh' > 0 everywhere: gradient passes rounding


def test_fsq_options_are_checked(components) -> None:
    with pytest.raises(ValueError, match="must equal latent_channels"):
        FSQuantizer(48, FSQOptions(levels=(4, 4, 4), groups=8))
    with pytest.raises(OptionsError, match="levels"):
        components.quantizers.build("fsq", {"levels": [1, 4]}, latent_channels=48)
    with pytest.raises(OptionsError, match="leveles"):
        components.quantizers.build("fsq", {"leveles": [4]}, latent_channels=48)
    with pytest.raises(ValueError, match=r"\[0, 4096\)"):
        FSQuantizer(48).indices_to_codes(torch.full((1, 8), 4096))


def test_kl_sample_mean_and_divergence() -> None:
    q = KLQuantizer(4)
    mean = torch.tensor([[0.5, -1.0, 0.0, 2.0]])
    logvar = torch.tensor([[0.0, -2.0, 1.0, 0.0]])
    out = q(torch.cat([mean, logvar], -1), sample=False)
    assert torch.equal(out.codes, mean)
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum()
    torch.testing.assert_close(out.aux_loss, expected)
    # zero KL exactly at the prior
    assert q(torch.zeros(3, 8)).aux_loss.item() == 0.0
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = q(torch.cat([mean, logvar], -1), sample=True, generator=g1).codes
    b = q(torch.cat([mean, logvar], -1), sample=True, generator=g2).codes
    assert torch.equal(a, b) and not torch.equal(a, mean)
    big = q(torch.cat([mean.expand(20000, 4), logvar.expand(20000, 4)], -1), sample=True).codes
    torch.testing.assert_close(big.std(0), (0.5 * logvar[0]).exp(), atol=0.03, rtol=0.03)


def test_kl_inference_statistics_equal_the_training_path() -> None:
    q = KLQuantizer(48)
    z = torch.randn(3 * q.INFERENCE_CHUNK + 17, 96, generator=torch.Generator().manual_seed(0))
    z[:, 48:] *= 3  # log-variances over a wide range, some clamped
    with torch.enable_grad():
        ref = q(z.clone().requires_grad_(), sample=False)
    with torch.no_grad():
        out = q(z, sample=False)
    assert out.codes.data_ptr() == z.data_ptr()  # the means themselves, no copy
    torch.testing.assert_close(out.codes, ref.codes.detach())
    torch.testing.assert_close(out.aux_loss, ref.aux_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.metrics["std"], ref.metrics["std"], rtol=1e-5, atol=0)
