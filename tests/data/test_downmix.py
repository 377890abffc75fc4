"""Raw files' audio (``avssl.embed``'s path) is downmixed as the shard writer downmixes it: stereo
averaged, 5.1 by FFmpeg's mono downmix (LFE left out), so an encoder sees the same levels from a
raw file as from the shards it was trained on."""

from __future__ import annotations

import av
import numpy as np
import pytest

from avssl.data.audio_decode import load_audio
from avssl.data.media_encode import _AudioCollector

LEVELS = {"stereo": [0.3, -0.2], "5.1": [0.3, -0.2, 0.25, 0.4, 0.1, -0.15]}


def _write(path, layout: str, rate: int, seconds: float = 1.0) -> None:
    levels = LEVELS[layout]
    n = int(rate * seconds)
    t = np.arange(n) / rate
    tone = np.sin(2 * np.pi * 440 * t)
    x = np.stack([lv * tone for lv in levels], axis=1)  # [S, C], distinct level per channel
    pcm = (x * 32767).astype(np.int16).reshape(1, -1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _writer_samples(path, rate: int) -> np.ndarray:
    collect = _AudioCollector(rate)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            collect.push(frame)
    return collect.finish().astype(np.float32) / 32768.0


@pytest.mark.parametrize("source_rate", [16000, 48000])
def test_surround_is_downmixed_as_the_writer_does(tmp_path, source_rate):
    path = tmp_path / "surround.mka"
    _write(path, "5.1", source_rate)
    raw, has_audio = load_audio(str(path), 16000)
    shard = _writer_samples(path, 16000)
    assert has_audio and raw.shape[0] == shard.shape[0] == 16000
    raw = raw.numpy()
    assert np.abs(raw - shard).max() <= 1.5 / 32768  # the same mix, to int16 rounding
    # and not the plain average of the six channels (which includes the LFE)
    average = np.mean(LEVELS["5.1"])
    peak = np.abs(raw[4000:12000]).max()
    assert abs(peak - abs(average)) > 0.02


def test_stereo_is_averaged(tmp_path):
    path = tmp_path / "stereo.mka"
    _write(path, "stereo", 16000)
    raw, _ = load_audio(str(path), 16000)
    shard = _writer_samples(path, 16000)
    t = np.arange(16000) / 16000
    expected = np.mean(LEVELS["stereo"]) * np.sin(2 * np.pi * 440 * t)
    assert np.abs(raw.numpy() - expected).max() < 2.0 / 32768
    assert np.abs(raw.numpy() - shard).max() <= 1.5 / 32768
