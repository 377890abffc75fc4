"""Video decoding that does only the work needed (DESIGN section 7), and media opening.

Seek to the keyframe before the first needed frame, decode forward, convert to RGB only the
frames that are kept (through one swscale context per thread, :func:`to_rgb`), stop after the
last needed one; several clips share one opened container and one forward pass (a new seek
only when the next needed frame is far ahead). Audio: :mod:`avssl.data.audio_decode`.

The helpers accept a path, bytes or a binary file object of any container PyAV can read, so
``avssl.embed`` uses them on raw files and the shard loader on ``mp4`` members.
Frame times are seconds from the start of the video stream; the frame used for a requested
time ``t`` is the one shown nearest to ``t`` (:class:`_Frames`). Constant-rate video: the first
decoded frame whose time is ``>= t - 0.5 / fps``, counting frames from the keyframe reached by
the seek. Variable-rate video (phone recordings; a frame whose timestamp is off the grid that
counting gives): each frame's own timestamp, the frame nearest to ``t``. AVI timestamps are not
trusted (packed B-frames shuffle them): AVI frames are always counted.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

Source = str | Path | bytes | bytearray | memoryview | BinaryIO


class MediaError(ValueError):
    """A media file that cannot be decoded (corrupt, truncated or without the needed stream)."""


_THREAD = threading.local()  # this thread's (process id, VideoReformatter) (see to_rgb)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """RGB ``[H, W, 3]`` uint8 of a decoded frame, the pixels of
    ``frame.to_ndarray(format="rgb24")``.

    PyAV's ``to_ndarray`` sets up a new swscale context for every frame with automatic
    threading, i.e. a new pool of conversion threads per frame: most of its cost (0.35-0.75 ms
    against 0.06-0.24 ms per 340x256 frame here). This converts on one thread through one
    context per thread and process, kept while the frame size and format stay the same (a
    DataLoader worker forked from a process that converted frames builds its own).

    A frame with a display-matrix rotation (a phone's portrait clip, a raw file given to
    ``avssl.embed``) is turned upright, as the shard writer stores it; shard frames have none.
    """
    pid = os.getpid()
    held = getattr(_THREAD, "reformatter", None)
    if held is None or held[0] != pid:
        held = _THREAD.reformatter = (pid, VideoReformatter())
    rgb = held[1].reformat(frame, format="rgb24", threads=1).to_ndarray()
    turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB ``[H, W, 3]`` uint8 of one JPEG image (a shard's ``fNNN.jpg`` member), decoded by
    FFmpeg's mjpeg decoder on one thread; MediaError when it does not decode or lacks its
    end marker (a truncated image, which the decoder would fill in without complaint)."""
    if bytes(data[-2:]) != b"\xff\xd9" and bytes(data).rstrip(b"\0")[-2:] != b"\xff\xd9":
        raise MediaError("JPEG frame truncated (no end-of-image marker)")
    ctx = av.CodecContext.create("mjpeg", "r")
    ctx.thread_count = 1
    try:
        frames = ctx.decode(av.Packet(bytes(data)))
    except (av.FFmpegError, ValueError) as err:
        raise MediaError(f"JPEG frame does not decode ({err})") from err
    if not frames:
        raise MediaError("JPEG frame does not decode (no image)")
    return to_rgb(frames[0])


def _name(src: Source) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"<{type(src).__name__} media>"


def open_media(src: Source) -> av.container.InputContainer:
    """Opens ``src`` (path, bytes or file object) for reading; clear errors on failure."""
    if isinstance(src, (str, Path)):
        if not Path(src).is_file():
            raise FileNotFoundError(f"media file not found: {src}")
        target: str | BinaryIO = str(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(src))
    else:
        target = src
    try:
        return av.open(target, mode="r")
    except av.error.FFmpegError as err:
        raise MediaError(f"{_name(src)}: cannot open media ({err})") from err


def default_threads() -> int:
    """Codec threads: 1 inside a DataLoader worker (no oversubscription), else 0 (auto)."""
    return 1 if torch.utils.data.get_worker_info() is not None else 0


