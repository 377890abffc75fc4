"""avssl.data.writer: transcoding rules (size, fps, keyframes, audio) and bad-media reasons."""

from __future__ import annotations

import io
import tarfile

import av
import numpy as np
import pytest
import torch

from avssl.data.fbank import FbankConfig, log_mel
from avssl.data.writer import (
    EncodeSettings,
    FbankStats,
    MediaError,
    ShardWriter,
    check_tune,
    convert,
    encode_flac,
    encode_wav,
    output_size,
)


def keyframe_times(mp4: bytes) -> tuple[list[float], float]:
    with av.open(io.BytesIO(mp4)) as c:
        v = c.streams.video[0]
        times = [
            float(p.pts * p.time_base) for p in c.demux(v) if p.pts is not None and p.is_keyframe
        ]
        return sorted(times), float(v.frames / v.average_rate)


def decode_audio(flac: bytes) -> tuple[np.ndarray, int, int]:
    with av.open(io.BytesIO(flac)) as c:
        s = c.streams.audio[0]
        data = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(s)])
        return data, s.codec_context.sample_rate, s.codec_context.channels


@pytest.mark.parametrize(
    "size,expected",
    [
        ((320, 240), (320, 240)),
        ((640, 480), (342, 256)),
        ((1920, 1080), (456, 256)),
        ((256, 144), (256, 144)),
        ((341, 255), (340, 254)),
        ((480, 640), (256, 342)),
    ],
)
def test_output_size_downscales_only_and_even(size, expected):
    assert output_size(*size, 256) == expected


def test_downscale_fps_keyframes_and_no_audio_stream(media):
    conv = convert(media["big"], EncodeSettings())
    assert (conv.meta["width"], conv.meta["height"]) == (342, 256)
    assert conv.meta["fps"] == 10.0 and conv.meta["num_frames"] == 25
    with av.open(io.BytesIO(conv.mp4)) as c:
        assert len(c.streams.audio) == 0
        v = c.streams.video[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
    times, duration = keyframe_times(conv.mp4)
    gaps = np.diff([*times, duration])
    assert times[0] == 0.0 and gaps.max() <= 1.0 + 1e-6


def x264_options(mp4: bytes) -> dict[str, str]:
    """The settings libx264 writes into the stream (its SEI "options: k=v ..." string)."""
    start = mp4.index(b"options: ") + len(b"options: ")
    text = mp4[start : mp4.index(b"\x00", start)].decode("ascii", "replace")
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def test_fastdecode_tune_by_default_and_none_turns_it_off(media):
    tuned = x264_options(convert(media["big"], EncodeSettings()).mp4)
    plain = x264_options(convert(media["big"], EncodeSettings(tune="none")).mp4)
    # x264's fastdecode: CAVLC instead of CABAC, no deblocking, no weighted prediction
    assert (tuned["cabac"], tuned["deblock"], tuned["weightb"]) == ("0", "0:0:0", "0")
    assert plain["cabac"] == "1" and plain["deblock"].startswith("1:")


def test_check_tune_names():
    assert check_tune("none") == "" and check_tune("") == ""
    assert check_tune(" fastdecode , zerolatency") == "fastdecode,zerolatency"
    with pytest.raises(ValueError, match="unknown x264 tune 'fast'"):
        check_tune("fastdecode,fast")
    with pytest.raises(ValueError, match="one of film, .* at a time"):
        check_tune("film,grain,fastdecode")


def test_fps_capped_by_dropping_frames_uniformly(media):
    conv = convert(media["fast"], EncodeSettings(max_fps=30))
    assert conv.meta["fps"] == 30.0
    assert conv.meta["num_frames"] == 30 and conv.meta["duration"] == pytest.approx(1.0)
    times, duration = keyframe_times(conv.mp4)
    assert np.diff([*times, duration]).max() <= 1.0 + 1e-6


def test_audio_is_mono_16k_flac_aligned(media):
    conv = convert(media["av"], EncodeSettings())
    assert conv.meta["has_audio"] and conv.meta["audio_sample_rate"] == 16000
    assert conv.audio_codec == "flac" and conv.audio[:4] == b"fLaC"
    data, rate, channels = decode_audio(conv.audio)
    assert rate == 16000 and channels == 1
    assert len(data) == conv.meta["audio_num_samples"]
    assert abs(len(data) / 16000 - 1.2) < 0.1  # 1.2 s tone
    # the 440 Hz tone survives downmix + resampling
    spec = np.abs(np.fft.rfft(data[2000:10000].astype(np.float64)))
    assert np.argmax(spec) * 16000 / 8000 == pytest.approx(440, abs=4)


def test_audio_only_file_has_no_video(media):
    conv = convert(media["wav"], EncodeSettings(), want_video=False, require_video=False)
    assert conv.mp4 is None and conv.meta["has_video"] is False
    assert conv.meta["duration"] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(MediaError, match="no video stream"):
        convert(media["wav"], EncodeSettings())


@pytest.mark.parametrize(
    "name,reason",
    [
        ("zero", "zero-byte"),
        ("text", "not a readable media file"),
        ("truncated", "truncated"),
        ("cut_header", "not a readable media file"),
        ("badaudio", "audio undecodable"),
        ("nocodec", "video stream without a usable codec"),
        ("nocodec_audio", "audio stream without a usable codec"),  # not kept as silent
    ],
)
def test_bad_media_reasons(media, name, reason):
    with pytest.raises(MediaError, match=reason):
        convert(media[name], EncodeSettings())


@pytest.mark.parametrize("encode", [encode_flac, encode_wav])
def test_audio_roundtrip_exact(encode):
    samples = (np.sin(np.arange(20001) / 7) * 12000).astype(np.int16)  # odd count: padded chunk
    data, rate, channels = decode_audio(encode(samples, 16000))
    assert rate == 16000 and channels == 1
    np.testing.assert_array_equal(data, samples)


def test_wav_audio_codec_stores_the_flac_samples(media):
    """``audio_codec="wav"``: a 16-bit PCM WAV member with the samples FLAC stores."""
    flac = convert(media["av"], EncodeSettings())
    wav = convert(media["av"], EncodeSettings(audio_codec="wav"))
    assert wav.audio_codec == "wav" and wav.audio[:4] == b"RIFF" and wav.audio[8:12] == b"WAVE"
    assert wav.mp4 == flac.mp4 and wav.meta == flac.meta
    np.testing.assert_array_equal(decode_audio(wav.audio)[0], decode_audio(flac.audio)[0])
    np.testing.assert_array_equal(wav.wave, flac.wave)


def test_shard_writer_renames_on_close_only(tmp_path):
    writer = ShardWriter(tmp_path / "s.tar")
    writer.add("ds/a/b", {"mp4": b"123", "json": b"{}"})
    assert not (tmp_path / "s.tar").exists() and (tmp_path / "s.tar.tmp").exists()
    writer.close()
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert tar.getnames() == ["ds/a/b.mp4", "ds/a/b.json"]
    aborted = ShardWriter(tmp_path / "t.tar")
    aborted.abort()
    assert not list(tmp_path.glob("t.tar*"))


def test_fbank_stats_match_direct_computation():
    cfg = FbankConfig()
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(8000 + 1000 * i).astype(np.float32) * 0.1 for i in range(3)]
    acc = FbankStats()
    for w in waves[:2]:
        acc.add_wave(w, cfg)
    other = FbankStats()
    other.add_wave(waves[2], cfg)
    acc.merge(other.to_dict())
    allv = torch.cat([log_mel(torch.from_numpy(w), cfg).reshape(-1) for w in waves]).double()
    mean, std = acc.mean_std()
    assert acc.clips == 3 and acc.count == allv.numel()
    assert mean == pytest.approx(allv.mean().item(), rel=1e-6)
    assert std == pytest.approx(allv.std(unbiased=False).item(), rel=1e-5)


