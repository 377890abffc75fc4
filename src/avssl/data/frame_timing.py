"""Video stream timing for the decoders: stream facts, clip frame times and frame timing.

:func:`probe_video` reads a video stream's facts (:class:`VideoInfo`); :class:`ClipSpec` says
which frames make a clip (the times of its frames from a start time). :class:`_Clock` and
:class:`_Frames` time the frames of a forward decode: counted from the keyframe reached by a
seek for constant-rate video (and always for AVI, whose timestamps packed B-frames shuffle),
by their own timestamps once a frame is found off that grid (variable-rate video), and say
which frame is the one shown at a requested time. Used by :mod:`avssl.data.decode`, which
re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import torch

from avssl.data.media_open import MediaError


@dataclass(frozen=True)
class VideoInfo:
    """Basic facts about a video stream (times in seconds)."""

    fps: float
    num_frames: int
    duration: float
    width: int
    height: int


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    return fps if 0.0 < fps < 1000.0 else 25.0


def _start_time(stream: av.stream.Stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe_video(container: av.container.InputContainer) -> VideoInfo | None:
    """Returns the first video stream's facts, or None when there is no video stream."""
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    fps = _stream_fps(stream)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = stream.frames / fps if stream.frames else 0.0
    num_frames = int(stream.frames) or max(1, int(round(duration * fps)))
    ctx = stream.codec_context
    return VideoInfo(fps, num_frames, duration or num_frames / fps, ctx.width, ctx.height)


@dataclass(frozen=True)
class ClipSpec:
    """Which frames make a clip: ``num_frames`` frames, ``frame_stride`` source frames apart
    or resampled at ``target_fps`` (at most one of the two; neither = every frame)."""

    num_frames: int = 8
    frame_stride: int | None = None
    target_fps: float | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.frame_stride is not None and self.target_fps is not None:
            raise ValueError("give frame_stride or target_fps, not both")
        if (self.frame_stride is not None and self.frame_stride < 1) or (
            self.target_fps is not None and self.target_fps <= 0
        ):
            raise ValueError("frame_stride must be >= 1 and target_fps > 0")

    def step_s(self, fps: float) -> float:
        """Seconds between two sampled frames of a video at ``fps``."""
        if self.target_fps is not None:
            return 1.0 / self.target_fps
        return (self.frame_stride or 1) / fps

    def span_s(self, fps: float) -> float:
        """Seconds covered by one clip (first frame start to last frame end)."""
        return (self.num_frames - 1) * self.step_s(fps) + 1.0 / fps

    def frame_times(self, start_s: float, fps: float) -> list[float]:
        step = self.step_s(fps)
        return [start_s + i * step for i in range(self.num_frames)]

    def _last_start_frame(self, duration: float, fps: float) -> int:
        return max(0, int(math.floor((duration - self.span_s(fps)) * fps + 1e-6)))

    def random_starts(self, duration: float, fps: float, k: int, gen: torch.Generator) -> list:
        """``k`` independent random start times on the frame grid, clips inside the video."""
        last = self._last_start_frame(duration, fps)
        return [int(i) / fps for i in torch.randint(0, last + 1, (k,), generator=gen)]

    def uniform_starts(self, duration: float, fps: float, k: int) -> list[float]:
        """``k`` uniformly spaced start times (k=1: the centred clip), on the frame grid."""
        last = self._last_start_frame(duration, fps)
        if k == 1:
            return [round(last / 2) / fps]
        return [round(i * last / (k - 1)) / fps for i in range(k)]


_OFF_GRID = 0.25  # frames: a timestamp further than this from the counted time is off the grid
_AT = 1e-6  # s: a requested time this close after a frame's time is that frame's


class _Clock:
    """How frame times are read from one video stream, for every pass of decoding over it.

    ``stamps``: timestamps are trusted (not AVI; none missing or going back so far).
    ``variable``: a frame was found off the constant-rate grid (its timestamp more than a
    quarter frame from ``anchor + n / fps``): from then on frames are timed by their own
    timestamps and a requested time takes the nearest frame. Until then frames are counted,
    exactly as for constant-rate video.
    """

    def __init__(self, container, stream):
        if stream.time_base is None:
            raise MediaError("video stream without a time base")
        self.time_base = float(stream.time_base)
        self.fps, self.t0 = _stream_fps(stream), _start_time(stream)
        self.tol = 0.5 / self.fps
        self.stamps = "avi" not in container.format.name.split(",")
        self.variable = False


class _Frames:
    """The frames of one forward decode from ``anchor`` (seconds), with their times.

    Iterating gives ``(frame, time)``; :meth:`serves` says whether the current frame is the
    one for a requested time (the earlier frames were not). Constant-rate: time
    ``anchor + n / fps`` (``n`` frames after the first one) and a tolerance of half a frame,
    so reordered or jittered timestamps do not matter. Variable-rate (:class:`_Clock`): the
    frame's timestamp, and the frame is used up to the midpoint with the next frame's
    timestamp. So the next frame is decoded ahead when a requested time lies after the current
    frame (for constant-rate video too, to see a change of rate there): at most one frame more
    per pass.
    """

    def __init__(self, clock: _Clock, frames, anchor: float):
        self.clock, self.frames, self.anchor = clock, frames, anchor
        self.n, self.last_stamp = 0, -math.inf
        self.ahead: tuple | None = None  # the next (frame, time), decoded ahead
        self.ended = False
        self.time = anchor

    def _timed(self, frame: av.VideoFrame) -> float:
        clock = self.clock
        counted = self.anchor + self.n / clock.fps
        self.n += 1
        if not clock.stamps:
            return counted
        if frame.pts is None or frame.pts * clock.time_base - clock.t0 <= self.last_stamp:
            clock.stamps = clock.variable = False  # missing or going back: count (as AVI)
            return counted
        stamp = self.last_stamp = frame.pts * clock.time_base - clock.t0
        if not clock.variable and abs(stamp - counted) > _OFF_GRID / clock.fps:
            clock.variable = True
        return stamp if clock.variable else counted

    def __iter__(self):
        return self

    def __next__(self) -> tuple[av.VideoFrame, float]:
        if self.ahead is not None:
            item, self.ahead = self.ahead, None
        elif self.ended:
            raise StopIteration
        else:
            frame = next(self.frames, None)
            if frame is None:
                self.ended = True
                raise StopIteration
            item = (frame, self._timed(frame))
        self.time = item[1]
        return item

    def _next_time(self) -> float | None:
        if self.ahead is None and not self.ended:
            frame = next(self.frames, None)
            if frame is None:
                self.ended = True
            else:
                self.ahead = (frame, self._timed(frame))
        return None if self.ahead is None else self.ahead[1]

    @property
    def last(self) -> bool:
        """Whether the current frame is known to be the stream's last one."""
        return self.ended and self.ahead is None

    def serves(self, t: float) -> bool:
        """Whether the current frame is the one shown at ``t`` (past the end: the last)."""
        if t <= self.time + _AT:
            return True
        following = self._next_time()
        if following is None:
            return True
        if not self.clock.variable:
            return self.time >= t - self.clock.tol
        return t <= (self.time + following) / 2
