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

Media opening, :class:`MediaError` and codec threads live in :mod:`avssl.data.media_open`;
stream facts, :class:`ClipSpec` and frame timing in :mod:`avssl.data.frame_timing`. Both are
re-exported here, so every name stays importable from this module.
"""

from __future__ import annotations

import itertools
import os
import threading

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from avssl.data.frame_timing import _AT as _AT
from avssl.data.frame_timing import _OFF_GRID as _OFF_GRID
from avssl.data.frame_timing import ClipSpec, _Clock, _Frames, probe_video
from avssl.data.frame_timing import VideoInfo as VideoInfo
from avssl.data.frame_timing import _start_time as _start_time
from avssl.data.frame_timing import _stream_fps as _stream_fps
from avssl.data.media_open import MediaError, Source, _configure_threads, _name, open_media
from avssl.data.media_open import default_threads as default_threads

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
