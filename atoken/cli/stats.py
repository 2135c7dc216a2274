"""``atoken stats``: per-channel latent statistics stored in a model's config (issue 14)."""

from __future__ import annotations
