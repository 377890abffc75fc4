"""Media transcoding and shard writing for data_prep (shard format v1, DESIGN section 3).

:func:`convert` opens a media file, decodes its video and audio streams in one pass into the
encoders of :mod:`avssl.data.media_encode` (where the transcoding rules are stated) and checks
what came out (decode errors, truncation, missing streams: :class:`MediaError` with the reason
the manifest records). :mod:`avssl.data.shard_write` holds :class:`ShardWriter` (WebDataset
tars written atomically), :class:`FbankStats` (the dataset's fbank statistics) and
:func:`write_json` (manifest files written atomically). Those and the encoders' names used by
data_prep are importable from here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from avssl.data.media_encode import (
    MIN_FRAME_FRACTION,
    X264_TUNES,
    EncodeSettings,
    JpegFrames,
    MediaError,
    _AudioCollector,
    _VideoEncoder,
    check_tune,
    container_seconds,
    counts_frames,
    encode_flac,
    encode_wav,
    output_size,
    tagged_end,
)
from avssl.data.shard_write import FbankStats, ShardWriter, write_json

__all__ = [
    "AUDIO_CODECS",
    "X264_TUNES",
    "Converted",
    "EncodeSettings",
    "FbankStats",
    "JpegFrames",
    "MediaError",
    "ShardWriter",
    "check_tune",
    "convert",
    "encode_flac",
    "encode_wav",
    "output_size",
    "write_json",
]

# A stream may lose this fraction of its packets to decode errors before the file is rejected.
MAX_BAD_PACKETS = 0.05
# Shard audio members: FLAC (lossless; 66-74 % of WAV's bytes on the clips measured, see
# data_prep/README.md) or WAV (read without decoding).
AUDIO_CODECS = ("flac", "wav")


@dataclass
class Converted:
    """Result of :func:`convert`: member bytes (``audio`` under the member name
    ``audio_codec``; ``frames`` as ``f000.jpg``, ``f001.jpg``, ... with ``jpeg_fps``), metadata
    and the mono float waveform."""

    mp4: bytes | None
    audio: bytes | None
    meta: dict[str, Any]
    wave: np.ndarray | None
    audio_codec: str = "flac"
    frames: list[bytes] | None = None  # JPEG frames instead of the mp4 (``jpeg_fps`` > 0)


def _check_wav_length(path: Path) -> None:
    """MediaError for a RIFF/WAVE file whose data chunk holds less than
    ``MIN_FRAME_FRACTION`` of the bytes its header declares (a cut download): FFmpeg takes
    the length from the file size, so the decoded audio alone cannot tell."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos, size_on_disk = 12, path.stat().st_size
    while pos + 8 <= len(head):
        cid, size = struct.unpack_from("<4sI", head, pos)
        if cid == b"data":
            have = size_on_disk - (pos + 8)
            if 0 < size < 0xFFFFFFFF and have < MIN_FRAME_FRACTION * size:
                raise MediaError(f"truncated: WAV data holds {have} of {size} bytes")
            return
        pos += 8 + size + (size & 1)


