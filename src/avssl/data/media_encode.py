"""Frame- and sample-level encoders of the shard writer (shard format v1, DESIGN section 3).

Video is re-encoded with PyAV/libx264 to a constant-frame-rate H.264 MP4 without audio:
upright (a display matrix's rotation applied) with square pixels (the sample aspect ratio
applied), short side scaled down to ``short_side`` (never up; even dimensions), frame rate
capped at ``max_fps`` (frames dropped uniformly by timestamp; AVI's frames, whose timestamps
packed B-frames shuffle, and frames without timestamps are timed by their count at the
source's rate), a keyframe at least every ``gop_seconds``, x264's
``fastdecode`` tune by default (no CABAC, no deblocking filter, no weighted prediction: the
loader decodes these streams ~1.4-1.7x faster for ~4-17 % more bytes and ~0.3 dB less PSNR at
the same CRF, see data_prep/README.md). Audio is downmixed to mono, resampled to ``sample_rate``
and stored as 16-bit FLAC, aligned to the first video frame, with gaps in its timestamps kept
as silence. Short GOPs keep random clip access cheap for the loader. A file is truncated when
fewer frames decode than its header counts, or (no count: WebM, Matroska) when they stop well
before the header's duration, or when its audio stops well before the audio's own duration.

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


class _AudioCollector:
    """Decoded audio -> mono int16 at the target rate, with the first sample's time.

    Each frame's timestamp is followed: a gap of more than ``AUDIO_GAP_SECONDS`` after the
    samples so far is filled with silence up to ``MAX_GAP_SECONDS`` (longer jumps are closed,
    as the video's are), so that the audio after a gap stays at its time. A change of sample
    format, channel layout or rate in the middle of the stream starts a new resampler. The
    source samples decoded (``decoded_s``; with timestamps, the span from the first to the end
    of the last, gaps included) are checked against ``duration`` (seconds, None: not checked)
    for truncation. ``follow_gaps`` False (AVI, whose timestamps are
    not trusted) keeps the samples back to back."""

    def __init__(
        self, sample_rate: int, duration: float | None = None, follow_gaps: bool = True
    ) -> None:
        self.sample_rate, self.follow_gaps = sample_rate, follow_gaps
        self.resampler: Any = None
        self.setup: tuple | None = None
        self.chunks: list[np.ndarray] = []
        self.t0: float | None = None
        self.end: float | None = None  # source time just after the last decoded sample
        self.decoded_s = 0.0
        self.duration = duration

    def _flush(self) -> None:
        if self.resampler is not None:
            for out in self.resampler.resample(None):
                self.chunks.append(out.to_ndarray().reshape(-1))
        self.resampler = None

    def push(self, frame: Any) -> None:
        t = float(frame.pts * frame.time_base) if frame.pts is not None else None
        if self.t0 is None and t is not None:
            self.t0 = t
        if self.follow_gaps and t is not None and self.end is not None:
            gap = t - self.end
            if gap > AUDIO_GAP_SECONDS:
                self._flush()
                if gap <= MAX_GAP_SECONDS:
                    self.chunks.append(np.zeros(int(round(gap * self.sample_rate)), np.int16))
        setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        if setup != self.setup:
            self._flush()
            self.setup = setup
        if self.resampler is None:
            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
        seconds = frame.samples / frame.sample_rate if frame.sample_rate else 0.0
        self.decoded_s += seconds
        start = t if t is not None else self.end
        self.end = None if start is None else start + seconds
        frame.pts = None  # the resampler would otherwise re-time its output by the gaps
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self) -> np.ndarray:
        self._flush()
        covered = self.decoded_s  # with timestamps, a gap (filled with silence) counts too
        if self.t0 is not None and self.end is not None:
            covered = max(covered, self.end - self.t0)
        if self.duration and self.duration >= 1.0 and self.decoded_s:
            if covered < MIN_FRAME_FRACTION * self.duration:
                raise MediaError(
                    f"truncated: decoded {covered:.2f} s of {self.duration:.2f} s of audio"
                )
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
