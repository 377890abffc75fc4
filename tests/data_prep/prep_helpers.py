"""Helpers for data_prep tests: tiny PyAV media files, fake dataset trees, reading shards."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.media import MEDIA

REAL_MEDIA = MEDIA


def write_clip(
    path: Path,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    seconds: float = 1.2,
    audio_rate: int | None = 22050,
    stereo: bool = True,
    garbage_audio: bool = False,
    faststart: bool = False,
) -> Path:
    """An H.264 clip with a moving bar and (optionally) an AAC tone; deterministic."""
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = None
        if audio_rate:
            a = out.add_stream("aac", rate=audio_rate, layout="stereo" if stereo else "mono")
        n = int(round(seconds * fps))
        for i in range(n):
            img = np.zeros((height, width, 3), np.uint8)
            img[:, (i * 7) % width] = 255
            img[..., 1] = (i * 13) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        if a is not None and garbage_audio:
            rng = np.random.default_rng(0)
            for i in range(int(seconds * audio_rate / 1024)):
                packet = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
                packet.stream = a
                packet.pts = packet.dts = i * 1024
                packet.time_base = Fraction(1, audio_rate)
                out.mux(packet)
        elif a is not None:
            t = np.arange(int(seconds * audio_rate)) / audio_rate
            tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            chans = 2 if stereo else 1
            data = np.repeat(tone[None], chans, 0).T.reshape(1, -1) if stereo else tone[None]
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data), format="s16", layout="stereo" if stereo else "mono"
            )
            frame.sample_rate, frame.pts = audio_rate, 0
            for packet in a.encode(frame):
                out.mux(packet)
            for packet in a.encode():
                out.mux(packet)
    return path


def write_codecless_avi(path: Path) -> Path:
    """An MPEG-4 AVI whose FourCC is replaced by an unknown one: a stream without a codec."""
    with av.open(str(path), "w", format="avi") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), "rgb24")
            frame.pts = i
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    path.write_bytes(path.read_bytes().replace(b"FMP4", b"QQQQ"))
    return path


def write_audio_codecless_avi(path: Path) -> Path:
    """An AVI with a decodable video stream and an audio stream whose format tag (the
    WAVEFORMATEX ``wFormatTag``) is replaced by an unknown one: audio without a codec."""
    with av.open(str(path), "w", format="avi") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), "rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())
        tone = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.int16), "s16", "mono")
        tone.sample_rate, tone.pts = 16000, 0
        out.mux(a.encode(tone))
        out.mux(a.encode())
    data = bytearray(path.read_bytes())
    strf = data.find(b"strf", data.find(b"auds"))  # the audio stream's format chunk
    data[strf + 8 : strf + 10] = (0x7777).to_bytes(2, "little")  # after the id and the size
    path.write_bytes(bytes(data))
    return path


def write_wav(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    with av.open(str(path), "w") as out:
        a = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        data = (np.sin(2 * np.pi * 300 * t) * 6000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in a.encode(frame):
            out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    return path


def place(src: Path, dst: Path) -> Path:
    """Copies ``src`` to ``dst`` (parents created)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def write_text(path: Path, text: str, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes(data.encode("utf-8"))
    return path


def read_shards(out: Path) -> dict[str, dict[str, bytes]]:
    """All samples of a prepared folder: key -> {ext: bytes}, via the manifest's shard list."""
    import json
    import tarfile

    manifest = json.loads((out / "manifest.json").read_text())
    samples: dict[str, dict[str, bytes]] = {}
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["file"]) as tar:
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def sample_json(samples: dict[str, dict[str, bytes]], key: str) -> dict:
    import json

    return json.loads(samples[key]["json"])
