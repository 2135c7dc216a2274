"""The tokenizer: encoder -> latent projection -> quantizer -> decoder, plus a pooling head.

``encode`` turns packed patch tokens into `Latents` (continuous samples / means or FSQ codes with
indices); ``decode`` turns latents back into patch values; ``embed`` gives one semantic vector per
sample. `build_tokenizer` is the single factory behind every preset; ``save_pretrained`` /
``from_pretrained`` use ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken.core.attention import AttentionBackend, resolve_backend
from atoken.core.config import ConfigError, ModelConfig, TemporalConfig, validate_model_config
from atoken.core.errors import AtokenError, InputError
from atoken.core.plugins import Components, default_components
from atoken.core.presets import PRESETS, get_preset
from atoken.core.quantizer import Quantizer, QuantizerOutput
from atoken.core.registry import UnknownComponentError
from atoken.core.serialization import (
    CheckpointError,
    atomic_write_json,
    check_state_layout,
    load_tensors,
    read_json,
    save_tensors,
)
from atoken.core.tokens import PatchTokens, SparseTokens, all_finite, collate
from atoken.core.transformer import Decoder, Encoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "atoken"
FORMAT_VERSION = 1

TokenInput = SparseTokens | PatchTokens | Sequence[PatchTokens]

#: token budget of one `Tokenizer.decode_stream` step when tiles are independent (no decoder
#: cache): tiles are packed into steps of at most this many tokens (a larger tile runs alone),
#: so a step's patches and pixels stay small; packing does not change the result
STREAM_GROUP_TOKENS = 4096


@dataclass(frozen=True)
class Latents:
    """Encoded batch.

    Attributes:
        tokens: batch layout with ``feats = codes [N, Cz]`` (what the decoder reads).
        indices: ``[N, G]`` int32 code indices for discrete quantizers, else None.
        mean: ``[N, Cz]`` posterior means (None when rebuilt from indices or codes).
        logvar: ``[N, Cz]`` posterior log-variances (None when rebuilt).
        aux_loss: scalar quantizer regulariser (KL or zero).
        metrics: quantizer metrics.
    """

    tokens: SparseTokens
    indices: Tensor | None = None
    mean: Tensor | None = None
    logvar: Tensor | None = None
    aux_loss: Tensor = field(default_factory=lambda: torch.zeros(()))
    metrics: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def codes(self) -> Tensor:
        return self.tokens.feats


@dataclass(frozen=True)
class DecodedRows:
    """One step of `Tokenizer.decode_stream`.

    Attributes:
        rows: ``[n]`` int64 rows of the input batch these values belong to.
        feats: ``[n, 3072]`` decoded patch values.
        coords: ``[n, 4]`` the rows' (t, x, y, z).
        sample: ``[n]`` the rows' sample index in the batch.
    """

    rows: Tensor
    feats: Tensor
    coords: Tensor
    sample: Tensor


@dataclass(frozen=True)
class TokenizerOutput:
    """Everything a training step needs from one forward pass."""

    reconstruction: SparseTokens
    latents: Latents
    dense: SparseTokens
    embedding: Tensor | None


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class Tokenizer(nn.Module):
    """The unified visual tokenizer.

    Build it with `build_tokenizer` (or `from_pretrained`); the constructor takes finished parts.

    Args:
        config: the resolved model config.
        encoder: `Encoder` (with its head at ``encoder.head`` if any).
        decoder: `Decoder` or None.
        quantizer: module satisfying `atoken.core.quantizer.Quantizer`.
        attention_backends: name -> backend, usually the plugin registry's view.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        encoder: Encoder,
        decoder: Decoder | None,
        quantizer: nn.Module,
        attention_backends: Mapping[str, AttentionBackend],
    ) -> None:
        super().__init__()
        if not isinstance(quantizer, Quantizer):
            raise TypeError(
                f"quantizer {type(quantizer).__name__} does not satisfy the Quantizer protocol"
            )
        self.config = config
        self.encoder = encoder
        self.proj = nn.Linear(encoder.width, 2 * config.latent_channels, bias=False)
        self.decoder = decoder
        self.quantizer = quantizer
        self._backends = dict(attention_backends)
        #: the directory `from_pretrained` read (None for a model built in memory)
        self.source_dir: Path | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    @property
    def has_head(self) -> bool:
        return self.encoder.head is not None

    def attention_backend(self, override: AttentionBackend | str | None = None) -> AttentionBackend:
        """The backend for one call: ``override`` if given, else the config's."""
        choice = self.config.attention_backend if override is None else override
        if isinstance(choice, str) and choice != "auto" and choice not in self._backends:
            raise InputError(
                f"no attention backend named {choice!r}; available: {', '.join(sorted(self._backends))}"
            )
        return resolve_backend(choice, self.device, self._backends)

    def temporal(self, override: TemporalConfig | None = None) -> TemporalConfig:
        """The temporal tiling for one call: ``override`` if given, else the config's."""
        if override is None:
            return self.config.temporal
        if not isinstance(override, TemporalConfig):
            raise InputError(
                f"temporal must be a TemporalConfig or None, got {type(override).__name__};"
                " build one with atoken.core.config.TemporalConfig(tile=..., decoder_cache=...)"
            )
        return override

    def prepare(self, inputs: TokenInput) -> SparseTokens:
        """Collate if needed, move to the model's device/dtype, and check the feature width."""
        tokens = inputs if isinstance(inputs, SparseTokens) else collate(inputs)
        width = tokens.feats.shape[1]
        if width != self.config.patch_dim:
            raise InputError(
                f"tokens have {width} features per row, this model expects {self.config.patch_dim}"
                f" (patch {'x'.join(map(str, self.config.patch_size))} x {self.config.channels} channels)"
            )
        dtype = self.proj.weight.dtype
        if tokens.feats.device != self.device or tokens.feats.dtype != dtype:
            tokens = tokens.to(device=self.device, dtype=dtype)
        return tokens

    # ------------------------------------------------------------------ encoding
    def encode_dense(self, inputs: TokenInput, *, backend=None, temporal=None) -> SparseTokens:
        """Post-LayerNorm encoder features, ``feats [N, D]``.

        Args:
            inputs: packed `SparseTokens` or per-sample `PatchTokens`.
            backend: attention backend override for this call.
            temporal: `TemporalConfig` override for this call (None: the model config's).
        """
        tokens = self.prepare(inputs)
        return self.encoder(tokens, self.attention_backend(backend), self.temporal(temporal))

    def project(self, dense: SparseTokens) -> Tensor:
        """``[N, 2*Cz]``: Cz posterior means followed by Cz log-variances."""
        return self.proj(dense.feats)

    def quantize(
        self, dense: SparseTokens, *, sample: bool | None = None, generator=None
    ) -> Latents:
        """Project dense features and run the quantizer."""
        return self._quantize_projected(
            dense, self.project(dense), sample=sample, generator=generator
        )

    def _quantize_projected(
        self, layout: SparseTokens, z: Tensor, *, sample: bool | None, generator
    ) -> Latents:
        """Run the quantizer on projected features ``z [N, 2Cz]`` laid out like ``layout``."""
        dense = layout
        sample = self.training if sample is None else sample
        out: QuantizerOutput = self.quantizer(z, sample=sample, generator=generator)
        mean, logvar = z.chunk(2, dim=-1)
        return Latents(
            tokens=dense.replace(out.codes),
            indices=out.indices,
            mean=mean,
            logvar=logvar,
            aux_loss=out.aux_loss,
            metrics=out.metrics,
        )

    def encode(
        self,
        inputs: TokenInput,
        *,
        sample: bool | None = None,
        generator=None,
        backend=None,
        temporal: TemporalConfig | None = None,
    ) -> Latents:
        """Tokens -> latents.

        Args:
            inputs: packed `SparseTokens` or per-sample `PatchTokens`.
            sample: draw from the posterior (continuous quantizers); default: only in training.
            generator: RNG for the posterior sample.
            backend: attention backend override for this call.
            temporal: temporal tiling override for this call (None: the model config's).
        """
        tiling = self.temporal(temporal)
        if not torch.is_grad_enabled() and tiling.tile is not None:
            # inference: per-token layers per tile step, so a long clip never holds [N, D]
            tokens = self.prepare(inputs)
            enc = self.encoder
            z = enc.stepped(
                tokens,
                self.attention_backend(backend),
                tiling,
                tiling.encoder_cache,
                STREAM_GROUP_TOKENS,
                lambda h: self.proj(enc.post_layernorm(h)),
                2 * self.config.latent_channels,
            )  # [N, 2Cz]
            return self._quantize_projected(tokens, z, sample=sample, generator=generator)
        dense = self.encode_dense(inputs, backend=backend, temporal=tiling)
        return self.quantize(dense, sample=sample, generator=generator)

    def encode_chunks(
        self,
        chunks: Iterable[PatchTokens],
        *,
        backend=None,
        temporal: TemporalConfig | None = None,
    ) -> Latents:
        """Encode ONE long sample handed over as consecutive chunks of its tokens.

        ``chunks`` are the sample's tokens cut along t (e.g. `VideoAdapter.to_token_chunks`:
        frames 0-63, 64-127, ... with their true t), each carrying the whole sample's meta.
        When the encoder's tiles are independent (no ``encoder_cache``) and every chunk starts
        on a tile boundary, the result equals ``encode([whole sample])`` (posterior means, no
        sampling): the position table is sized by each chunk's grid, which is the clip's, and
        tiles never see each other. Only one chunk's tokens and activations exist at a time, so
        memory does not grow with the clip beyond its latents (``[N, Cz]``); a chunk's patch
        values are used as they are (not copied into a batch), and the chunk is dropped before
        the next is read.

        Raises:
            InputError: no chunks, untiled full attention or an encoder cache (chunks would
                change the result), a chunk not starting on a tile boundary, or chunks of
                different modalities.
        """
        tc = self.temporal(temporal)
        if tc.tile is None or tc.encoder_cache:
            raise InputError(
                "encode_chunks needs independent encoder tiles (temporal.tile set and"
                f" encoder_cache = 0), got tile={tc.tile}, encoder_cache={tc.encoder_cache};"
                " encode the whole sample with encode([tokens]) instead"
            )
        codes: list[Tensor] = []
        indices: list[Tensor] = []
        coords: list[Tensor] = []
        first: tuple[str, Mapping[str, Any]] | None = None  # modality and meta of the first chunk
        t0 = 0
        for chunk in chunks:
            if len(chunk) == 0:
                raise InputError("encode_chunks: got a chunk with no tokens")
            start = int(chunk.coords[:, 0].min())
            if first is None:
                first, t0 = (chunk.modality, chunk.meta), start
            elif chunk.modality != first[0]:
                raise InputError(
                    f"encode_chunks: chunk of {chunk.modality!r} after {first[0]!r} chunks"
                )
            if (start - t0) % tc.tile:
                raise InputError(
                    f"encode_chunks: a chunk starts at latent frame {start}, not on a tile"
                    f" boundary ({t0} + k * {tc.tile}); cut chunks at multiples of"
                    f" {tc.tile * self.config.patch_size[0]} frames"
                )
            if not all_finite(chunk.feats):
                raise InputError(f"encode_chunks: the chunk at latent frame {start} has NaN or Inf")
            # the batch layout alone (zero-width features), then the chunk's own patch values:
            # collating would copy them, twice the chunk's memory for a moment
            tokens = collate([chunk.replace(feats=chunk.feats[:, :0])]).replace(chunk.feats)
            del chunk  # only ``tokens`` holds the patches now (freed before the next is read)
            latents = self.encode(tokens, sample=False, backend=backend, temporal=tc)
            del tokens
            codes.append(_compact(latents.codes))  # not a view into the [n, 2Cz] posterior
            coords.append(latents.tokens.coords)
            if latents.indices is not None:
                indices.append(latents.indices)
            del latents
        if first is None:
            raise InputError("encode_chunks: got no chunks")
        all_codes = _concat(codes)  # [N, Cz]
        if not all_finite(all_codes):
            raise InputError("encode_chunks: the encoder produced NaN or Inf latents")
        # layout from zero-width features, then the codes themselves (collating would copy them)
        layout = collate([PatchTokens(all_codes[:, :0], _concat(coords), first[0], first[1])])
        return Latents(
            tokens=layout.replace(all_codes), indices=_concat(indices) if indices else None
        )

    def pool(self, dense: SparseTokens, *, normalize: bool = True, backend=None) -> Tensor:
        """Head embedding ``[B, D]`` from dense encoder features."""
        if self.encoder.head is None:
            raise AtokenError(
                "this model has no understanding head (config.head is None); build it with a head"
                " such as 'attention_pool' to get embeddings"
            )
        pooled = self.encoder.head(dense, backend=self.attention_backend(backend))  # [B, D]
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def embed(
        self, inputs: TokenInput, *, normalize: bool = True, backend=None, temporal=None
    ) -> Tensor:
        """One semantic vector per sample, ``[B, D]`` (L2-normalised unless ``normalize=False``).

        A tiled sample is pooled over all of its tokens after tiled encoding (as the release does).
        """
        dense = self.encode_dense(inputs, backend=backend, temporal=temporal)
        return self.pool(dense, normalize=normalize, backend=backend)

    # ------------------------------------------------------------------ decoding
    def latents_from_indices(self, indices: Tensor, layout: SparseTokens) -> Latents:
        """Rebuild latents from discrete indices ``[N, G]`` on the given batch layout."""
        if not self.quantizer.discrete:
            raise InputError("this model's quantizer is continuous; it has no indices to decode")
        codes = self.quantizer.indices_to_codes(indices.to(self.device))
        return Latents(tokens=layout.replace(codes.to(self.proj.weight.dtype)), indices=indices)

    def decode(
        self,
        latents: Latents | SparseTokens,
        *,
        backend=None,
        temporal: TemporalConfig | None = None,
    ) -> SparseTokens:
        """Latents -> patch values, ``feats [N, 3072]`` in about [-1, 1], same layout.

        Args:
            latents: `Latents` or their packed tokens (``feats [N, Cz]``).
            backend: attention backend override for this call.
            temporal: temporal tiling override for this call (None: the model config's).
        """
        tokens = self._decoder_input(latents)
        tiling = self.temporal(temporal)
        if not torch.is_grad_enabled() and tiling.tile is not None:
            dec = self.decoder
            feats = dec.stepped(
                tokens,
                self.attention_backend(backend),
                tiling,
                tiling.decoder_cache,
                STREAM_GROUP_TOKENS,
                lambda h: dec.out_layer(dec.out_norm(h)),
                self.config.patch_dim,
            )  # [N, 3072]
            return tokens.replace(feats)
        return self.decoder(tokens, self.attention_backend(backend), tiling)

    def _decoder_input(self, latents: Latents | SparseTokens) -> SparseTokens:
        if self.decoder is None:
            raise AtokenError("this model has no decoder (config.decoder is None)")
        tokens = latents.tokens if isinstance(latents, Latents) else latents
        if not isinstance(tokens, SparseTokens):
            raise InputError(f"decode needs Latents or SparseTokens, got {type(latents).__name__}")
        if tokens.feats.shape[1] != self.config.latent_channels:
            raise InputError(
                f"latents have {tokens.feats.shape[1]} channels, this model's decoder expects"
                f" {self.config.latent_channels}"
            )
        return tokens.to(device=self.device, dtype=self.proj.weight.dtype)

    def decode_stream(
        self,
        latents: Latents | SparseTokens,
        *,
        backend=None,
        temporal: TemporalConfig | None = None,
    ) -> Iterator[DecodedRows]:
        """`decode` one temporal tile step at a time, for clips too long to hold decoded.

        Yields the decoded rows of each step of the tiling (`atoken.core.temporal.plan_tiles`
        with the decoder cache; without a cache, independent tiles packed into steps of at most
        ``STREAM_GROUP_TOKENS`` tokens), in the order the steps must run; one step when nothing
        is tiled. The per-token layers (input layer, position embedding, output norm and layer)
        run per step, the position table sized per whole sample as in `decode`, so the rows
        equal `decode`'s rows (up to float rounding) and only one step's activations and
        patch values are alive at a time. Every input row is yielded exactly once.

        Args:
            latents: `Latents` or their packed tokens (``feats [N, Cz]``).
            backend: attention backend override for this call.
            temporal: temporal tiling override for this call (None: the model config's).

        Yields:
            `DecodedRows`: input row indices ``[n]``, patch values ``[n, 3072]``, their coords
            ``[n, 4]`` and sample indices ``[n]``. A step larger than ``STREAM_GROUP_TOKENS``
            rows (one tile of large frames) is yielded in pieces of at most that many rows, in
            the step's row order (the output layers are per token), so the patch values alive
            at once are one piece's, whatever the frame size.
        """
        tokens = self._decoder_input(latents)
        dec, tiling = self.decoder, self.temporal(temporal)
        sample = tokens.batch_index()  # [N]
        att = self.attention_backend(backend)
        steps = dec.steps(tokens, att, tiling, tiling.decoder_cache, STREAM_GROUP_TOKENS)
        for step_rows, step_hidden in steps:
            for i in range(0, step_rows.shape[0], STREAM_GROUP_TOKENS):
                rows = step_rows[i : i + STREAM_GROUP_TOKENS]
                hidden = step_hidden[i : i + STREAM_GROUP_TOKENS]
                yield DecodedRows(
                    rows=rows,
                    feats=dec.out_layer(dec.out_norm(hidden)),  # [n, 3072]
                    coords=tokens.coords.index_select(0, rows),
                    sample=sample.index_select(0, rows),
                )
            del step_rows, step_hidden

    def forward(
        self,
        inputs: TokenInput,
        *,
        sample: bool | None = None,
        generator=None,
        backend=None,
        temporal: TemporalConfig | None = None,
    ):
        """Encode, decode and pool in one pass (what training uses)."""
        dense = self.encode_dense(inputs, backend=backend, temporal=temporal)
        latents = self.quantize(dense, sample=sample, generator=generator)
        recon = self.decode(latents, backend=backend, temporal=temporal)
        emb = self.pool(dense, normalize=False, backend=backend) if self.has_head else None
        return TokenizerOutput(reconstruction=recon, latents=latents, dense=dense, embedding=emb)

    # ------------------------------------------------------------------ identity and files
    @property
    def model_id(self) -> str:
        """A short fingerprint of config and weights; latents files carry it."""
        h = hashlib.sha256(self.config.to_json().encode())
        for t in (self.proj.weight, self.encoder.input_layer.weight[:8]):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        if self.decoder is not None:
            h.update(
                self.decoder.input_layer.weight.detach().to("cpu", torch.float32).numpy().tobytes()
            )
        return h.hexdigest()[:16]

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.state_dict().items()}
        save_tensors(directory / WEIGHTS_NAME, state, metadata={"format": FORMAT})
        atomic_write_json(directory / CONFIG_NAME, config_document(self.config))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        components: Components | None = None,
        map_location="cpu",
    ) -> Tokenizer:
        """Load a directory written by `save_pretrained`, or a shipped trained model by name
        (``"atoken-tiny-photo"``, see `atoken.models`); no pickle is ever read."""
        path = _shipped_or_path(path)
        if not path.is_dir():
            raise CheckpointError(f"model directory {str(path)!r} does not exist")
        config = read_model_config(path)
        # nothing is allocated until the weights file's header fits what config.json declares
        check_weights_header(config, path / WEIGHTS_NAME, components=components)
        model = build_tokenizer(config, components=components, init=False)
        state = load_tensors(path / WEIGHTS_NAME, what="model weights")
        load_state_dict_checked(model, state, source=str(path / WEIGHTS_NAME))
        model.source_dir = path  # plugins may keep companion weights beside the model
        return model.to(map_location)


