"""Settings, limits and the error of the shard writer's encoders (shard format v1, DESIGN
section 3; the transcoding rules are stated in :mod:`avssl.data.media_encode`).

:class:`EncodeSettings` (what ``manifest.json["prep"]`` records), :func:`check_tune` (x264's
tune values), :func:`output_size` (the stored frame size) and :class:`MediaError` (a file that
cannot be converted), with the truncation and gap limits the video and audio encoders share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Fewer decoded frames than this fraction of the count in the header means a truncated file.
MIN_FRAME_FRACTION = 0.9
# Gaps in the frame timestamps up to this long are filled by repeating the last frame (video)
# or with silence (audio); longer jumps are closed.
MAX_GAP_SECONDS = 2
# Audio timestamps further than this past the end of the samples so far mark a gap.
AUDIO_GAP_SECONDS = 0.02
# libx264's --tune values ("none" = no tune): at most one of the first six (psychovisual
# tunes), which may be joined by a comma with fastdecode and/or zerolatency.
X264_TUNES = (
    "film",
    "animation",
    "grain",
    "stillimage",
    "psnr",
    "ssim",
    "fastdecode",
    "zerolatency",
)


def check_tune(tune: str) -> str:
    """``tune`` normalised ("" for none); ValueError naming the known values otherwise."""
    names = [t.strip() for t in str(tune).split(",") if t.strip()]
    if names in ([], ["none"]):
        return ""
    bad = [t for t in names if t not in X264_TUNES]
    if bad:
        raise ValueError(
            f"unknown x264 tune {bad[0]!r}; use none or one or more (comma-joined) of "
            + ", ".join(X264_TUNES)
        )
    psy = [t for t in names if t in X264_TUNES[:6]]
    if len(psy) > 1:
        raise ValueError(f"x264 takes one of {', '.join(X264_TUNES[:6])} at a time, got {psy}")
    return ",".join(names)


class MediaError(Exception):
    """A media file that cannot be converted; the message is the reason stored in the manifest."""


@dataclass
class EncodeSettings:
    """Transcoding settings recorded in ``manifest.json["prep"]``."""

    short_side: int = 256
    max_fps: float = 30.0
    sample_rate: int = 16000
    crf: int = 23
    preset: str = "veryfast"
    gop_seconds: float = 1.0
    tune: str = "fastdecode"
    audio_codec: str = "flac"
    jpeg_fps: float = 0.0
    threads: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("threads")
        return d


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scales so the short side is at most ``short_side`` (never up); both sides even."""
    scale = min(1.0, short_side / min(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    if scale == 1.0:  # no resize: only drop an odd last row/column
        w, h = max(2, width // 2 * 2), max(2, height // 2 * 2)
    return w, h
