"""The shard writer's audio encoders (shard format v1, DESIGN section 3; the rules are stated
in :mod:`avssl.data.media_encode`).

``_AudioCollector`` turns decoded audio into mono int16 at the target rate (gaps in the
timestamps kept as silence, truncation checked); :func:`encode_flac` and :func:`encode_wav`
write those samples as the sample's audio member.
"""

from __future__ import annotations

import io
import wave as wavfile
from fractions import Fraction
from typing import Any

import av
import numpy as np

from avssl.data.encode_settings import (
    AUDIO_GAP_SECONDS,
    MAX_GAP_SECONDS,
    MIN_FRAME_FRACTION,
    MediaError,
)


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
