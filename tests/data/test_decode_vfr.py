"""Variable-frame-rate raw files (the ``avssl.embed`` path on user files; shards are
constant-rate): a requested time takes the frame whose own timestamp is nearest, not the one
that counting frames at the stream's average rate reaches."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avssl.data.decode import (
    decode_clips_on_keyframes,
    decode_frames_at,
    decode_video_clips,
    open_media,
    probe_video,
)

# phone-style: 2 s at 60 fps, then 4 s at 10 fps (average rate 160 / 5.75 s, about 27.8 fps)
TIMES = [i / 60 for i in range(120)] + [2 + i / 10 for i in range(40)]
W, H = 64, 48


def write_vfr(path: Path, fmt: str) -> Path:
    """H.264 with B-frames and a keyframe every 12 frames at the times of ``TIMES``."""
    tb = Fraction(1, 90000)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=60)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = tb
        stream.options = {"g": "12", "bf": "2", "crf": "18"}
        for i, t in enumerate(TIMES):
            img = np.zeros((H, W, 3), np.uint8)
            img[: H // 2] = (i * 37) % 256  # the frame's number, coded in the top half
            img[H // 2 :, : (i * 7) % W] = 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = round(t * 90000), tb
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module", params=["mp4", "matroska"])
def vfr(request, tmp_path_factory) -> tuple[Path, list[float], list[np.ndarray]]:
    """A VFR file and its frames (times from the stream start, RGB) from a full decode."""
    suffix = {"mp4": "mp4", "matroska": "mkv"}[request.param]
    path = write_vfr(tmp_path_factory.mktemp("vfr") / f"vfr.{suffix}", request.param)
    with open_media(path) as c:
        s = c.streams.video[0]
        t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        decoded = [
            (float(f.pts * f.time_base) - t0, f.to_ndarray(format="rgb24")) for f in c.decode(s)
        ]
    times, frames = [t for t, _ in decoded], [x for _, x in decoded]
    assert len(frames) == len(TIMES) and times == pytest.approx(TIMES, abs=1e-3)
    with open_media(path) as c:
        fps = probe_video(c).fps  # MP4: the average, about 27.8; Matroska: 60, the first rate
    assert fps == pytest.approx(len(TIMES) / 5.75, rel=0.01) or fps == pytest.approx(60)
    return path, times, frames


def nearest(times: list[float], t: float) -> int:
    return min(range(len(times)), key=lambda i: abs(times[i] - t))


def frame_numbers(got: list[np.ndarray], frames: list[np.ndarray]) -> list[int]:
    """Which decoded frame each of ``got`` is (-1 if none)."""
    return [next((i for i, f in enumerate(frames) if np.array_equal(f, g)), -1) for g in got]


# times off the midpoints between frames; in the 60 fps part, at the change of rate, in the
# 10 fps part, past the end; unsorted and far apart (seeks), and close together (one pass)
CASES = [
    [1.0, 3.0, 5.0],
    [5.0, 1.0, 3.0],
    [0.5, 0.51, 0.52, 0.53],
    [1.99, 2.004, 2.03, 2.07, 2.12],
    [3.33, 3.38, 4.46, 5.61],
    [0.0, 5.8, 7.5],
]


@pytest.mark.parametrize("times", CASES)
def test_vfr_frames_are_the_nearest_by_timestamp(vfr, times):
    path, stamps, frames = vfr
    with open_media(path) as c:
        got = decode_frames_at(c, times, threads=1)
    assert frame_numbers(got, frames) == [nearest(stamps, t) for t in times]


def test_vfr_clips_resampled_at_a_target_rate(vfr):
    path, stamps, frames = vfr
    starts, fps = [0.45, 1.8, 3.36], 5.0
    clips = decode_video_clips(path, starts, 4, target_fps=fps)
    got = list(clips.reshape(-1, *clips.shape[2:]).numpy())
    want = [nearest(stamps, s + i / fps) for s in starts for i in range(4)]
    assert frame_numbers(got, frames) == want


def test_vfr_clips_on_keyframes(vfr):
    """Each clip starts on the keyframe at or before its start (by timestamp); its frames are
    the ones nearest to that keyframe's time + the offsets."""
    path, stamps, frames = vfr
    with open_media(path) as c:
        s = c.streams.video[0]
        t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        keys = sorted(float(p.pts * p.time_base) - t0 for p in c.demux(s) if p.is_keyframe)
    starts, offsets = [0.9, 2.95, 4.4, 1.5], [0.0, 0.05, 0.3, 0.62]
    with open_media(path) as c:
        got, clip_starts = decode_clips_on_keyframes(c, starts, offsets, 1)
    want_starts = [max(k for k in keys if k <= s + 1e-6) for s in starts]
    assert clip_starts == pytest.approx(want_starts, abs=1e-6)
    want = [nearest(stamps, k + o) for k in want_starts for o in offsets]
    assert frame_numbers(got, frames) == want
