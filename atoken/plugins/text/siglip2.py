"""The SigLIP2 text tower, loaded offline from a local Hugging Face directory.

The directory may hold the full SigLIP2 model (``model_type: siglip2``, the usual release) or
only its text model (``siglip2_text_model``); only the text weights are loaded, plus the
checkpoint's ``logit_scale`` / ``logit_bias`` scalars when present. Texts are tokenized as the
model was trained: padded to ``max_length`` (64 for SigLIP2) and truncated.

References: M. Tschannen et al., "SigLIP 2: Multilingual Vision-Language Encoders with Improved
Semantic Understanding, Localization, and Dense Features" (arXiv 2502.14786); the transformers
``Siglip2Model.get_text_features`` usage (``padding="max_length"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.hf import (
    check_texts,
    device_of,
    hf_class,
    import_transformers,
    model_dir,
    quiet_transformers,
    require_tokenizer_files,
)
from atoken.core.serialization import CheckpointError

MODEL_TYPES = ("siglip2", "siglip2_text_model")


class Siglip2TextOptions(BaseModel):
    """Options of the ``siglip2`` text encoder.

    Attributes:
        path: local directory with config.json, weights and tokenizer (nothing is downloaded).
        max_length: tokens per text; texts are padded and truncated to it (SigLIP2: 64).
        device: where the tower runs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    max_length: PositiveInt = 64
    device: str = "cpu"


def read_logit_params(path: Path) -> tuple[float | None, float | None]:
    """``(logit_scale, logit_bias)`` stored in a safetensors checkpoint, or None where absent.

    ``logit_scale`` is the log of the multiplier, as stored (logits = exp(scale) * cos + bias).
    """
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {k: path / weight_map[k] for k in ("logit_scale", "logit_bias") if k in weight_map}
    elif (path / "model.safetensors").is_file():
        files = {k: path / "model.safetensors" for k in ("logit_scale", "logit_bias")}
    else:
        return None, None
    out: dict[str, float] = {}
    for key, file in files.items():
        with safe_open(str(file), framework="pt") as fh:
            if key in fh.keys():  # safe_open has keys(), no __contains__
                out[key] = float(fh.get_tensor(key).float().reshape(-1)[0])
    return out.get("logit_scale"), out.get("logit_bias")


class Siglip2TextEncoder:
    """SigLIP2 text embeddings (the text head's pooled output), float32, not normalised.

    Attributes:
        dim: embedding width (the text head's output features).
        logit_scale: the checkpoint's log logit scale, or None if it holds none.
        logit_bias: the checkpoint's logit bias, or None.
    """

    def __init__(self, options: Siglip2TextOptions) -> None:
        transformers = import_transformers("siglip2")
        self.options = options
        path, config = model_dir(options.path, "siglip2")
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise CheckpointError(
                f"{str(path)!r} holds a {model_type!r} model, not SigLIP2 (expected model_type"
                f" {' or '.join(MODEL_TYPES)}); for a sentence-transformers directory use the"
                " 'minilm' text encoder with path=DIR"
            )
        require_tokenizer_files(path, "siglip2")
        text_config = config.get("text_config", config) if model_type == "siglip2" else config
        positions = text_config.get("max_position_embeddings", 64)
        if options.max_length > positions:
            raise InputError(
                f"siglip2: max_length {options.max_length} exceeds the text model's"
                f" max_position_embeddings {positions} ({str(path)!r}); pass max_length<={positions}"
            )
        self.device = device_of(options.device)
        auto_tokenizer = hf_class(transformers, "AutoTokenizer", "siglip2")
        text_model = hf_class(transformers, "Siglip2TextModel", "siglip2")
        with quiet_transformers():
            self.tokenizer = auto_tokenizer.from_pretrained(str(path), local_files_only=True)
            model = text_model.from_pretrained(str(path), local_files_only=True)
        self.model = model.float().eval().requires_grad_(False).to(self.device)
        tower = getattr(self.model, "text_model", self.model)  # transformers 4.x nests it
        self.dim = int(tower.head.out_features)
        self.logit_scale, self.logit_bias = (
            read_logit_params(path) if model_type == "siglip2" else (None, None)
        )
        self.name = f"siglip2:{path}"

    def encode(self, texts: list[str]) -> Tensor:
        """``[T, dim]`` pooled text embeddings (float32, on the tower's device)."""
        texts = check_texts(texts, "siglip2")
        batch = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.options.max_length,
            truncation=True,
            return_tensors="pt",
        )
        inputs = {
            k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }
        with torch.inference_mode():
            out = self.model(**inputs)
        return out.pooler_output.float()  # [T, dim]
