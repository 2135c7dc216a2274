"""Every registered adapter passes the adapter contract (no new test code per plugin).

The whole contract runs for adapters that declare ``example(generator)`` (image, video,
third-party pixel modalities). An adapter with structured samples (e.g. atoken-plugin-3d's
``mesh3d``: assets in, Gaussians out) is held here to the protocol and to the contracts of the
capabilities it declares; its distribution runs the adapter contract with its own samples.
Each capability contract is parametrized over every registered adapter that declares it.
"""

from __future__ import annotations

import pytest
import torch

import atoken
from atoken import InputError
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.testing import AdapterContextContract, AdapterContract
from atoken.testing.capabilities import CAPABILITY_CONTRACTS, declaring
from atoken.testing.kinds import (
    AttentionBackendContract,
    HeadContract,
    ReconstructionLossContract,
    TextEncoderContract,
)

_COMPS = atoken.default_components()
ADAPTERS = _COMPS.adapters.names()
TENSOR_ADAPTERS = declaring(_COMPS, "example")
#: (capability, adapter) for every registered adapter that declares a contracted capability
DECLARED = [(c, n) for c in CAPABILITY_CONTRACTS for n in declaring(_COMPS, c)]


def test_builtin_adapters_are_held_to_the_whole_contract() -> None:
    assert {"image", "video"} <= set(TENSOR_ADAPTERS)


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_satisfies_the_protocol(name) -> None:
    adapter = _COMPS.adapters.build(name)
    assert isinstance(adapter, atoken.ModalityAdapter) and adapter.name == name
    assert all(s.startswith(".") and s == s.lower() for s in adapter.extensions)


@pytest.mark.parametrize("name", TENSOR_ADAPTERS)
class TestEveryAdapter(AdapterContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.adapter_name = name


@pytest.mark.parametrize("name", TENSOR_ADAPTERS)
class TestEveryAdapterServesItsModelsGeometry(AdapterContextContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.adapter_name = name


def test_the_builtins_exercise_the_capability_contracts() -> None:
    # the built-ins exercise these; sample_assets comes from atoken-plugin-3d
    assert {c for c, _ in DECLARED} >= {
        "example",
        "to_token_chunks",
        "open",
        "stream_sink",
        "metric_convention",
        "metric_info_keys",
    }


def _capability_class(capability: str) -> type:
    base = CAPABILITY_CONTRACTS[capability]

    @pytest.mark.parametrize("name", declaring(_COMPS, capability))
    class Test(base):
        @pytest.fixture(autouse=True)
        def _name(self, name):
            self.adapter_name = name

    Test.__name__ = Test.__qualname__ = f"Test{base.__name__}"
    return Test


for _cap in CAPABILITY_CONTRACTS:
    globals()[f"Test{CAPABILITY_CONTRACTS[_cap].__name__}"] = _capability_class(_cap)


def test_a_capability_contract_skips_an_adapter_that_does_not_declare_it() -> None:
    contract = CAPABILITY_CONTRACTS["stream_sink"]()
    contract.adapter_name = "image"
    with pytest.raises(pytest.skip.Exception, match="does not declare 'stream_sink'"):
        contract.capable_adapter("stream_sink")


def test_image_tokens_layout_on_a_real_photo(photos) -> None:
    img = photos["chelsea"]  # 300 x 451
    tokens = ImageAdapter().to_tokens(img)
    assert tokens.meta["crop"] == [6, 1, 288, 448] and tokens.meta["resize"] is None
    assert len(tokens) == 18 * 28 and tokens.feats.shape == (504, 3072)
    # frame 0 holds the pixels, frames 1..3 are zero padding
    assert tokens.feats[:, 768:].abs().max() == 0
    # token (x=2, y=5) is the patch at rows 32..48, cols 80..96 of the crop
    row = int(((tokens.coords[:, 1] == 2) & (tokens.coords[:, 2] == 5)).nonzero())
    patch = img[6 + 32 : 6 + 48, 1 + 80 : 1 + 96].reshape(-1)
    assert torch.equal(tokens.feats[row, :768], patch)
    assert tokens.coords[:, 0].eq(0).all() and tokens.coords[:, 3].eq(0).all()


def test_image_crop_is_random_in_training_and_resize_is_recorded(photos) -> None:
    img = photos["coffee"]  # 400 x 600
    seen = {
        tuple(
            ImageAdapter()
            .to_tokens(img, train=True, generator=torch.Generator().manual_seed(s))
            .meta["crop"]
        )
        for s in range(8)
    }
    assert len(seen) > 1 and all(c[2:] == (400, 592) for c in seen)
    small = ImageAdapter(ImageOptions(max_res=256)).to_tokens(img)
    assert small.meta["resize"] == [171, 256] and small.meta["crop"] == [5, 0, 160, 256]
    big = ImageAdapter(ImageOptions(min_res=64)).to_tokens(img[:40, :50])
    assert big.meta["resize"] == [64, 80]


def test_image_rejects_bad_samples() -> None:
    adapter = ImageAdapter()
    with pytest.raises(InputError, match="12x40 pixels; atoken needs at least 16x16"):
        adapter.to_tokens(torch.zeros(12, 40, 3))
    with pytest.raises(InputError, match=r"\[H, W, 3\]"):
        adapter.to_tokens(torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match="float"):
        adapter.to_tokens(torch.zeros(32, 32, 3, dtype=torch.uint8))


@pytest.mark.parametrize("name", _COMPS.attention.names())
class TestEveryAttentionBackend(AttentionBackendContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.backend_name = name


@pytest.mark.parametrize("name", _COMPS.heads.names())
class TestEveryHead(HeadContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.head_name = name


_PERCEPTUAL = ("lpips", "gram")  # a VGG network per test: seconds on a CPU


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in _PERCEPTUAL else n
        for n in _COMPS.losses.names()
    ],
)
class TestEveryReconstructionLoss(ReconstructionLossContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.loss_name = name


@pytest.mark.parametrize("name", _COMPS.text_encoders.names())
class TestEveryTextEncoder(TextEncoderContract):
    @pytest.fixture(autouse=True)
    def _name(self, name):
        self.text_encoder_name = name


class TestBagOfWordsText(TextEncoderContract):
    """The shipped test tower, registered in process, passes the contract it stands in for."""

    text_encoder_name = "bag"

    @pytest.fixture(autouse=True)
    def _components(self, register_plugin):
        from atoken.testing import BagOfWordsPlugin

        self.components = register_plugin(BagOfWordsPlugin(), name="test-text")
