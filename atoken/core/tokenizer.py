"""The tokenizer: encoder -> latent projection -> quantizer -> decoder, plus a pooling head.

``encode`` turns packed patch tokens into `Latents` (continuous samples / means or FSQ codes with
indices); ``decode`` turns latents back into patch values; ``embed`` gives one semantic vector per
sample. `build_tokenizer` is the single factory behind every preset; ``save_pretrained`` /
``from_pretrained`` come from the pretrained-directory mixin (`atoken.core.pretrained`:
``config.json`` + ``model.safetensors`` + optional model card and companion folders); the
tokenizer's document format and `load_tokenizer` live in `atoken.core.model_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken.core.attention import AttentionBackend, resolve_backend
from atoken.core.compile import compile_blocks
from atoken.core.config import ModelConfig, TemporalConfig
from atoken.core.errors import AtokenError, InputError
from atoken.core.execution import PRECISIONS, STREAM_GROUP_TOKENS, ExecutionPlan
from atoken.core.latent_stats import (
    STATS_HINT,
    STATS_KEY,
    LatentStats,
    read_latent_stats,
    stats_for,
)
from atoken.core.model_dir import TOKENIZER_FORMAT, _shipped_or_path, model_config_from
from atoken.core.plugins import Components, default_components
from atoken.core.presets import get_preset
from atoken.core.pretrained import PretrainedMixin
from atoken.core.quantizer import Quantizer, QuantizerOutput
from atoken.core.tokens import PatchTokens, SparseTokens, all_finite, collate
from atoken.core.transformer import Decoder, Encoder

TokenInput = SparseTokens | PatchTokens | Sequence[PatchTokens]


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
        normalized: codes and means are ``(z - mean) / std`` by the model's `latent_stats`
            (``encode(..., normalize=True)``); `Tokenizer.decode` undoes it first.
    """

    tokens: SparseTokens
    indices: Tensor | None = None
    mean: Tensor | None = None
    logvar: Tensor | None = None
    aux_loss: Tensor = field(default_factory=lambda: torch.zeros(()))
    metrics: Mapping[str, Tensor] = field(default_factory=dict)
    normalized: bool = False

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


