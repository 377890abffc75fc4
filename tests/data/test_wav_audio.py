"""Shard audio as 16-bit PCM WAV (``data_prep --audio-codec wav``): read in place by the loader
(``audio_decode.PcmWave``), the same samples and batches as the FLAC shards of the same clips."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from avssl.data.audio_decode import PcmWave, load_audio
from avssl.data.datamodule import AVDataModule, make_eval_loader
from avssl.data.decode import MediaError
from avssl.data.sampling import build_processor
from tests.data.conftest import rewrite, samples_of


def test_wav_shards_hold_the_flac_samples(synth, wav_synth):
    manifest = json.loads((wav_synth / "manifest.json").read_text())
    assert manifest["prep"]["audio_codec"] == "wav"
    flac, wav = samples_of(synth), samples_of(wav_synth)
    assert [s["__key__"] for s in flac] == [s["__key__"] for s in wav]
    with_audio = 0
    for f, w in zip(flac, wav, strict=True):
        assert "flac" not in w and w["mp4"] == f["mp4"]
        meta = json.loads(w["json"])
        assert ("wav" in w) is meta["has_audio"] is ("flac" in f)
        if "wav" not in w:
            continue
        with_audio += 1
        assert len(PcmWave.open(w["wav"], 16000)) == meta["audio_num_samples"]
        assert torch.equal(load_audio(w["wav"], 16000)[0], load_audio(f["flac"], 16000)[0])
    assert with_audio >= 6


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("audio_frames", [64, 2000])  # windows shorter / longer than a clip
def test_processor_gives_the_same_audio_from_wav_and_flac(
    synth, wav_synth, on_device, audio_frames
):
    prep = {
        "num_frames": 2,
        "frame_stride": 2,
        "crop_size": 32,
        "fbank": {"target_frames": audio_frames},
    }
    proc = build_processor(prep, "train", 2, "aligned", train=True, on_device=on_device)
    compared = 0
    for f, w in zip(samples_of(synth), samples_of(wav_synth), strict=True):
        a, b = (proc(s, torch.Generator().manual_seed(3)) for s in (f, w))
        assert a["clip_start"] == b["clip_start"] and a["audio_start"] == b["audio_start"]
        if a["audio"] is None:
            assert b["audio"] is None
            continue
        pairs = (
            zip(a["audio"], b["audio"], strict=True) if on_device else [(a["audio"], b["audio"])]
        )
        assert all(torch.equal(x, y) for x, y in pairs)
        compared += 1
    assert compared >= 6


def test_eval_batches_equal_and_a_truncated_wav_is_skipped_and_counted(
    synth, wav_synth, small_args, tmp_path
):
    dm = AVDataModule(str(synth), **small_args(train_split=None, val_split=None))
    prep = dm.preprocessing()
    flac = list(make_eval_loader(str(synth), None, prep, batch_size=3))
    wav = list(make_eval_loader(str(wav_synth), None, prep, batch_size=3))
    assert [b.key for b in flac] == [b.key for b in wav]
    for x, y in zip(flac, wav, strict=True):
        assert torch.equal(x.audio, y.audio) and torch.equal(x.video, y.video)
        assert torch.equal(x.audio_mask, y.audio_mask)

    cut_key = []

    def cut(s: dict, i: int) -> dict:
        if "wav" in s and not cut_key:
            s["wav"] = s["wav"][: len(s["wav"]) // 2]
            cut_key.append(json.loads(s["json"])["id"])
        return s

    broken = rewrite(wav_synth, tmp_path / "broken", cut)
    batches = list(make_eval_loader(str(broken), None, prep, batch_size=3))
    assert [k for b in batches for k in b.extra["skipped_keys"]] == cut_key
    assert sum(b.extra["skipped"] for b in batches) == 1
    assert sum(len(b) for b in batches) == sum(len(b) for b in wav) - 1


def _wav(
    pcm: bytes, rate: int = 16000, channels: int = 1, bits: int = 16, extra: bytes = b""
) -> bytes:
    """A RIFF/WAVE file: fmt chunk, ``extra`` chunks, data chunk of ``pcm``."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    body += b"data" + struct.pack("<I", len(pcm)) + pcm + b"\0" * (len(pcm) & 1)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_pcm_wave_layouts_and_broken_files():
    samples = (np.sin(np.arange(16000) / 5) * 20000).astype("<i2")
    odd = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"  # an odd-sized chunk, padded
    pcm = PcmWave.open(_wav(samples.tobytes(), extra=odd), 16000)
    assert len(pcm) == 16000
    assert torch.equal(pcm[100:300], torch.from_numpy(samples[100:300] / np.float32(32768)))
    assert torch.equal(pcm[15900:20000], torch.from_numpy(samples[15900:] / np.float32(32768)))
    # other layouts are FFmpeg's: downmixed and resampled to the loader's rate
    stereo = np.repeat(samples, 2).tobytes()
    for data, n in (
        (_wav(stereo, channels=2), 16000),
        (_wav(samples.tobytes(), rate=8000), 32000),
        (_wav((samples // 256 + 128).astype(np.uint8).tobytes(), bits=8), 16000),
    ):
        assert PcmWave.open(data, 16000) is None
        wave, has_audio = load_audio(data, 16000)
        assert has_audio and abs(len(wave) - n) <= 64
    stereo_wave, _ = load_audio(_wav(stereo, channels=2), 16000)
    assert torch.allclose(stereo_wave, pcm[0:16000])  # same left and right: the mono signal
    # not RIFF/WAVE: another decoder's
    assert PcmWave.open(b"fLaC" + bytes(100), 16000) is None
    assert PcmWave.open(b"RIFF" + bytes(4) + b"AVI " + bytes(100), 16000) is None
    # a truncated file: one clear error, from the loader's path and from load_audio
    whole = _wav(samples.tobytes())
    with pytest.raises(MediaError, match="WAV truncated: 8000 of 16000 samples present"):
        PcmWave.open(whole[: 44 + 16000], 16000)
    with pytest.raises(MediaError, match="WAV truncated"):
        load_audio(whole[:1000], 16000)
    with pytest.raises(MediaError, match="WAV without a data chunk"):
        PcmWave.open(whole[:36], 16000)