def _configure_threads(stream: av.stream.Stream, threads: int | None) -> None:
    threads = default_threads() if threads is None else threads
    ctx = stream.codec_context
    ctx.thread_count = threads
    ctx.thread_type = "AUTO" if threads != 1 else "SLICE"


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


def decode_frames_at(
    container: av.container.InputContainer,
    times: list[float],
    threads: int | None = None,
    seek_gap_s: float = 1.0,
) -> list[np.ndarray]:
    """Decodes the frames shown at ``times`` (seconds) as RGB ``[H, W, 3]`` uint8 arrays.

    One forward pass over the union of the requested times, seeking to the keyframe before a
    time only when it is more than ``seek_gap_s`` ahead of the decoder; times past the end get
    the last frame. Raises ``MediaError`` when no frame decodes.
    """
    stream = container.streams.video[0]
    _configure_threads(stream, threads)
    return _FrameSeeker(container, stream, times, seek_gap_s).run()


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


class _FrameSeeker:
    """State of :func:`decode_frames_at`: requested times in increasing order, served by
    passes of (seek, decode forward).

    Frame times (:class:`_Frames`) count frames from the first one decoded after a seek (its
    timestamp, or 0 when decoding from the start), so out-of-order timestamps do not matter for
    constant-rate video; variable-rate video is timed by the frames' own timestamps. AVI
    timestamps are unreliable (packed B-frames shift them), so AVI is decoded from the start
    and counted; so is any file whose seek lands after the requested time.
    """

    def __init__(self, container, stream, times: list[float], seek_gap_s: float, clock=None):
        self.clock = clock or _Clock(container, stream)
        self.container, self.stream, self.times = container, stream, times
        self.time_base, self.fps, self.t0 = self.clock.time_base, self.clock.fps, self.clock.t0
        self.tol, self.seek_gap_s = self.clock.tol, seek_gap_s
        self.order = sorted(range(len(times)), key=times.__getitem__)
        self.out: list = [None] * len(times)
        self.i = 0  # next entry of self.order to serve
        self.last: av.VideoFrame | None = None
        self.can_seek = "avi" not in container.format.name.split(",")

    def run(self) -> list[np.ndarray]:
        while self.i < len(self.order) and not self._pass():
            pass
        if self.i < len(self.order):
            if self.last is None:
                raise MediaError("no video frame could be decoded")
            img = to_rgb(self.last)
            for j in self.order[self.i :]:
                self.out[j] = img
        return self.out

    def _next_time(self) -> float:
        return self.times[self.order[self.i]]

    def _pass(self) -> bool:
        """One seek + forward decode; True when the stream ended or all times were served."""
        target = self._next_time()
        seek_s = max(0.0, target - self.tol) if self.can_seek else 0.0
        offset = int(round((seek_s + self.t0) / self.time_base))
        self.container.seek(offset, stream=self.stream, backward=True)
        decoded = self.container.decode(self.stream)
        first = next(decoded, None)
        if first is None:
            return True
        pts = first.pts
        anchor = pts * self.time_base - self.t0 if seek_s > 0 and pts else 0.0
        if anchor > target + self.tol:  # seek overshot: decode from the start
            self.can_seek = False
            return False
        frames = _Frames(self.clock, itertools.chain([first], decoded), anchor)
        for frame, ft in frames:
            self.last = frame
            if not frames.serves(self._next_time()):
                continue
            img = to_rgb(frame)  # only kept frames are converted
            while True:
                self.out[self.order[self.i]] = img
                self.i += 1
                if self.i == len(self.order):
                    return True
                gap = self._next_time() - ft
                if self.can_seek and gap > max(self.seek_gap_s, self.tol) and not frames.last:
                    return False  # far ahead: seek (before decoding a frame ahead)
                if not frames.serves(self._next_time()):
                    break
        return True


