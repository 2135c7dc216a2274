"""Understanding with atoken embeddings: the public names, gathered from where they live.

This module is a facade; each concept has its own module:

* `atoken.eval.text_towers`: text towers (`load_text_encoder`, `TextEncoder`,
  `DimensionMismatchError`), prompt embeddings (`encode_texts`, `class_embeddings`,
  `check_templates`) and zero-shot logits (`logit_params`, `zero_shot_logits`).
* `atoken.eval.embedding`: embeddings from the understanding head (`require_head`,
  `sample_tokens`, `iter_embeddings`, `embed_samples`), of files (`FileReader`, `check_files`,
  `iter_file_embeddings`, `embed_files`) and the embeddings file (`write_embeddings`,
  `read_embeddings`).
* `atoken.eval.zeroshot`: zero-shot classification (`parse_labels`, `zero_shot_classify`,
  `image_folder`, `zeroshot_accuracy`).
* `atoken.eval.retrieval`: image<->text retrieval (`read_captions`, `recall_at_k`,
  `retrieval_recall`).

Import from here or from those modules; the names are the same objects.
"""

from __future__ import annotations

from atoken.eval.embedding import (
    EMBEDDINGS_FORMAT,
    EMBEDDINGS_VERSION,
    FileReader,
    check_files,
    embed_files,
    embed_samples,
    iter_embeddings,
    iter_file_embeddings,
    read_embeddings,
    require_head,
    sample_tokens,
    write_embeddings,
)
from atoken.eval.retrieval import read_captions, recall_at_k, retrieval_recall
from atoken.eval.text_towers import (
    RELEASE_LOGIT_BIAS,
    RELEASE_LOGIT_SCALE,
    DimensionMismatchError,
    TextEncoder,
    check_dims,
    check_templates,
    class_embeddings,
    encode_texts,
    load_text_encoder,
    logit_params,
    resolve_device,
    zero_shot_logits,
)
from atoken.eval.zeroshot import (
    DEFAULT_TEMPLATES,
    image_folder,
    parse_labels,
    zero_shot_classify,
    zeroshot_accuracy,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "EMBEDDINGS_FORMAT",
    "EMBEDDINGS_VERSION",
    "RELEASE_LOGIT_BIAS",
    "RELEASE_LOGIT_SCALE",
    "DimensionMismatchError",
    "FileReader",
    "TextEncoder",
    "check_dims",
    "check_files",
    "check_templates",
    "class_embeddings",
    "embed_files",
    "embed_samples",
    "encode_texts",
    "image_folder",
    "iter_embeddings",
    "iter_file_embeddings",
    "load_text_encoder",
    "logit_params",
    "parse_labels",
    "read_captions",
    "read_embeddings",
    "recall_at_k",
    "require_head",
    "resolve_device",
    "retrieval_recall",
    "sample_tokens",
    "write_embeddings",
    "zero_shot_classify",
    "zero_shot_logits",
    "zeroshot_accuracy",
]
