"""The shard writer's video encoders (shard format v1, DESIGN section 3; the rules are stated
in :mod:`avssl.data.media_encode`).

``_VideoEncoder`` streams decoded frames into the constant-frame-rate H.264 MP4 of a sample;
:class:`JpegFrames` keeps JPEG frames at a low fps instead (:func:`encode_jpeg`). Both time,
scale and check the frames with :mod:`avssl.data.video_timing`.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from avssl.data.encode_settings import MAX_GAP_SECONDS, EncodeSettings, check_tune
from avssl.data.video_timing import (
    _check_decoded,
    _check_span,
    _display,
    _frame_time,
    _stream_end,
    _stream_rate,
    _upright,
)


class _VideoEncoder:
    """Streams decoded frames into a constant-frame-rate H.264 MP4 in memory."""

    def __init__(self, stream: Any, settings: EncodeSettings, count: bool = False) -> None:
        self.settings = settings
        self.stream, self.count = stream, count
        self.src = _stream_rate(stream) or Fraction(25)
        cap = Fraction(settings.max_fps).limit_denominator(1001)
        self.rate = min(self.src, cap)
        self.declared = int(stream.frames or 0)
        self.end = _stream_end(stream)
        self.t_last = Fraction(0)
        self.decoded = 0
        self.emitted = 0
        self.t0: Fraction | None = None
        self.buf = io.BytesIO()
        self.out: Any = None
        self.ostream: Any = None
        self.last: Any = None
        # one single-threaded swscale context for the whole clip (frame.reformat would set
        # one up per frame, each with its own pool of threads)
        self.reformatter = VideoReformatter()

    def _open(self, frame: Any) -> None:
        scaled, self.turns = _display(self.stream, frame, self.settings.short_side)
        self.scaled = scaled
        self.size = (scaled[1], scaled[0]) if self.turns % 2 else scaled
        self.out = av.open(self.buf, mode="w", format="mp4")
        s = self.out.add_stream("libx264", rate=self.rate)
        s.width, s.height = self.size
        s.pix_fmt = "yuv420p"
        # floor keeps the keyframe interval <= gop_seconds even at 29.97 fps
        s.codec_context.gop_size = max(1, math.floor(self.rate * self.settings.gop_seconds))
        s.options = {"crf": str(self.settings.crf), "preset": self.settings.preset}
        tune = check_tune(self.settings.tune)
        if tune:
            s.options = {**s.options, "tune": tune}
        if self.settings.threads:
            s.codec_context.thread_count = self.settings.threads
        self.ostream = s

    def _emit(self, frame: Any) -> None:
        frame.pts = self.emitted
        frame.time_base = 1 / self.rate
        for packet in self.ostream.encode(frame):
            self.out.mux(packet)
        self.emitted += 1

    def push(self, frame: Any) -> None:
        """Maps the frame to output index round(t * rate); drops early ones, fills gaps."""
        self.decoded += 1
        if self.out is None:
            self._open(frame)
        t = _frame_time(frame, self.decoded, self.src, self.count)
        if self.t0 is None:
            self.t0 = t
        self.t_last = max(self.t_last, t - self.t0)
        target = math.ceil((t - self.t0) * self.rate - Fraction(1, 2))  # ties round down
        if target > self.emitted + MAX_GAP_SECONDS * self.rate:  # a timestamp jump: close it
            self.t0 += Fraction(target - self.emitted) / self.rate
            target = self.emitted
        if target < self.emitted:
            return
        w, h = self.scaled
        img = self.reformatter.reformat(
            frame, width=w, height=h, format="yuv420p", interpolation="AREA", threads=1
        )
        img = _upright(img, self.turns, "yuv420p")
        while self.last is not None and self.emitted < target:  # duplicate over a gap
            self._emit(self.last)
        self._emit(img)
        self.last = img

    def finish(self) -> tuple[bytes, dict[str, Any]]:
        _check_decoded(self.emitted, self.decoded, self.declared)  # emitted > 0: opened
        _check_span(self.t0, self.t_last + 1 / self.src, self.declared, self.end)
        for packet in self.ostream.encode():
            self.out.mux(packet)
        self.out.close()
        w, h = self.size
        info = {"fps": float(self.rate), "width": w, "height": h, "num_frames": self.emitted}
        info["duration"] = round(self.emitted / float(self.rate), 4)
        return self.buf.getvalue(), info


JPEG_QSCALE = 2  # FFmpeg's mjpeg quantiser scale (``-q:v 2``: its highest-quality setting)


def encode_jpeg(frame: Any) -> bytes:
    """One video frame (any size and pixel format) -> baseline JPEG bytes (4:2:0)."""
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frame.width, frame.height, "yuvj420p"
    ctx.time_base = Fraction(1, 1)
    ctx.options = {"qmin": str(JPEG_QSCALE), "qmax": str(JPEG_QSCALE)}
    img = frame if frame.format.name == "yuvj420p" else frame.reformat(format="yuvj420p")
    return b"".join(bytes(p) for p in [*ctx.encode(img), *ctx.encode(None)])


class JpegFrames:
    """Keeps the frames shown at ``k / jpeg_fps`` seconds (k = 0, 1, ...) as JPEG images: the
    shard format's alternative for sparse-frame recipes (DESIGN section 3). Frame ``k`` is the
    first decoded frame at or after ``k / jpeg_fps`` minus half a source frame (the nearest
    one for constant-rate video), scaled as the mp4 would be; timestamp gaps are filled or
    closed as in the mp4 (``MAX_GAP_SECONDS``)."""

    def __init__(self, stream: Any, settings: EncodeSettings, count: bool = False) -> None:
        self.settings = settings
        self.stream, self.count = stream, count
        self.src = _stream_rate(stream) or Fraction(25)
        self.rate = min(Fraction(settings.jpeg_fps).limit_denominator(1001), self.src)
        self.declared = int(stream.frames or 0)
        self.end = _stream_end(stream)
        self.decoded = 0
        self.t0: Fraction | None = None
        self.t_last = Fraction(0)
        self.jpegs: list[bytes] = []
        self.size: tuple[int, int] | None = None
        self.scaled, self.turns = (0, 0), 0
        self.reformatter = VideoReformatter()

    def push(self, frame: Any) -> None:
        self.decoded += 1
        t = _frame_time(frame, self.decoded, self.src, self.count)
        if self.t0 is None:
            self.t0 = t
            self.scaled, self.turns = _display(self.stream, frame, self.settings.short_side)
            w, h = self.scaled
            self.size = (h, w) if self.turns % 2 else (w, h)
        t -= self.t0
        if t - self.t_last > MAX_GAP_SECONDS:  # a timestamp jump: close it, as the mp4 does
            self.t0 += t - self.t_last - 1 / self.src
            t = self.t_last + 1 / self.src
        self.t_last = max(self.t_last, t)
        img = None
        while t >= Fraction(len(self.jpegs)) / self.rate - 1 / (2 * self.src):
            if img is None:
                w, h = self.scaled
                img = self.reformatter.reformat(
                    frame, width=w, height=h, format="yuvj420p", interpolation="AREA", threads=1
                )
                data = encode_jpeg(_upright(img, self.turns, "yuvj420p"))
            self.jpegs.append(data)  # a gap longer than 1 / jpeg_fps repeats the frame

    def finish(self) -> tuple[list[bytes], dict[str, Any]]:
        _check_decoded(len(self.jpegs), self.decoded, self.declared)
        _check_span(self.t0, self.t_last + 1 / self.src, self.declared, self.end)
        w, h = self.size  # type: ignore[misc]
        info = {"fps": float(self.rate), "width": w, "height": h, "num_frames": len(self.jpegs)}
        info["duration"] = round(float(self.t_last + 1 / self.src), 4)
        info["video_format"] = "jpeg"
        return self.jpegs, info