def decode_clips_on_keyframes(
    container: av.container.InputContainer,
    starts: list[float],
    offsets: list[float],
    threads: int | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """Clips that start on the keyframe at or before each of ``starts`` (seconds).

    For every start: one seek to the keyframe at or before it; the clip's frames are the ones
    shown at ``keyframe time + offsets`` (``offsets[0]`` is normally 0, so a one-frame clip is
    the keyframe itself and nothing else is decoded). Shards keep a keyframe at least every
    second, so the starts land on a grid of at least one frame per second, like CAV-MAE's
    frames extracted at 1 fps, without decoding the frames between the keyframe and a random
    start. Where a seek cannot be trusted (AVI, a seek past the start, frames without
    timestamps) the clip starts at the requested time instead (``decode_frames_at``).

    Returns the ``len(starts) * len(offsets)`` RGB frames, clip by clip, and each clip's start.
    """
    stream = container.streams.video[0]
    _configure_threads(stream, threads)
    clock = _Clock(container, stream)  # shared by the clips: a rate change seen stays known
    can_seek = "avi" not in container.format.name.split(",")
    frames: list[np.ndarray] = []
    clip_starts: list[float] = []
    for start in starts:
        got = None
        if can_seek:
            got = _clip_from_keyframe(container, stream, clock, start, offsets)
        if got is None:
            times = [start + o for o in offsets]
            got = _FrameSeeker(container, stream, times, 1.0, clock).run(), start
        frames += got[0]
        clip_starts.append(got[1])
    return frames, clip_starts


def _clip_from_keyframe(container, stream, clock: _Clock, start: float, offsets):
    """(frames, keyframe time) of one :func:`decode_clips_on_keyframes` clip, or None when
    the seek does not land on a frame at or before ``start``."""
    time_base, t0 = clock.time_base, clock.t0
    container.seek(int(round((start + t0) / time_base)), stream=stream, backward=True)
    decoded = container.decode(stream)
    first = next(decoded, None)
    if first is None or first.pts is None:
        return None
    anchor = max(0.0, first.pts * time_base - t0)
    if anchor > start + clock.tol:
        return None
    times = [anchor + o for o in offsets]
    out: list[np.ndarray] = []
    last = first
    frames = _Frames(clock, itertools.chain([first], decoded), anchor)
    for frame, _ in frames:
        last = frame
        if not frames.serves(times[len(out)]):
            continue
        img = to_rgb(frame)  # only kept frames are converted
        while len(out) < len(times) and frames.serves(times[len(out)]):
            out.append(img)
        if len(out) == len(times):
            break
    if len(out) < len(times):  # past the end: the last frame stands in
        out += [to_rgb(last)] * (len(times) - len(out))
    return out, anchor


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, H', W', 3]`` with ``min(H', W') == size``."""
    n, h, w, _ = frames.shape
    scale = size / min(h, w)
    new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = frames.permute(0, 3, 1, 2)  # [N, 3, H, W] channels-last memory: fast uint8 path
    x = torch.nn.functional.interpolate(x, size=new_hw, mode="bilinear", antialias=True)
    return x.permute(0, 2, 3, 1)  # [N, H', W', 3]


def decode_video_clips(
    src: Source,
    starts_s: list[float],
    num_frames: int,
    target_fps: float | None = None,
    frame_stride: int | None = None,
    short_side: int | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Decodes ``len(starts_s)`` clips of ``num_frames`` frames from one opened video.

    Args:
        src: path, bytes or binary file object of any container PyAV reads.
        starts_s: start time (s) of each clip, from the start of the video stream.
        num_frames: T, frames per clip.
        target_fps: sample frames at this rate (resampling by nearest frame), or
        frame_stride: take every ``frame_stride``-th source frame (default 1).
        short_side: if given, resize so the shorter side has this many pixels.
        threads: codec threads (default: 1 in DataLoader workers, auto elsewhere).

    Returns:
        uint8 ``[K, T, H, W, 3]`` RGB frames.
    """
    spec = ClipSpec(num_frames, frame_stride, target_fps)
    with open_media(src) as container:
        info = probe_video(container)
        if info is None:
            raise MediaError(f"{_name(src)}: no video stream")
        times = [t for s in starts_s for t in spec.frame_times(s, info.fps)]
        try:
            frames = decode_frames_at(container, times, threads)
        except av.error.FFmpegError as err:
            raise MediaError(f"{_name(src)}: video decoding failed ({err})") from err
    video = torch.from_numpy(np.stack(frames))  # [K*T, H, W, 3]
    if short_side is not None:
        video = resize_short_side(video, short_side)
    return video.reshape(len(starts_s), num_frames, *video.shape[1:])  # [K, T, H, W, 3]
