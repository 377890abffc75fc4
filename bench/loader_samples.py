"""Samples for ``bench/loader.py``: synthetic shards, shard samples re-encoded (WAV or FLAC
audio, JPEG frames), and the naive decode-everything path the loader is measured against.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import soundfile
import torch

from avssl.data.audio_decode import load_audio
from avssl.data.sampling import SampleProcessor
from avssl.data.shards import ShardReader, resolve, split_table
from avssl.data.writer import EncodeSettings, JpegFrames, encode_flac, encode_wav


def build_shards(out: Path, quick: bool, tune: str = "", raw: Path | None = None) -> Path:
    """Synthetic shards for the benchmark (reused when ``out`` already holds them), encoded
    with data_prep's defaults or x264 ``--tune tune``; clips generated into ``raw`` (default
    ``out/raw``; clips already generated there with the same settings are reused)."""
    from avssl.data.synthetic import generate

    if (out / "manifest.json").is_file():
        return out
    raw = raw or out / "raw"
    size, secs, n = ((128, 96), 3.0, 2) if quick else ((340, 256), 10.0, 4)
    print(f"[bench] generating {2 * n} synthetic clips {size[0]}x{size[1]}, {secs:.0f} s in {raw}")
    generate(raw, num_classes=2, clips_per_class=n, fps=30, size=size, min_duration=secs,
             max_duration=secs, no_audio_fraction=0.0, alt_fps_fraction=0.0,
             alt_size_fraction=0.0, workers=1 if quick else 2)  # fmt: skip
    cmd = [sys.executable, "-m", "data_prep", "--dataset", "synthetic", "--root", str(raw),
           "--out", str(out), "--workers", "2", "--no-progress"]  # fmt: skip
    cmd += ["--tune", tune] if tune else []
    subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], check=True, stdout=subprocess.DEVNULL
    )
    return out


def load_samples(data: Path, limit: int) -> list[dict]:
    reader = ShardReader()
    items = split_table(resolve(data), None).ordered()[:limit]
    return [reader.read(shard, key) for shard, key in items]


def with_audio(samples: list[dict], codec: str) -> list[dict]:
    """The samples with their audio member in ``codec`` ("flac" or "wav", what
    ``data_prep --audio-codec`` writes), the same samples."""
    out = []
    for s in samples:
        have = "flac" if "flac" in s else "wav"
        if have == codec:
            out.append(s)
            continue
        pcm, rate = soundfile.read(io.BytesIO(s[have]), dtype="int16")
        converted = {k: v for k, v in s.items() if k != have}
        converted[codec] = encode_wav(pcm, rate) if codec == "wav" else encode_flac(pcm, rate)
        out.append(converted)
    return out


def with_jpeg_frames(samples: list[dict], fps: float = 0.0, stride: int = 1) -> list[dict]:
    """The samples with their mp4 replaced by JPEG frames at ``fps`` (0: each sample's own
    frame rate / ``stride``), what ``data_prep --jpeg-fps`` writes, here from the mp4's decoded
    frames instead of the source's."""
    out = []
    for s in samples:
        rate = fps or json.loads(s["json"])["fps"] / stride
        with av.open(io.BytesIO(s["mp4"])) as c:
            stream = c.streams.video[0]
            sink = JpegFrames(stream, EncodeSettings(short_side=10**4, jpeg_fps=rate))
            for frame in c.decode(stream):
                sink.push(frame)
        jpegs, info = sink.finish()
        converted = {k: v for k, v in s.items() if k != "mp4"}
        converted.update({f"f{i:03d}.jpg": data for i, data in enumerate(jpegs)})
        converted["json"] = json.dumps({**json.loads(s["json"]), **info}).encode()
        out.append(converted)
    return out


def naive_clip(proc: SampleProcessor, sample: dict, gen: torch.Generator) -> None:
    """The naive path: decode every frame to RGB, then pick the clip, then the same work."""
    with av.open(io.BytesIO(sample["mp4"])) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    spec = proc.spec
    start = spec.random_starts(len(frames) / fps, fps, 1, gen)[0]
    idx = [min(len(frames) - 1, round(t * fps)) for t in spec.frame_times(start, fps)]
    proc.video_tf(torch.from_numpy(np.stack([frames[i] for i in idx])), gen)
    wave, _ = load_audio(sample.get("flac", sample.get("wav")), proc.fbank.sample_rate)
    proc._audio(wave, [start + spec.span_s(fps) / 2], gen)