#: largest ``config.json`` read (a real one is a few KiB)
MAX_CONFIG_BYTES = 1 << 20


def read_model_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The validated `ModelConfig` of a model directory's ``config.json`` (size checked first)."""
    where = Path(directory) / CONFIG_NAME
    try:
        size = where.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"model config {str(where)!r} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"model config {str(where)!r} cannot be read: {exc}") from None
    if not where.is_file():
        raise CheckpointError(f"model config {str(where)!r} is not a regular file")
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"model config {str(where)!r} is {size:,} bytes; a model config.json is a few KiB"
            f" (at most {MAX_CONFIG_BYTES:,} are read). Is it the right file?"
        )
    return config_from_document(read_json(where, what="model config"), where)


class _MetaBuild(torch.overrides.TorchFunctionMode):
    """Keep a model build on the meta device off PyTorch's slow paths (used inside
    ``torch.device("meta")``).

    Meta tensors have no values, so in-place initialisers are skipped on them; some of those
    (``normal_``, ``erfinv_``, ``clamp_``) and ``arange`` have no compiled meta kernel, and their
    Python fallbacks import torch._dynamo (seconds) on first use. ``arange``-like constructors
    (small 1-D tables such as RoPE frequencies, sized by bounded config values) run on the CPU.
    """

    _FILLS = frozenset(
        "normal_ uniform_ erfinv_ clamp_ clamp_min_ clamp_max_ exponential_ bernoulli_ random_"
        " log_normal_ cauchy_ geometric_ fill_ zero_ mul_ add_ sub_ div_ copy_".split()
    )
    _RANGES = (torch.arange, torch.linspace, torch.logspace)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._RANGES and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        elif getattr(func, "__name__", "") in self._FILLS:
            target = args[0] if args else kwargs.get("tensor")  # nn.init.* pass it by keyword
            if isinstance(target, Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def meta_state(
    config: ModelConfig, *, components: Components | None = None
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of the state dict ``config`` builds, from a model on the meta
    device (no memory is allocated for its parameters)."""
    try:
        with torch.device("meta"), _MetaBuild():
            model = build_tokenizer(config, components=components, init=False)
    except (RuntimeError, OverflowError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"the model config cannot be built: {reason}") from None
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_weights_header(
    config: ModelConfig,
    weights: str | os.PathLike[str],
    *,
    components: Components | None = None,
    max_bytes: int | None = None,
) -> None:
    """Check, before anything is allocated, that ``weights`` holds exactly the tensors ``config``
    builds and that their size is within the model budget.

    The model is built on the meta device (`meta_state`) and compared with the safetensors header
    (names, shapes and dtype kinds; no tensor is read).

    Args:
        config: the model's config (from ``config.json``).
        weights: the ``model.safetensors`` file.
        components: plugin registries (default: the installed plugins).
        max_bytes: parameter-byte budget (default `atoken.core.budgets.max_model_bytes`).

    Raises:
        CheckpointError: the weights file is missing or unreadable, the config implies more
            parameter bytes than the budget, or a tensor is missing, unexpected, or of another
            shape or dtype kind than the config implies.
    """
    from safetensors import SafetensorError, safe_open

    from atoken.core import budgets

    weights = Path(weights)
    expected = meta_state(config, components=components)
    total = sum(
        math.prod(shape) * torch.empty((), dtype=dt).element_size()
        for shape, dt in expected.values()
    )
    budget = budgets.max_model_bytes(max_bytes)
    if total > budget:
        count = sum(math.prod(shape) for shape, _ in expected.values())
        raise CheckpointError(
            f"model config {str(weights.parent / CONFIG_NAME)!r} declares {count:,} parameters"
            f" ({budgets.human_bytes(total)}), above the model budget of"
            f" {budgets.human_bytes(budget)}; check its sizes (encoder/decoder width, depth,"
            f" mlp_width), or raise the budget with {budgets.MODEL_BYTES_ENV}=BYTES"
        )
    if not weights.is_file():
        raise CheckpointError(f"model weights {str(weights)!r} does not exist")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = {k: fh.get_slice(k) for k in fh.keys()}
            found = {k: (tuple(p.get_shape()), str(p.get_dtype())) for k, p in header.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"model weights {str(weights)!r} is not a readable safetensors file"
            f" ({' '.join(str(exc).split())}); it may be truncated or of another format"
        ) from None

    class _Shape:  # what check_state_layout reads of a tensor
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape = shape

    check_state_layout(
        {k: _Shape(shape) for k, (shape, _) in expected.items()},
        {k: _Shape(shape) for k, (shape, _) in found.items()},
        header=f"weights in {weights} do not fit the model its config.json declares:",
        shape_label=lambda k, got, want: f"{k}: file {got} vs config {want}",
    )
    wrong = sorted(
        f"{k}: file {found[k][1]} vs model {str(dt).removeprefix('torch.')}"
        for k, (_, dt) in expected.items()
        if dt.is_floating_point != found[k][1].startswith(("F", "BF"))
        or (dt == torch.bool) != (found[k][1] == "BOOL")
    )
    if wrong:
        more = f", ... ({len(wrong)} in all)" if len(wrong) > 20 else ""
        raise CheckpointError(
            f"weights in {weights} have the wrong kind of dtype: {', '.join(wrong[:20])}{more}"
        )


def _compact(x: Tensor) -> Tensor:
    """``x``, copied when it is a view into a larger storage (so that storage can be freed)."""
    if x.untyped_storage().nbytes() > x.numel() * x.element_size():
        return x.clone()
    return x


def _concat(parts: list[Tensor]) -> Tensor:
    """``torch.cat(parts)``, emptying ``parts`` as it copies: the result plus one part at a time
    (not twice the result) are alive."""
    out = parts[0].new_empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]))
    start = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[start : start + part.shape[0]] = part
        start += part.shape[0]
        del part
    return out


def config_document(config: ModelConfig) -> dict[str, Any]:
    from atoken.core.plugins import _atoken_version

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "atoken_version": _atoken_version(),
        "model": config.model_dump(mode="json"),
    }


#: top-level keys of a model config.json (``converted_from``: written by `atoken convert`)
CONFIG_DOCUMENT_KEYS = ("format", "format_version", "atoken_version", "model", "converted_from")


def config_from_document(doc: Any, where: os.PathLike[str] | str) -> ModelConfig:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "model" not in doc:
        raise CheckpointError(f"{where} is not an atoken model config (expected format 'atoken')")
    version = doc.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{where}: format_version: expected an integer, got {version!r}")
    unknown = sorted(str(k) for k in doc if k not in CONFIG_DOCUMENT_KEYS)
    if unknown:
        raise CheckpointError(
            f"{where}: {', '.join(unknown)}: unknown key (a model config.json holds"
            f" {', '.join(CONFIG_DOCUMENT_KEYS)})"
        )
    if not isinstance(doc["model"], dict):
        raise CheckpointError(
            f"{where}: model: expected an object, got {type(doc['model']).__name__}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {doc['format_version']}; this atoken reads up to"
            f" {FORMAT_VERSION}. Upgrade atoken."
        )
    try:
        return validate_model_config(doc["model"], where=str(where))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def load_state_dict_checked(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``state`` strictly; any missing, unexpected or mis-shaped key is listed in the error."""
    check_state_layout(
        model.state_dict(),
        state,
        header=f"weights in {source} do not fit the model:",
        shape_label=lambda k, got, want: f"{k}: file {got} vs model {want}",
    )
    model.load_state_dict(dict(state), strict=True)


def build_tokenizer(
    config: ModelConfig | str,
    *,
    components: Components | None = None,
    init: bool = True,
    **overrides: Any,
) -> Tokenizer:
    """The one factory behind every preset.

    Args:
        config: a `ModelConfig` or a preset name.
        components: plugin registries to resolve quantizer, head and attention names in;
            default: the installed plugins.
        init: apply the seeded initialisation (skip when weights are loaded next).
        **overrides: nested config overrides, e.g. ``quantizer={"name": "fsq"}``.
    """
    if isinstance(config, str):
        config = get_preset(config)
    if overrides:
        config = config.with_overrides(overrides)
    comps = components if components is not None else default_components()
    quantizer = comps.quantizers.build(
        config.quantizer.name, config.quantizer.options, latent_channels=config.latent_channels
    )
    head = None
    if config.head is not None:
        enc = config.encoder
        head = comps.heads.build(
            config.head.name,
            config.head.options,
            width=enc.width,
            num_heads=enc.num_heads,
            mlp_width=enc.mlp_width,
        )
    if config.attention_backend != "auto":
        comps.attention.get(config.attention_backend)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        encoder = Encoder(
            config.patch_dim,
            config.encoder,
            head=head,
            pos_grid=config.pos_grid,
            rope_theta=config.rope_theta,
            use_rope=config.use_rope,
        )
        decoder = (
            Decoder(
                config.latent_channels,
                config.patch_dim,
                config.decoder,
                pos_grid=config.pos_grid,
                rope_theta=config.rope_theta,
                use_rope=config.use_rope,
            )
            if config.decoder is not None
            else None
        )
        model = Tokenizer(
            config,
            encoder=encoder,
            decoder=decoder,
            quantizer=quantizer,
            attention_backends={e.name: e.obj for e in comps.attention.entries()},
        )
        if init:
            model.apply(_init_weights)
            if head is not None and hasattr(head, "reset_parameters"):
                head.reset_parameters()
    return model


def _shipped_or_path(path: str | os.PathLike[str]) -> Path:
    """The directory of a shipped model named ``path`` (a real directory of that name wins),
    checked to hold its weights; any other ``path`` as a `Path`."""
    from atoken.models import SHIPPED_MODELS, shipped_model_dir

    name = str(path)
    if name not in SHIPPED_MODELS or Path(name).is_dir():
        return Path(path)
    found = shipped_model_dir(name)
    if not (found / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"the shipped model {name!r} is missing from this installation (expected"
            f" {found / WEIGHTS_NAME}); reinstall atoken:"
            " pip install -c constraints.txt --force-reinstall atoken"
        )
    return found


def load_tokenizer(
    name_or_path: str | os.PathLike[str], *, components: Components | None = None
) -> Tokenizer:
    """A shipped trained model's name (`atoken.models`), a `save_pretrained` directory, or a
    preset name (a freshly initialised, untrained model: see `is_untrained`)."""
    from atoken.models import SHIPPED_MODELS

    name = str(name_or_path)
    if name in PRESETS:
        return build_tokenizer(name, components=components)
    if name in SHIPPED_MODELS or Path(name).is_dir():
        return Tokenizer.from_pretrained(name, components=components)
    if os.sep in name or name.startswith("."):
        raise CheckpointError(f"model directory {name!r} does not exist")
    names = [*SHIPPED_MODELS, *PRESETS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    raise UnknownComponentError(
        f"no model named {name!r}{hint}\n  trained models: {', '.join(SHIPPED_MODELS)}"
        f"\n  untrained presets: {', '.join(PRESETS)}"
        "\n  or pass a directory written by save_pretrained (e.g. RUN/model of `atoken train`)"
    )


def is_untrained(name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``name_or_path`` names a preset, which `load_tokenizer` builds at random."""
    return str(name_or_path) in PRESETS


def describe(model: Tokenizer) -> dict[str, Any]:
    """Parameter counts and sizes, for CLIs and logs."""
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    return {
        "preset": model.config.preset,
        "encoder_params": count(model.encoder) - count(model.encoder.head),
        "head_params": count(model.encoder.head),
        "decoder_params": count(model.decoder),
        "latent_channels": model.config.latent_channels,
        "quantizer": model.config.quantizer.name,
        "config": json.loads(model.config.to_json()),
    }