def _open(path: Path) -> Any:
    if not path.is_file():
        raise MediaError("file not found")
    if path.stat().st_size == 0:
        raise MediaError("zero-byte file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise MediaError(f"not a readable media file ({err.__class__.__name__}: {err})") from err


def _decodable(stream: Any) -> bool:
    ctx = getattr(stream, "codec_context", None)
    return ctx is not None and getattr(ctx, "name", None) not in (None, "", "none")


def _cover_art(stream: Any) -> bool:
    """An embedded picture (an audio file's cover), not a video."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _pick_streams(container: Any, want_video: bool) -> tuple[Any, Any]:
    pictures = [s for s in container.streams.video if not _cover_art(s)]
    video = next((s for s in pictures if _decodable(s)), None)
    audio = next((s for s in container.streams.audio if _decodable(s)), None)
    if pictures and video is None and want_video:
        raise MediaError("video stream without a usable codec")
    if container.streams.audio and audio is None:  # not kept as silent: has_audio false means
        raise MediaError("audio stream without a usable codec")  # the source has no sound
    return (video if want_video else None), audio


def _demux(container: Any, video: Any, audio: Any, venc: Any, acol: Any) -> dict[str, Any]:
    """Decodes both streams in one pass; counts packets and decode errors per stream."""
    counts: dict[str, Any] = {
        "v_packets": 0,
        "v_errors": 0,
        "a_packets": 0,
        "a_errors": 0,
        "a_error": "",
    }
    streams = [s for s in (video, audio) if s is not None]
    for packet in container.demux(streams):
        kind = "v" if packet.stream is video else "a"
        counts[f"{kind}_packets"] += packet.size > 0  # the empty last packet flushes
        try:
            frames = packet.decode()
        except av.FFmpegError as err:
            counts[f"{kind}_errors"] += 1
            if kind == "a":
                counts["a_error"] = str(err)
            continue
        for frame in frames:
            (venc if kind == "v" else acol).push(frame)
    return counts


def _align(samples: np.ndarray, offset_s: float, sample_rate: int) -> np.ndarray:
    """Shifts audio so that sample 0 is at the first video frame (pad or trim the start)."""
    shift = int(round(offset_s * sample_rate))
    if shift > 0:
        return np.concatenate([np.zeros(shift, np.int16), samples])
    return samples[-shift:] if shift < 0 else samples


def _finish_video(venc: Any, counts: dict[str, Any]) -> tuple[Any, dict]:
    if counts["v_errors"] > MAX_BAD_PACKETS * max(counts["v_packets"], 1):
        raise MediaError(f"video decode errors in {counts['v_errors']} packets")
    return venc.finish()


def _finish_audio(acol: _AudioCollector, counts: dict[str, Any]) -> np.ndarray | None:
    """The decoded samples; None for an audio track without a single packet (and so without
    decode errors): the source has no sound, as one without an audio stream."""
    if counts["a_packets"] == 0 and counts["a_errors"] == 0:
        return None
    samples = acol.finish()
    bad = counts["a_errors"] > MAX_BAD_PACKETS * max(counts["a_packets"], 1)
    if bad or samples.size == 0:
        raise MediaError(f"audio undecodable ({counts['a_error'] or 'no samples decoded'})")
    return samples


def _audio_seconds(audio: Any, video: Any, count: bool) -> float | None:
    """What the decoded audio is checked against for truncation: the audio stream's own
    duration (its header's, or Matroska's ``DURATION`` tag), or for a file without video the
    container's; None (not checked) otherwise (the container's duration of a video file may be
    the video's) and in AVI (its audio headers count in their own units: 3.6 s declared for
    3.0 s of MP3 written with an offset)."""
    if count:
        return None
    if audio.duration and audio.time_base:
        return float(audio.duration * audio.time_base)
    tagged = tagged_end(audio)
    if tagged is not None:
        start = float(audio.start_time * audio.time_base) if audio.start_time else 0.0
        return tagged - start
    total = container_seconds(audio.container)
    return total if video is None else None


def convert(
    path: str | Path, settings: EncodeSettings, want_video: bool = True, require_video: bool = True
) -> Converted:
    """Transcodes one media file to shard members (H.264 mp4 without audio, mono FLAC or WAV).

    Raises:
        MediaError: unreadable, zero-byte, truncated or codec-less file, no video stream when
            ``require_video``, or an audio stream that cannot be decoded ("audio undecodable").
    """
    path = Path(path)
    with _open(path) as container:
        if "wav" in str(container.format.name).split(","):
            _check_wav_length(path)
        video, audio = _pick_streams(container, want_video)
        if video is None and require_video:
            raise MediaError("no video stream")
        if video is None and audio is None:
            raise MediaError("no audio or video stream")
        sink = JpegFrames if settings.jpeg_fps > 0 else _VideoEncoder
        count = counts_frames(container)
        venc = sink(video, settings, count) if video is not None else None
        acol = None
        if audio is not None:
            expected = _audio_seconds(audio, video, count)
            acol = _AudioCollector(settings.sample_rate, expected, follow_gaps=not count)
        try:
            counts = _demux(container, video, audio, venc, acol)
        except av.FFmpegError as err:
            raise MediaError(f"demux error ({err})") from err
    mp4, info = _finish_video(venc, counts) if venc is not None else (None, {})
    frames = None
    if isinstance(venc, JpegFrames):
        mp4, frames = None, mp4
    samples = _aligned_audio(acol, counts, venc, settings.sample_rate)
    meta = _meta(info, venc is not None, samples, settings.sample_rate)
    audio = None
    if samples is not None:
        encode = encode_wav if settings.audio_codec == "wav" else encode_flac
        audio = encode(samples, settings.sample_rate)
    wave = samples.astype(np.float32) / 32768.0 if samples is not None else None
    return Converted(mp4, audio, meta, wave, settings.audio_codec, frames)


def _aligned_audio(
    acol: _AudioCollector | None, counts: dict[str, Any], venc: Any, sample_rate: int
) -> np.ndarray | None:
    """The collected int16 samples, moved to start with the first video frame (None: no
    audio, or all of it before the first frame, so no sound in the clip)."""
    if acol is None:
        return None
    samples = _finish_audio(acol, counts)
    if samples is not None and venc is not None and venc.t0 is not None:
        if acol.t0 is not None:
            samples = _align(samples, acol.t0 - float(venc.t0), sample_rate)
        if samples.size == 0:
            samples = None
    return samples


def _meta(
    info: dict, has_video: bool, samples: np.ndarray | None, sample_rate: int
) -> dict[str, Any]:
    """The sample's ``.json`` fields (the video's from ``info``; duration from the audio when
    there is no video)."""
    n = int(samples.size) if samples is not None else 0
    meta: dict[str, Any] = {"fps": None, "width": None, "height": None, "num_frames": 0}
    meta.update(info, has_video=has_video, has_audio=samples is not None)
    meta["audio_sample_rate"] = sample_rate if samples is not None else None
    meta["audio_num_samples"] = n
    if not has_video:
        meta["duration"] = round(n / sample_rate, 4)
    return meta
