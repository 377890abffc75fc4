"""The real clips of ``shared/media`` (see its README): next to the checkout, else the
workplace's copy. Tests that need them skip, counted, where neither exists."""

from __future__ import annotations

from pathlib import Path

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
if not MEDIA.is_dir():
    MEDIA = Path("/work/shared/media")
