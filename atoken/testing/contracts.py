"""Behaviour every adapter and quantizer must show, as pytest mixins.

References: diffusers' config-plus-mixin model tests; timm's tests parametrized over the registry.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import build_tokenizer
from atoken.core.tokens import collate


class _Contract:
    #: plugin registries to test in; None means the installed plugins. To test a plugin that is
    #: registered in-process rather than installed, set it (class attribute or autouse fixture)
    #: to ``collect_components(pm)`` of a plugin manager holding your plugin.
    components: ClassVar[Components | None] = None

    def comps(self) -> Components:
        return self.components if self.components is not None else default_components()


class AdapterUnderTest(_Contract):
    """The adapter a contract checks and its samples (no tests of its own).

    Set ``adapter_name`` (and ``adapter_options`` if needed). Samples come from the adapter's
    optional ``example(generator)`` capability; override ``make_sample`` if it has none.
    """

    adapter_name: ClassVar[str]
    adapter_options: ClassVar[dict[str, Any]] = {}
    #: preset used for the tokenizer round trip
    model_preset: ClassVar[str] = "atoken-tiny"

    def make_sample(self, generator: torch.Generator) -> Tensor:
        if not self.comps().adapters.get(self.adapter_name).has("example"):
            pytest.skip(
                f"adapter {self.adapter_name!r} declares no example(generator) and the test does"
                " not override make_sample"
            )
        return self.adapter().example(generator)

    def _tensor_target(self, target: Any) -> Tensor:
        if not isinstance(target, Tensor):
            pytest.skip(
                f"adapter {self.adapter_name!r} targets are {type(target).__name__}, not tensors:"
                " this check compares tensors"
            )
        return target

    def adapter(self):
        return self.comps().adapters.build(self.adapter_name, self.adapter_options or None)


class AdapterContract(AdapterUnderTest):
    """Contract of a modality adapter.

    Set ``adapter_name`` (and ``adapter_options`` if needed); see `AdapterUnderTest` for
    samples. Checks that compare tensors skip (with the reason) for adapters whose targets or
    samples are not tensors.
    """

    def test_adapter_satisfies_protocol(self) -> None:
        from atoken.core.modality import ModalityAdapter

        adapter = self.adapter()
        assert isinstance(adapter, ModalityAdapter)
        assert adapter.name == self.adapter_name
        assert all(s.startswith(".") and s == s.lower() for s in adapter.extensions)

    def test_tokens_are_valid(self) -> None:
        adapter = self.adapter()
        sample = self.make_sample(torch.Generator("cpu").manual_seed(0))
        tokens = adapter.to_tokens(sample)
        assert tokens.modality == self.adapter_name
        assert tokens.feats.dtype.is_floating_point and tokens.coords.dtype == torch.int32
        assert torch.isfinite(tokens.feats).all()
        batch = collate([tokens, tokens]).validate()
        assert batch.seqlens == (len(tokens), len(tokens))
        # no two tokens of a sample share a position
        assert torch.unique(tokens.coords, dim=0).shape[0] == len(tokens)

    def test_tokens_are_deterministic(self) -> None:
        adapter = self.adapter()
        a = adapter.to_tokens(self.make_sample(torch.Generator("cpu").manual_seed(0)))
        b = adapter.to_tokens(self.make_sample(torch.Generator("cpu").manual_seed(0)))
        torch.testing.assert_close(a.feats, b.feats, atol=1e-5, rtol=0)
        assert torch.equal(a.coords, b.coords)

    def test_untouched_tokens_give_the_target_back(self) -> None:
        adapter = self.adapter()
        sample = self.make_sample(torch.Generator("cpu").manual_seed(1))
        tokens = adapter.to_tokens(sample)
        target = self._tensor_target(adapter.target(sample, tokens.meta))
        back = adapter.from_tokens(tokens)
        torch.testing.assert_close(back, target, atol=1e-5, rtol=0)

    def test_tokenizer_round_trip_shapes(self) -> None:
        adapter = self.adapter()
        sample = self.make_sample(torch.Generator("cpu").manual_seed(2))
        tokens = adapter.to_tokens(sample)
        model = build_tokenizer(self.model_preset, components=self.comps()).eval()
        with torch.inference_mode():
            decoded = model.decode(model.encode([tokens]))
        target = self._tensor_target(adapter.target(sample, tokens.meta))
        out = adapter.from_tokens(decoded.split()[0])
        assert out.shape == target.shape
        assert torch.isfinite(out).all()

    def test_metrics_prefer_the_right_answer(self) -> None:
        adapter = self.adapter()
        sample = self.make_sample(torch.Generator("cpu").manual_seed(3))
        target = self._tensor_target(adapter.target(sample, adapter.to_tokens(sample).meta))
        noisy = (
            target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(4))
        ).clamp(-1, 1)
        good, bad = adapter.metrics(target, target), adapter.metrics(target, noisy)
        assert good and set(good) == set(bad)
        # quality numbers are higher-is-better unless ``metric_lower_is_better`` names them
        # (distances such as LPIPS); ``metric_info_keys`` names plain facts (counts)
        entry = self.comps().adapters.get(self.adapter_name)
        info = set(adapter.metric_info_keys) if entry.has("metric_info_keys") else set()
        lower = (
            set(adapter.metric_lower_is_better) if entry.has("metric_lower_is_better") else set()
        )
        assert all(good[k] > bad[k] for k in good if k not in info | lower), (good, bad)
        assert all(good[k] < bad[k] for k in lower & set(good)), (good, bad)
        assert all(good[k] == bad[k] for k in info & set(good)), (good, bad)

    def test_save_writes_a_loadable_file(self, tmp_path) -> None:
        adapter = self.adapter()
        sample = self.make_sample(torch.Generator("cpu").manual_seed(5))
        target = self._tensor_target(adapter.target(sample, adapter.to_tokens(sample).meta))
        path = tmp_path / f"out{adapter.output_suffix}"
        adapter.save(target, path)
        assert path.is_file() and path.stat().st_size > 0
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left
        if adapter.output_suffix in adapter.extensions:
            back = adapter.load(path)
            assert back.shape == target.shape
            err = (back - target.clamp(-1, 1)).abs()
            # lossless formats: 8-bit rounding only; lossy ones declare a mean-error budget
            if not self.comps().adapters.get(self.adapter_name).has("save_tolerance"):
                assert err.max() <= 2.5 / 255 * 2
            else:
                assert err.mean() <= adapter.save_tolerance

    def test_rejects_non_finite_input(self) -> None:
        from atoken.core.errors import InputError

        adapter = self.adapter()
        sample = self.make_sample(torch.Generator("cpu").manual_seed(6))
        if not isinstance(sample, Tensor):
            pytest.skip(
                f"adapter {self.adapter_name!r} samples are {type(sample).__name__}, not tensors:"
                " no value to set to NaN"
            )
        sample = sample.clone()
        sample.view(-1)[0] = float("nan")
        with pytest.raises(InputError):
            adapter.to_tokens(sample)


class QuantizerContract(_Contract):
    """Contract of a quantizer; set ``quantizer_name`` (and options / latent width if needed)."""

    quantizer_name: ClassVar[str]
    quantizer_options: ClassVar[dict[str, Any]] = {}
    latent_channels: ClassVar[int] = 48

    def quantizer(self):
        return self.comps().quantizers.build(
            self.quantizer_name,
            self.quantizer_options or None,
            latent_channels=self.latent_channels,
        )

    def _z(self, n: int = 257, scale: float = 1.5) -> Tensor:
        g = torch.Generator("cpu").manual_seed(0)
        return scale * torch.randn(n, 2 * self.latent_channels, generator=g)

    def test_output_record(self) -> None:
        q = self.quantizer()
        out = q(self._z())
        assert out.codes.shape == (257, self.latent_channels)
        assert out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss)
        assert torch.isfinite(out.codes).all()
        if q.discrete:
            assert out.indices is not None and out.indices.dtype == torch.int32
            assert out.indices.shape == (257, q.num_codebooks)
            assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
        else:
            assert out.indices is None

    def test_round_trip(self) -> None:
        q = self.quantizer()
        if not q.discrete:
            pytest.skip(
                f"quantizer {self.quantizer_name!r} is continuous: no indices to round-trip"
                " (test_continuous_codes_follow_the_posterior checks it)"
            )
        out = q(self._z())
        assert torch.equal(q.indices_to_codes(out.indices).to(out.codes.dtype), out.codes)

    def test_continuous_codes_follow_the_posterior(self) -> None:
        """A continuous quantizer's codes without sampling are the posterior mean, and sampling
        draws around it with the posterior's spread (``[N, 2Cz]`` = mean, log-variance)."""
        q = self.quantizer()
        if q.discrete:
            pytest.skip(
                f"quantizer {self.quantizer_name!r} is discrete (test_round_trip checks it)"
            )
        z = self._z(n=4096)
        mean, logvar = z[:, : self.latent_channels], z[:, self.latent_channels :]
        torch.testing.assert_close(q(z, sample=False).codes, mean)
        torch.manual_seed(0)
        noise = (q(z, sample=True).codes - mean) / logvar.clamp(-30, 20).mul(0.5).exp()
        assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05

    def test_deterministic_without_sampling(self) -> None:
        q = self.quantizer()
        a, b = q(self._z(), sample=False), q(self._z(), sample=False)
        assert torch.equal(a.codes, b.codes)

    def test_gradients_reach_the_input(self) -> None:
        q = self.quantizer()
        z = self._z(n=33).requires_grad_(True)
        out = q(z)
        (out.codes.square().sum() + out.aux_loss).backward()
        assert z.grad is not None and torch.isfinite(z.grad).all()
        assert z.grad[:, : self.latent_channels].abs().sum() > 0
