"""``atoken weights``: build the local weight files optional metrics need (issue 14)."""

from __future__ import annotations