class Tokenizer(PretrainedMixin, nn.Module):
    """The unified visual tokenizer.

    Build it with `build_tokenizer` (or `from_pretrained`); the constructor takes finished parts.
    A loaded tokenizer knows the companion models its directory carries (`companions`, e.g. 3D's
    ``gaussian_decoder``); adapters receive them through their `AdapterContext`, and the
    per-channel statistics of its latents (`latent_stats`, from ``atoken stats``; None when the
    directory has none) that ``encode(..., normalize=True)`` applies.

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
        #: the plan calls without ``plan=`` use, set by `using` (None: resolved per call)
        self._scoped_plan: ExecutionPlan | None = None
        #: per-channel latent statistics (`atoken.core.latent_stats`), or None
        self.latent_stats: LatentStats | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    @property
    def has_head(self) -> bool:
        return self.encoder.head is not None

    def attention_backend(self, override: AttentionBackend | str | None = None) -> AttentionBackend:
        """The backend for one call: ``override`` if given, else the scoped plan's (`using`),
        else the config's."""
        if override is None and self._scoped_plan is not None:
            return self._scoped_plan.backend
        choice = self.config.attention_backend if override is None else override
        if isinstance(choice, str) and choice != "auto" and choice not in self._backends:
            raise InputError(
                f"no attention backend named {choice!r}; available: {', '.join(sorted(self._backends))}"
            )
        return resolve_backend(choice, self.device, self._backends)

    def temporal(self, override: TemporalConfig | None = None) -> TemporalConfig:
        """The temporal tiling for one call: ``override`` if given, else the scoped plan's
        (`using`), else the config's."""
        if override is None:
            return self.config.temporal if self._scoped_plan is None else self._scoped_plan.temporal
        if not isinstance(override, TemporalConfig):
            raise InputError(
                f"temporal must be a TemporalConfig or None, got {type(override).__name__};"
                " build one with atoken.core.config.TemporalConfig(tile=..., decoder_cache=...)"
            )
        return override

    def plan(
        self,
        *,
        backend: AttentionBackend | str | None = None,
        temporal: TemporalConfig | None = None,
        stream: bool = True,
        precision: str | None = None,
    ) -> ExecutionPlan:
        """Resolve the execution plan of a call once: backend, tiling, mode and precision.

        Args:
            backend: attention backend or its name (None: the scoped plan's, else the config's).
            temporal: temporal tiling (None: the scoped plan's, else the config's).
            stream: with tiling, run the per-token layers one tile step at a time (inference,
                bounded memory); False keeps every activation of the batch for a backward pass
                (what `forward`, the training step, uses). Both give the same values up to
                float rounding. Ignored without tiling (one whole pass).
            precision: ``"bf16"`` (bf16 autocast: matrix products in bf16; RoPE, FSQ and norm
                statistics in float32; outputs float32), ``"fp32"``, ``"auto"`` (bf16 on CUDA,
                fp32 elsewhere) or None (the scoped plan's, else the caller's autocast region).

        Raises:
            InputError: an unknown backend name or precision, or a ``temporal`` that is not a
                `TemporalConfig`.
        """
        if precision is None and self._scoped_plan is not None:
            precision = self._scoped_plan.precision
        if precision is not None and precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return ExecutionPlan.resolve(
            self.attention_backend(backend),
            self.temporal(temporal),
            stream=stream,
            precision=precision,
        )

    def compile(self, **options: Any) -> Tokenizer:
        """Compile the transformer blocks with `torch.compile` (regional, dynamic token counts).

        Every encode/decode/embed path, streamed and tiled, runs the compiled blocks; the first
        calls compile (seconds to minutes), later ones of other sizes reuse the graphs. Unlike
        `torch.nn.Module.compile` this does not compile the whole call (whose packing and
        tiling are Python); see `atoken.core.compile.compile_blocks`. Returns the tokenizer.

        Args:
            **options: `compile_blocks` keywords (``dynamic``, ``fullgraph``, ``mode``, ...).
        """
        compile_blocks(self, **options)
        return self

    @contextmanager
    def using(self, plan: ExecutionPlan) -> Iterator[ExecutionPlan]:
        """Within the block, calls that get no ``plan=`` (nor ``backend=``/``temporal=``) run
        ``plan`` (e.g. ``with tok.using(tok.plan(backend="reference")): reconstruct(...)``)."""
        if not isinstance(plan, ExecutionPlan):
            raise InputError(f"using() needs an ExecutionPlan, got {type(plan).__name__}")
        previous, self._scoped_plan = self._scoped_plan, plan
        try:
            yield plan
        finally:
            self._scoped_plan = previous

    def _plan_for(
        self, plan: ExecutionPlan | None, backend, temporal, *, stream: bool
    ) -> ExecutionPlan:
        """The plan of one call: ``plan``; else one built from ``backend=``/``temporal=`` (the
        compatibility keywords); else the scoped plan (`using`); else the config's."""
        if plan is not None:
            if backend is not None or temporal is not None:
                raise InputError(
                    "pass either plan= or backend=/temporal=, not both; build the plan with"
                    " model.plan(backend=..., temporal=...)"
                )
            if not isinstance(plan, ExecutionPlan):
                raise InputError(
                    f"plan must be an ExecutionPlan, got {type(plan).__name__}; build one with"
                    " model.plan(backend=..., temporal=..., stream=...)"
                )
            return plan
        if backend is None and temporal is None and self._scoped_plan is not None:
            return self._scoped_plan
        return self.plan(backend=backend, temporal=temporal, stream=stream)  # scoped fields kept

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
    def encode_dense(
        self, inputs: TokenInput, *, plan: ExecutionPlan | None = None, backend=None, temporal=None
    ) -> SparseTokens:
        """Post-LayerNorm encoder features, ``feats [N, D]``.

        Args:
            inputs: packed `SparseTokens` or per-sample `PatchTokens`.
            plan: the execution plan (`plan`); default: the config's, tiled (not streamed).
            backend: attention backend for this call (builds the plan; not with ``plan``).
            temporal: `TemporalConfig` for this call (builds the plan; not with ``plan``).
        """
        plan = self._plan_for(plan, backend, temporal, stream=False)
        return self.encoder(self.prepare(inputs), plan)

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
        plan: ExecutionPlan | None = None,
        backend=None,
        temporal: TemporalConfig | None = None,
        normalize: bool = False,
    ) -> Latents:
        """Tokens -> latents.

        Args:
            inputs: packed `SparseTokens` or per-sample `PatchTokens`.
            sample: draw from the posterior (continuous quantizers); default: only in training.
            generator: RNG for the posterior sample.
            plan: the execution plan (`plan`); default: the config's, streamed (a long clip
                never holds ``[N, D]``); pass ``model.plan(stream=False)`` to keep activations.
            backend: attention backend for this call (builds the plan; not with ``plan``).
            temporal: temporal tiling for this call (builds the plan; not with ``plan``).
            normalize: return codes and means as ``(z - mean) / std`` per channel by
                `latent_stats` (log-variances shifted by ``-2 log std``; indices unchanged),
                marked ``normalized``; `decode` undoes it. Needs the model's statistics.

        Raises:
            InputError: ``normalize=True`` for a model without `latent_stats`.
        """
        stats = self._require_stats() if normalize else None
        plan = self._plan_for(plan, backend, temporal, stream=True)
        if plan.streamed:  # per-token layers per tile step, projection included
            tokens = self.prepare(inputs)
            enc = self.encoder
            z = enc.run(
                tokens,
                plan,
                plan.temporal.encoder_cache,
                lambda h: self.proj(enc.post_layernorm(h)),
                2 * self.config.latent_channels,
            )  # [N, 2Cz]
            latents = self._quantize_projected(tokens, z, sample=sample, generator=generator)
        else:
            dense = self.encode_dense(inputs, plan=plan)
            latents = self.quantize(dense, sample=sample, generator=generator)
        return latents if stats is None else _normalized(latents, stats)

    def _require_stats(self) -> LatentStats:
        if self.latent_stats is None:
            raise InputError(
                "this model has no latent statistics (latent_stats), so latents cannot be"
                f" normalised; {STATS_HINT}"
            )
        return self.latent_stats

    def normalize_latents(self, z: Tensor, dim: int = -1) -> Tensor:
        """``(z - mean) / std`` per latent channel (axis ``dim``: ``-1`` for rows ``[N, Cz]``,
        ``1`` for dense ``[B, Cz, ...]``) by `latent_stats`."""
        return self._require_stats().normalize(z, dim)

    def denormalize_latents(self, z: Tensor, dim: int = -1) -> Tensor:
        """``z * std + mean`` per latent channel: the inverse of `normalize_latents`."""
        return self._require_stats().denormalize(z, dim)

    def encode_chunks(
        self,
        chunks: Iterable[PatchTokens],
        *,
        plan: ExecutionPlan | None = None,
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
        plan = self._plan_for(plan, backend, temporal, stream=True)
        tc = plan.temporal
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
            latents = self.encode(tokens, sample=False, plan=plan)
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

    def pool(
        self,
        dense: SparseTokens,
        *,
        normalize: bool = True,
        plan: ExecutionPlan | None = None,
        backend=None,
    ) -> Tensor:
        """Head embedding ``[B, D]`` from dense encoder features (the plan's backend)."""
        if self.encoder.head is None:
            raise AtokenError(
                "this model has no understanding head (config.head is None); build it with a head"
                " such as 'attention_pool' to get embeddings"
            )
        plan = self._plan_for(plan, backend, None, stream=False)
        with plan.autocast(self.device):
            pooled = self.encoder.head(dense, backend=plan.backend)  # [B, D]
        pooled = pooled.to(dense.feats.dtype)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def embed(
        self,
        inputs: TokenInput,
        *,
        normalize: bool = True,
        plan: ExecutionPlan | None = None,
        backend=None,
        temporal=None,
    ) -> Tensor:
        """One semantic vector per sample, ``[B, D]`` (L2-normalised unless ``normalize=False``).

        A tiled sample is pooled over all of its tokens after tiled encoding (as the release does).
        ``plan`` (or ``backend=``/``temporal=``) as for `encode_dense`.
        """
        plan = self._plan_for(plan, backend, temporal, stream=False)
        dense = self.encode_dense(inputs, plan=plan)
        return self.pool(dense, normalize=normalize, plan=plan)

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
        plan: ExecutionPlan | None = None,
        backend=None,
        temporal: TemporalConfig | None = None,
        normalized: bool | None = None,
    ) -> SparseTokens:
        """Latents -> patch values, ``feats [N, 3072]`` in about [-1, 1], same layout.

        Args:
            latents: `Latents` or their packed tokens (``feats [N, Cz]``).
            plan: the execution plan (`plan`); default: the config's, streamed (the output
                plus one step in memory); pass ``model.plan(stream=False)`` to keep activations.
            backend: attention backend for this call (builds the plan; not with ``plan``).
            temporal: temporal tiling for this call (builds the plan; not with ``plan``).
            normalized: the codes are normalised by `latent_stats` (``z * std + mean`` is
                applied first); None: as `Latents.normalized` says (False for `SparseTokens`).
        """
        tokens = self._decoder_input(latents)
        if normalized is None:
            normalized = isinstance(latents, Latents) and latents.normalized
        if normalized:
            tokens = tokens.replace(self.denormalize_latents(tokens.feats))
        return self.decoder(tokens, self._plan_for(plan, backend, temporal, stream=True))

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
        plan: ExecutionPlan | None = None,
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
            plan: the execution plan (`plan`; always run streamed); default: the config's.
            backend: attention backend for this call (builds the plan; not with ``plan``).
            temporal: temporal tiling for this call (builds the plan; not with ``plan``).

        Yields:
            `DecodedRows`: input row indices ``[n]``, patch values ``[n, 3072]``, their coords
            ``[n, 4]`` and sample indices ``[n]``. A step larger than ``STREAM_GROUP_TOKENS``
            rows (one tile of large frames) is yielded in pieces of at most that many rows, in
            the step's row order (the output layers are per token), so the patch values alive
            at once are one piece's, whatever the frame size.
        """
        tokens = self._decoder_input(latents)
        dec = self.decoder
        plan = self._plan_for(plan, backend, temporal, stream=True).streaming()
        sample = tokens.batch_index()  # [N]
        steps = dec.steps(tokens, plan, plan.temporal.decoder_cache)
        while True:
            with plan.autocast(self.device):  # entered per step: the caller's code runs outside
                step = next(steps, None)
                if step is None:
                    return
                step_rows, step_hidden = step
                pieces = [
                    (
                        step_rows[i : i + STREAM_GROUP_TOKENS],
                        step_hidden[i : i + STREAM_GROUP_TOKENS],
                    )
                    for i in range(0, step_rows.shape[0], STREAM_GROUP_TOKENS)
                ]
            del step, step_rows, step_hidden
            for rows, hidden in pieces:
                with plan.autocast(self.device):
                    feats = dec.project_out(hidden).to(tokens.feats.dtype)  # [n, 3072]
                yield DecodedRows(
                    rows=rows,
                    feats=feats,
                    coords=tokens.coords.index_select(0, rows),
                    sample=sample.index_select(0, rows),
                )
            del pieces

    def forward(
        self,
        inputs: TokenInput,
        *,
        sample: bool | None = None,
        generator=None,
        plan: ExecutionPlan | None = None,
        backend=None,
        temporal: TemporalConfig | None = None,
    ):
        """Encode, decode and pool in one pass (what training uses).

        ``plan`` defaults to the config's tiled (not streamed) plan, which keeps every
        activation for the backward pass; ``backend=``/``temporal=`` build it instead.
        """
        plan = self._plan_for(plan, backend, temporal, stream=False)
        dense = self.encode_dense(inputs, plan=plan)
        latents = self.quantize(dense, sample=sample, generator=generator)
        recon = self.decode(latents, plan=plan)
        emb = self.pool(dense, normalize=False, plan=plan) if self.has_head else None
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

    # the pretrained-directory hooks (`atoken.core.pretrained.PretrainedMixin`)
    pretrained_format = TOKENIZER_FORMAT

    def pretrained_config(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def pretrained_provenance(self) -> dict[str, Any]:
        from atoken.core.plugins import _atoken_version

        out: dict[str, Any] = {"atoken_version": _atoken_version()}
        stats = stats_for(self, self.latent_stats, "save_pretrained")  # stale ones are dropped
        if stats is not None:
            out[STATS_KEY] = stats.to_json()
        return out

    @classmethod
    def config_from_pretrained(cls, data: Mapping[str, Any], where: str) -> ModelConfig:
        return model_config_from(dict(data), where)

    @classmethod
    def build_pretrained(
        cls, config: ModelConfig, *, components: Components | None = None
    ) -> Tokenizer:
        return build_tokenizer(config, components=components, init=False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        components: Components | None = None,
        map_location="cpu",
    ) -> Tokenizer:
        """Load a directory written by `save_pretrained`, or a shipped trained model by name
        (``"atoken-tiny-photo"``, see `atoken.models`); no pickle is ever read.

        Nothing is allocated until the weights file's header fits what ``config.json``
        declares; the companion folders it carries are in `companions`, and its latent
        statistics (``latent_stats``, dropped with a logged line when they were computed with
        other weights) in `latent_stats`.
        """
        where = _shipped_or_path(path)
        model = super().from_pretrained(where, map_location=map_location, components=components)
        stats = read_latent_stats(where, model.config.latent_channels)
        model.latent_stats = stats_for(model, stats, str(where))
        return model


def _normalized(latents: Latents, stats: LatentStats) -> Latents:
    """``latents`` with codes and means normalised per channel by ``stats``."""
    std = torch.tensor(stats.std, device=latents.codes.device, dtype=latents.codes.dtype)
    return dataclasses.replace(
        latents,
        tokens=latents.tokens.replace(stats.normalize(latents.codes)),
        mean=None if latents.mean is None else stats.normalize(latents.mean),
        logvar=None if latents.logvar is None else latents.logvar - 2 * std.log(),
        normalized=True,
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
