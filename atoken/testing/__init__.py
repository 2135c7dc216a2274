"""Contract test mixins shipped for plugin authors.

Subclass a contract and give it the component under test::

    from atoken.testing import AdapterContract

    class TestMyAdapter(AdapterContract):
        adapter_name = "grayscale"          # registered name
        def make_sample(self, generator):   # a valid sample for this modality
            return torch.rand(40, 56, generator=generator) * 2 - 1

pytest then runs every contract test against it; atoken's own suite parametrizes the same
contracts over everything registered. Each optional capability has its contract too
(`atoken.testing.capabilities`: ``StreamSinkContract``, ``TokenChunksContract``, ...); add the
ones your adapter declares to the class's bases (a test whose capability is not declared skips). `BagOfWordsPlugin` registers a tiny deterministic text
tower (``bag``) for tests of caption objectives.
"""

from atoken.testing.capabilities import (
    CAPABILITY_CONTRACTS,
    AdapterContextContract,
    ExampleContract,
    LabelledComparisonContract,
    MetricConventionContract,
    MetricInfoKeysContract,
    OpenContract,
    OutputSuffixesContract,
    SampleAssetsContract,
    StreamSinkContract,
    TokenChunksContract,
    declaring,
)
from atoken.testing.contracts import AdapterContract, AdapterUnderTest, QuantizerContract
from atoken.testing.kinds import (
    AttentionBackendContract,
    HeadContract,
    ReconstructionLossContract,
    TextEncoderContract,
)
from atoken.testing.text import BagOfWordsPlugin, BagOfWordsText

__all__ = [
    "CAPABILITY_CONTRACTS",
    "AdapterContextContract",
    "AdapterContract",
    "AdapterUnderTest",
    "AttentionBackendContract",
    "BagOfWordsPlugin",
    "BagOfWordsText",
    "ExampleContract",
    "HeadContract",
    "LabelledComparisonContract",
    "MetricConventionContract",
    "MetricInfoKeysContract",
    "OutputSuffixesContract",
    "OpenContract",
    "QuantizerContract",
    "ReconstructionLossContract",
    "SampleAssetsContract",
    "StreamSinkContract",
    "TextEncoderContract",
    "TokenChunksContract",
    "declaring",
]
