"""The source video's timing, geometry and truncation checks for the shard writer's encoders
(shard format v1, DESIGN section 3; the rules are stated in :mod:`avssl.data.media_encode`).

Frame rate and frame times (:func:`_frame_time`; AVI counted, :func:`counts_frames`), the
stored frame's size and rotation (:func:`_display`, :func:`_upright`), where the header says a
stream ends (:func:`_stream_end`, :func:`tagged_end`, :func:`container_seconds`) and the
truncation checks (:func:`_check_decoded`, :func:`_check_span`). Used by
:mod:`avssl.data.video_encode`, re-exported by :mod:`avssl.data.media_encode`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import av
import numpy as np

from avssl.data.encode_settings import MIN_FRAME_FRACTION, MediaError, output_size


def _stream_rate(stream: Any) -> Fraction | None:
    """FFmpeg's frame-rate guess first, so that timestamp gaps do not lower the rate."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return Fraction(rate).limit_denominator(1001)
    return None


def _frame_time(frame: Any, decoded: int, rate: Fraction, count: bool = False) -> Fraction:
    """The frame's time in seconds: its timestamp, else (no timestamp, or ``count``) its
    decode count at the source ``rate``. AVI counts: its frames come out of the decoder in
    display order but with the timestamps of the packets, which packed B-frames shuffle
    (UCF101's and HMDB51's MPEG-4 AVIs: 1, 2, 4, 3, 5, 7, 6, ...), as in
    :mod:`avssl.data.decode`."""
    if count or frame.pts is None:
        return Fraction(decoded - 1) / rate
    return Fraction(frame.pts) * Fraction(frame.time_base)


def counts_frames(container: Any) -> bool:
    """True for containers whose frame timestamps are not trusted (AVI)."""
    return "avi" in str(container.format.name).split(",")


def _display(stream: Any, frame: Any, short_side: int) -> tuple[tuple[int, int], int]:
    """(size to scale the decoded frame to, quarter turns counter-clockwise after scaling):
    the stored frame is upright (the display matrix's rotation, e.g. a phone's portrait clip)
    and has square pixels (the sample aspect ratio widens or narrows the frame first), its
    short side at most ``short_side``, both sides even."""
    turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90)) % 4
    sar = stream.sample_aspect_ratio if stream is not None else None
    width = frame.width * float(sar) if sar and float(sar) > 0 else frame.width
    width = max(1, int(round(width)))
    if turns % 2:  # shown sideways: scale to the displayed size's transpose
        h, w = output_size(frame.height, width, short_side)
        return (w, h), turns
    return output_size(width, frame.height, short_side), turns


def _upright(img: Any, turns: int, fmt: str) -> Any:
    """``img`` rotated by ``turns`` quarter turns counter-clockwise (``img`` itself for 0)."""
    if not turns:
        return img
    rgb = np.rot90(img.to_ndarray(format="rgb24"), turns)
    out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return out.reformat(format=fmt)


def _check_decoded(kept: int, decoded: int, declared: int) -> None:
    """MediaError when no frame was kept, or far fewer decoded than the header declares."""
    if kept == 0:
        raise MediaError("video stream has no decodable frames")
    if declared > 10 and decoded < MIN_FRAME_FRACTION * declared:
        raise MediaError(f"truncated: decoded {decoded} of {declared} frames")


def _tag_seconds(value: Any) -> float | None:
    """``HH:MM:SS.fraction`` (a Matroska track's ``DURATION`` tag) in seconds, else None."""
    parts = str(value or "").strip().split(":")
    if len(parts) != 3:
        return None
    try:
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        return None
    total = hours * 3600 + minutes * 60 + seconds
    return total if total > 0 and math.isfinite(total) else None


def tagged_end(stream: Any) -> float | None:
    """A WebM / Matroska track's end in seconds from its ``DURATION`` tag (those headers hold
    no per-stream duration; FFmpeg writes the tag as the end time of the track's last packet,
    near the file's start, so a cut file keeps it); None without one."""
    return _tag_seconds((getattr(stream, "metadata", None) or {}).get("DURATION"))


def _stream_end(stream: Any) -> float | None:
    """Where the header says the stream ends, in seconds: its start + duration, else its
    :func:`tagged_end`, else the container's duration (its longest stream: a video
    legitimately shorter than the audio then looks cut); None when unknown."""
    if stream.duration and stream.time_base:
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        return start + float(stream.duration * stream.time_base)
    tagged = tagged_end(stream)
    if tagged is not None:
        return tagged
    container = getattr(stream, "container", None)
    total = container_seconds(container)
    if total is None:
        return None
    offset = getattr(container, "start_time", None)
    return total + (offset / av.time_base if offset else 0.0)


def container_seconds(container: Any) -> float | None:
    """The container's duration in seconds (its longest stream), or None when unknown."""
    total = getattr(container, "duration", None)
    return total / av.time_base if total else None


def _check_span(first: Fraction | None, last: Fraction, declared: int, end: float | None):
    """MediaError when the decoded frames (``first`` frame's time, ``last``: the end of the
    last one, relative to ``first``) stop well before the header's end of the stream: the
    truncation check of files whose header gives no frame count (WebM, Matroska), where
    :func:`_check_decoded` cannot tell. Files with a frame count are checked by that."""
    if declared or end is None or first is None:
        return
    shown, expected = float(last), end - float(first)
    if expected >= 1.0 and shown < MIN_FRAME_FRACTION * expected:
        raise MediaError(f"truncated: frames span {shown:.2f} s of {expected:.2f} s")