@pytest.mark.parametrize("jpeg_fps", [0, 10])  # the mp4, or JPEG frames at the same rate
@pytest.mark.parametrize("jump,expected", [(5, 15), (50, 10)])
def test_timestamp_gaps_filled_short_closed_long(tmp_path, jump, expected, jpeg_fps):
    path = tmp_path / "gap.mp4"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i, pts in enumerate([0, 1, 2, 3, 4] + [jump + 5 + k for k in range(5)]):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), "rgb24")
            frame.pts = pts
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    conv = convert(path, EncodeSettings(jpeg_fps=jpeg_fps))
    assert conv.meta["fps"] == 10.0 and conv.meta["num_frames"] == expected
    assert len(conv.frames or []) == (expected if jpeg_fps else 0)


@pytest.mark.parametrize(
    "name,jpeg_fps,expected", [("av", 2, [0, 5, 10]), ("fast", 4, [0, 15, 30, 45])]
)
def test_jpeg_frames_are_the_source_frames_nearest_each_time(media, name, jpeg_fps, expected):
    """``jpeg_fps``: one JPEG per 1 / jpeg_fps s, each the source frame shown then (frame i of
    the test clips has green level 13 i mod 256 and a white column at 7 i mod width)."""
    from avssl.data.decode import decode_jpeg

    conv = convert(media[name], EncodeSettings(jpeg_fps=jpeg_fps))
    assert conv.mp4 is None and conv.frames is not None
    assert len(conv.frames) == len(expected) == conv.meta["num_frames"]
    assert conv.meta["fps"] == jpeg_fps and conv.meta["video_format"] == "jpeg"
    assert conv.meta["has_video"] is True
    for i, data in zip(expected, conv.frames, strict=True):
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
        rgb = decode_jpeg(data).astype(float)
        assert abs(rgb[..., 1].mean() - (13 * i) % 256) < 6, i
        assert np.argmax(rgb[..., 0].mean(axis=0)) == (7 * i) % rgb.shape[1], i
    flac = convert(media[name], EncodeSettings())
    assert conv.meta["duration"] == pytest.approx(flac.meta["duration"], abs=0.02)
    if flac.audio is not None:
        assert conv.audio == flac.audio  # aligned to the same first frame
