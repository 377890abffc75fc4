"""Frame- and sample-level encoders of the shard writer (shard format v1, DESIGN section 3).

Video is re-encoded with PyAV/libx264 to a constant-frame-rate H.264 MP4 without audio: short
side scaled down to ``short_side`` (never up; even dimensions), frame rate capped at ``max_fps``
(frames dropped uniformly by timestamp), a keyframe at least every ``gop_seconds``, x264's
``fastdecode`` tune by default (no CABAC, no deblocking filter, no weighted prediction: the
loader decodes these streams ~1.4-1.7x faster for ~4-17 % more bytes and ~0.3 dB less PSNR at
the same CRF, see data_prep/README.md). Audio is downmixed to mono, resampled to ``sample_rate``
and stored as 16-bit FLAC, aligned to the first video frame. Short GOPs keep random clip access
cheap for the loader.

The encoders are fed decoded frames by :func:`avssl.data.writer.convert`: ``_VideoEncoder``
(the mp4), :class:`JpegFrames` (JPEG frames at a low fps, instead of the mp4), ``_AudioCollector``
(mono int16 at the target rate) and :func:`encode_flac` / :func:`encode_wav` (the audio member).
"""

from __future__ import annotations

import io
import math
import wave as wavfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Fewer decoded frames than this fraction of the count in the header means a truncated file.
MIN_FRAME_FRACTION = 0.9
# Gaps in the frame timestamps up to this long are filled by repeating the last frame.
MAX_GAP_SECONDS = 2
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


def _stream_rate(stream: Any) -> Fraction | None:
    """FFmpeg's frame-rate guess first, so that timestamp gaps do not lower the rate."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return Fraction(rate).limit_denominator(1001)
    return None


def _frame_time(frame: Any, decoded: int, rate: Fraction) -> Fraction:
    """The frame's time in seconds: its timestamp, else its decode count at ``rate``."""
    if frame.pts is None:
        return Fraction(decoded - 1) / rate
    return Fraction(frame.pts) * Fraction(frame.time_base)


def _check_decoded(kept: int, decoded: int, declared: int) -> None:
    """MediaError when no frame was kept, or far fewer decoded than the header declares."""
    if kept == 0:
        raise MediaError("video stream has no decodable frames")
    if declared > 10 and decoded < MIN_FRAME_FRACTION * declared:
        raise MediaError(f"truncated: decoded {decoded} of {declared} frames")


class _VideoEncoder:
    """Streams decoded frames into a constant-frame-rate H.264 MP4 in memory."""

    def __init__(self, stream: Any, settings: EncodeSettings) -> None:
        self.settings = settings
        src = _stream_rate(stream) or Fraction(25)
        cap = Fraction(settings.max_fps).limit_denominator(1001)
        self.rate = min(src, cap)
        self.declared = int(stream.frames or 0)
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
        self.size = output_size(frame.width, frame.height, self.settings.short_side)
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
        t = _frame_time(frame, self.decoded, self.rate)
        if self.t0 is None:
            self.t0 = t
        target = math.ceil((t - self.t0) * self.rate - Fraction(1, 2))  # ties round down
        if target > self.emitted + MAX_GAP_SECONDS * self.rate:  # a timestamp jump: close it
            self.t0 += Fraction(target - self.emitted) / self.rate
            target = self.emitted
        if target < self.emitted:
            return
        w, h = self.size
        img = self.reformatter.reformat(
            frame, width=w, height=h, format="yuv420p", interpolation="AREA", threads=1
        )
        while self.last is not None and self.emitted < target:  # duplicate over a gap
            self._emit(self.last)
        self._emit(img)
        self.last = img

    def finish(self) -> tuple[bytes, dict[str, Any]]:
        _check_decoded(self.emitted, self.decoded, self.declared)  # emitted > 0: opened
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

    def __init__(self, stream: Any, settings: EncodeSettings) -> None:
        self.settings = settings
        self.src = _stream_rate(stream) or Fraction(25)
        self.rate = min(Fraction(settings.jpeg_fps).limit_denominator(1001), self.src)
        self.declared = int(stream.frames or 0)
        self.decoded = 0
        self.t0: Fraction | None = None
        self.t_last = Fraction(0)
        self.jpegs: list[bytes] = []
        self.size: tuple[int, int] | None = None
        self.reformatter = VideoReformatter()

    def push(self, frame: Any) -> None:
        self.decoded += 1
        t = _frame_time(frame, self.decoded, self.src)
        if self.t0 is None:
            self.t0 = t
            self.size = output_size(frame.width, frame.height, self.settings.short_side)
        t -= self.t0
        if t - self.t_last > MAX_GAP_SECONDS:  # a timestamp jump: close it, as the mp4 does
            self.t0 += t - self.t_last - 1 / self.src
            t = self.t_last + 1 / self.src
        self.t_last = max(self.t_last, t)
        img = None
        while t >= Fraction(len(self.jpegs)) / self.rate - 1 / (2 * self.src):
            if img is None:
                w, h = self.size  # type: ignore[misc]
                img = self.reformatter.reformat(
                    frame, width=w, height=h, format="yuvj420p", interpolation="AREA", threads=1
                )
                data = encode_jpeg(img)
            self.jpegs.append(data)  # a gap longer than 1 / jpeg_fps repeats the frame

    def finish(self) -> tuple[list[bytes], dict[str, Any]]:
        _check_decoded(len(self.jpegs), self.decoded, self.declared)
        w, h = self.size  # type: ignore[misc]
        info = {"fps": float(self.rate), "width": w, "height": h, "num_frames": len(self.jpegs)}
        info["duration"] = round(float(self.t_last + 1 / self.src), 4)
        info["video_format"] = "jpeg"
        return self.jpegs, info


class _AudioCollector:
    """Decoded audio -> mono int16 at the target rate, with the first sample's time."""

    def __init__(self, sample_rate: int) -> None:
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.t0: float | None = None

    def push(self, frame: Any) -> None:
        if self.t0 is None and frame.pts is not None:
            self.t0 = float(frame.pts * frame.time_base)
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self) -> np.ndarray:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        if not self.chunks:
            return np.zeros(0, np.int16)
        return np.concatenate(self.chunks).astype(np.int16)


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono int16 samples ``[S]`` -> FLAC file bytes."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=sample_rate, layout="mono")
        stream.format = "s16"
        for start in range(0, len(samples), 4608):
            chunk = np.ascontiguousarray(samples[None, start : start + 4608])  # [1, n]
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono int16 samples ``[S]`` -> 16-bit PCM WAV file bytes (a 44-byte RIFF header)."""
    buf = io.BytesIO()
    with wavfile.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()
