"""Decoding helpers: seek-and-decode clips equal a naive full decode; audio loading."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avssl.data import audio_decode
from avssl.data.audio_decode import FlacWindows, load_audio
from avssl.data.datamodule import AVDataModule, make_eval_loader
from avssl.data.decode import (
    ClipSpec,
    MediaError,
    decode_clips_on_keyframes,
    decode_video_clips,
    open_media,
    probe_video,
    to_rgb,
)
from avssl.data.writer import EncodeSettings, convert
from tests.data.conftest import rewrite, samples_of
from tests.media import MEDIA


def naive_frames(src) -> list[np.ndarray]:
    """Every frame of the first video stream as RGB, in display order."""
    with open_media(src) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def expected_clips(frames, starts, spec: ClipSpec, fps: float) -> np.ndarray:
    idx = [round(t * fps) for s in starts for t in spec.frame_times(s, fps)]
    return np.stack([frames[min(i, len(frames) - 1)] for i in idx])


@pytest.fixture(scope="module")
def shard_sample(synth) -> dict:
    """The longest sample of the synthetic shards (members as bytes)."""
    samples = samples_of(synth)
    return max(samples, key=lambda s: json.loads(s["json"])["num_frames"])


def test_clips_equal_naive_decode_with_seeks(shard_sample):
    mp4 = shard_sample["mp4"]
    with open_media(mp4) as c:
        info = probe_video(c)
    meta = json.loads(shard_sample["json"])
    assert info.fps == pytest.approx(meta["fps"]) and info.num_frames == meta["num_frames"]
    frames = naive_frames(mp4)
    spec = ClipSpec(5, frame_stride=3)
    # far-apart clips force seeks; an overlapping pair shares one forward pass
    starts = [info.duration - spec.span_s(info.fps), 0.0, 2.0, 2.2]
    starts = [round(s * info.fps) / info.fps for s in starts]
    clips = decode_video_clips(mp4, starts, 5, frame_stride=3)
    assert clips.shape == (4, 5, info.height, info.width, 3) and clips.dtype == torch.uint8
    want = expected_clips(frames, starts, spec, info.fps)
    assert np.array_equal(clips.reshape(-1, *clips.shape[2:]).numpy(), want)


def test_to_rgb_equals_to_ndarray_when_the_frame_size_changes(shard_sample, tmp_path):
    """The per-thread reformatter gives PyAV's per-frame conversion, also when frames of
    another size or pixel format come between (its context is rebuilt)."""
    other = tmp_path / "other.mp4"
    with av.open(str(other), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 36, "yuv420p"
        for i in range(3):
            img = np.full((36, 48, 3), 40 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with open_media(shard_sample["mp4"]) as a, open_media(other) as b:
        frames = [f for pair in zip(a.decode(video=0), b.decode(video=0)) for f in pair]
    assert len({(f.width, f.height) for f in frames}) == 2
    for frame in frames:
        assert np.array_equal(to_rgb(frame), frame.to_ndarray(format="rgb24"))


def _decode_in_child(mp4: bytes) -> None:
    decode_video_clips(mp4, [0.0], 2)


def test_frames_convert_in_a_process_forked_after_the_parent_converted(shard_sample):
    """DataLoader workers are forked: the converter a worker inherits must not wait for
    conversion threads that exist only in the parent (it hung before to_rgb kept one
    single-threaded converter per process)."""
    import multiprocessing  # noqa: PLC0415

    decode_video_clips(shard_sample["mp4"], [0.0], 2)  # the parent converts first
    child = multiprocessing.get_context("fork").Process(
        target=_decode_in_child, args=(shard_sample["mp4"],)
    )
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0


def test_target_fps_resamples_by_nearest_frame(shard_sample):
    mp4 = shard_sample["mp4"]
    frames = naive_frames(mp4)
    fps = json.loads(shard_sample["json"])["fps"]
    clip = decode_video_clips(mp4, [1.0], 4, target_fps=fps / 4)[0].numpy()
    assert np.array_equal(clip, np.stack([frames[round(fps) + 4 * i] for i in range(4)]))


def test_past_the_end_repeats_the_last_frame_and_short_side(shard_sample):
    mp4 = shard_sample["mp4"]
    frames = naive_frames(mp4)
    n, fps = len(frames), json.loads(shard_sample["json"])["fps"]
    clip = decode_video_clips(mp4, [(n - 2) / fps], 4)[0].numpy()
    assert np.array_equal(clip[2], frames[-1]) and np.array_equal(clip[3], frames[-1])
    small = decode_video_clips(mp4, [0.0], 2, short_side=64)
    assert min(small.shape[2:4]) == 64


def keyframe_times(src) -> list[float]:
    """Times (s from the stream start) of the video stream's keyframes, from the demuxer."""
    with open_media(src) as c:
        s = c.streams.video[0]
        t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        return sorted(
            float(p.pts * p.time_base) - t0
            for p in c.demux(s)
            if p.is_keyframe and p.pts is not None
        )


def check_clips_on_keyframes(src, fps: float, starts: list[float]) -> list[float]:
    """Decodes 3-frame clips (stride 2) on keyframes and checks them against a full decode:
    each clip starts on the last keyframe at or before its requested start. Returns the
    clips' starts."""
    keys, frames = keyframe_times(src), naive_frames(src)
    spec = ClipSpec(3, frame_stride=2)
    with open_media(src) as c:
        got, clip_starts = decode_clips_on_keyframes(c, starts, spec.frame_times(0.0, fps), 1)
    want = [max(k for k in keys if k <= s + 1e-6) for s in starts]
    assert clip_starts == pytest.approx(want, abs=1e-6)
    assert np.array_equal(np.stack(got), expected_clips(frames, clip_starts, spec, fps))
    return clip_starts


def test_clips_on_keyframes_start_on_the_keyframe_before(shard_sample):
    mp4 = shard_sample["mp4"]
    fps = json.loads(shard_sample["json"])["fps"]
    keys = keyframe_times(mp4)
    assert len(keys) >= 2 and keys[0] == 0.0  # a keyframe at least every second
    # mid-GOP, one frame before a keyframe, on one, and a clip that runs past the end
    starts = [keys[1] - 1 / fps, keys[1] + 0.4, keys[1], 0.0, keys[-1] + 1 / fps]
    check_clips_on_keyframes(mp4, fps, starts)
    frames = naive_frames(mp4)
    with open_media(mp4) as c:
        last, _ = decode_clips_on_keyframes(c, [keys[-1]], [0.0, len(frames) / fps], 1)
    assert np.array_equal(last[1], frames[-1])  # past the end: the last frame


@pytest.mark.skipif(not MEDIA.is_dir(), reason="shared/media not available")
@pytest.mark.parametrize("name", ["audioset_clip_h264_aac.mp4", "kinetics_clip_h264_noaudio.mp4"])
def test_clips_on_keyframes_real_h264(name):
    """Real clips as data_prep stores them (re-encoded with a keyframe at least every second)."""
    mp4 = convert(MEDIA / name, EncodeSettings()).mp4
    with open_media(mp4) as c:
        fps = probe_video(c).fps
    starts = check_clips_on_keyframes(mp4, fps, [0.3, 2.5, 4.1, 7.9])
    assert len(set(starts)) == 4 and all(s > r - 1.0 for s, r in zip(starts, [0.3, 2.5, 4.1, 7.9]))


@pytest.mark.skipif(not MEDIA.is_dir(), reason="shared/media not available")
def test_clips_on_keyframes_avi_start_where_asked():
    """AVI timestamps are not trusted for seeking: the clips start at the requested times."""
    path = MEDIA / "ucf_style_mpeg4_mp3.avi"
    with open_media(path) as c:
        fps = probe_video(c).fps
    spec, starts = ClipSpec(3, frame_stride=2), [round(2.3 * fps) / fps, 0.0]
    with open_media(path) as c:
        got, clip_starts = decode_clips_on_keyframes(c, starts, spec.frame_times(0.0, fps), 1)
    assert clip_starts == starts
    assert np.array_equal(np.stack(got), expected_clips(naive_frames(path), starts, spec, fps))


@pytest.mark.parametrize("reader", ["libsndfile", "ffmpeg"])
def test_shard_flac_loads_exactly(shard_sample, reader, monkeypatch):
    if reader == "ffmpeg":
        monkeypatch.setattr(audio_decode, "soundfile", None)
    else:
        assert audio_decode.soundfile is not None  # a declared dependency: fast path tested
    assert (audio_decode._shard_flac(shard_sample["flac"], 16000) is not None) == (
        reader != "ffmpeg"
    )
    meta = json.loads(shard_sample["json"])
    wave, has_audio = load_audio(shard_sample["flac"], 16000)
    assert has_audio and wave.dtype == torch.float32
    assert len(wave) == meta["audio_num_samples"]
    with open_media(shard_sample["flac"]) as c:
        raw = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)[0]
    assert np.allclose(wave.numpy(), raw / 32768.0)


def _flac(path: Path, rate: int, channels: int, fmt: str = "s16") -> bytes:
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)  # 1 s
    pcm = (np.tile(tone, (channels, 1)) * 0.5 * 32767).astype(np.int16)  # [C, S]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono" if channels == 1 else "stereo")
        stream.format = fmt
        frame = av.AudioFrame.from_ndarray(
            pcm.T.reshape(1, -1).copy(), format="s16", layout=stream.layout.name
        )
        frame.rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path.read_bytes()


def test_flac_that_libsndfile_does_not_take_goes_through_ffmpeg(tmp_path, shard_sample):
    """Stereo, another rate, 24-bit, truncated or bit-flipped FLAC and non-FLAC bytes are
    left to FFmpeg: the same result as without libsndfile (a MediaError for broken files)."""
    flac = shard_sample["flac"]
    flipped = bytearray(flac)
    for i in range(2000, len(flipped), 997):
        flipped[i] ^= 0xFF
    cases = {
        "stereo": _flac(tmp_path / "stereo.flac", 16000, 2),
        "44.1 kHz": _flac(tmp_path / "rate.flac", 44100, 1),
        "24-bit": _flac(tmp_path / "s32.flac", 16000, 1, "s32"),
        "truncated": flac[: len(flac) // 2],
        "bit flips": bytes(flipped),
        "mp4": shard_sample["mp4"],
    }
    for name, data in cases.items():
        assert audio_decode._shard_flac(data, 16000) is None, name

    def ffmpeg_only(data):
        keep, audio_decode.soundfile = audio_decode.soundfile, None
        try:
            return load_audio(data, 16000)
        except MediaError as err:
            return type(err)
        finally:
            audio_decode.soundfile = keep

    for name, data in cases.items():
        try:
            got = load_audio(data, 16000)
        except MediaError as err:
            got = type(err)
        ref = ffmpeg_only(data)
        if isinstance(ref, tuple):
            assert isinstance(got, tuple) and torch.equal(got[0], ref[0]), name
        else:
            assert got is ref, name
    assert ffmpeg_only(cases["truncated"]) is MediaError


def test_flac_windows_equal_slices_of_the_whole_recording(shard_sample):
    flac = shard_sample["flac"]
    whole, _ = load_audio(flac, 16000)
    n = len(whole)
    with FlacWindows.open(flac, 16000) as windows:
        assert len(windows) == n == json.loads(shard_sample["json"])["audio_num_samples"]
        for a, b in [(0, 100), (n // 3, n // 3 + 4321), (n - 5000, n), (n - 100, n + 500)]:
            assert torch.equal(windows[a:b], whole[a:b]), (a, b)
    assert FlacWindows.open(shard_sample["mp4"], 16000) is None  # not FLAC
    assert FlacWindows.open(flac, 44100) is None  # another rate: the FFmpeg path resamples


def test_flac_windows_of_a_truncated_file(shard_sample):
    """The header still promises every sample: a window in the part that is left decodes as
    in the intact file (corruption outside the windows is not seen, as for video frames
    outside a clip); one past the cut falls back to a whole decode, which fails as without
    windows (MediaError: the loader skips and counts the sample)."""
    flac = shard_sample["flac"]
    whole, _ = load_audio(flac, 16000)
    cut = flac[: len(flac) // 2]
    with FlacWindows.open(cut, 16000) as windows:
        assert len(windows) == len(whole)
        assert torch.equal(windows[100:2100], whole[100:2100])
        with pytest.raises(MediaError):
            windows[len(whole) - 2000 : len(whole)]


def _cut_at_a_frame_boundary(flac: bytes) -> tuple[bytes, int]:
    """``flac`` cut just before the sync code (0xFFF8) of a frame past the middle, where the
    whole decode (libsndfile refuses it, FFmpeg takes it) gives no error, only fewer samples
    than the header says; and that number."""
    with FlacWindows.open(flac, 16000) as windows:
        n = len(windows)  # the header's sample count
    pos = len(flac) // 2
    while (pos := flac.find(b"\xff\xf8", pos + 1)) > 0:
        try:
            wave, _ = load_audio(flac[:pos], 16000)
        except MediaError:
            continue
        if 0 < len(wave) < n:
            return flac[:pos], len(wave)
    raise AssertionError("no cut at a frame boundary found")


def test_a_flac_cut_at_a_frame_boundary_is_a_corrupt_sample(shard_sample):
    """Cut between two frames, the file decodes without an error but ends early: a window past
    the cut is a MediaError (the loader skips and counts the sample) instead of the end of the
    recording moved back under the requested start; windows before the cut read as intact."""
    flac = shard_sample["flac"]
    whole, _ = load_audio(flac, 16000)
    cut, short = _cut_at_a_frame_boundary(flac)
    with FlacWindows.open(cut, 16000) as windows:
        assert len(windows) == len(whole) > short
        assert torch.equal(windows[100:2100], whole[100:2100])
        with pytest.raises(MediaError, match=f"FLAC truncated: {short} of {len(whole)} samples"):
            windows[len(whole) - 2000 : len(whole)]
    with FlacWindows.open(cut, 16000) as windows, pytest.raises(MediaError, match="truncated"):
        windows[0 : len(whole)]  # the whole recording (a window longer than the clip)


def test_the_loader_skips_and_counts_a_flac_cut_at_a_frame_boundary(synth, tmp_path):
    """Through the eval loader, with audio windows that reach the recording's end (10.24 s,
    longer than the clips): the sample with the cut FLAC is skipped and counted, the others
    are read."""
    cut_key = []

    def cut(s: dict, i: int) -> dict:
        if i == 4:
            s["flac"] = _cut_at_a_frame_boundary(s["flac"])[0]
            cut_key.append(json.loads(s["json"])["id"])
        return s

    broken = rewrite(synth, tmp_path / "broken", cut)
    args = dict(num_frames=2, frame_stride=2, crop_size=16, audio_frames=1024, train_split=None)
    prep = AVDataModule(str(broken), **args).preprocessing()
    batches = list(make_eval_loader(str(broken), None, prep, batch_size=3))
    assert [k for b in batches for k in b.extra["skipped_keys"]] == cut_key
    assert sum(len(b) for b in batches) == len(samples_of(synth)) - 1


def test_a_failed_window_read_of_an_intact_flac_gives_the_recording(shard_sample, monkeypatch):
    """A read that fails on an intact file (a seek libsndfile refuses) falls back to the whole
    decode: the same samples, at the requested place."""
    flac = shard_sample["flac"]
    whole, _ = load_audio(flac, 16000)
    n = len(whole)
    with FlacWindows.open(flac, 16000) as windows:

        def refuse(*args):
            raise RuntimeError("seek refused")

        monkeypatch.setattr(windows._f, "seek", refuse)
        assert torch.equal(windows[n - 3000 : n - 1000], whole[n - 3000 : n - 1000])


def test_same_rate_stereo_packed_int_and_planar_float_are_downmixed(tmp_path):
    """The no-resampling path for layouts other than shard FLAC: packed stereo int16 (WAV) and
    planar stereo float (AAC decodes to fltp), against a per-frame reference decode."""
    import wave as wavemod

    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, size=(16000 * 2, 2), dtype=np.int16)  # [S, C] 2 s
    wav = tmp_path / "stereo.wav"
    with wavemod.open(str(wav), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    got, has_audio = load_audio(wav, 16000)
    assert has_audio and got.dtype == torch.float32 and len(got) == len(pcm)
    assert np.allclose(got.numpy(), pcm.astype(np.float64).mean(axis=1) / 32768.0, atol=1e-6)

    aac = tmp_path / "stereo.m4a"
    tone = np.sin(2 * np.pi * 440 * np.arange(32000) / 16000).astype(np.float32)
    planes = np.stack([0.5 * tone, 0.25 * tone])  # [C, S]
    with av.open(str(aac), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="stereo")
        for i in range(0, planes.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(planes[:, i : i + 1024].copy(), "fltp", "stereo")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with open_media(aac) as c:
        assert c.streams.audio[0].rate == 16000
        ref = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)  # [C, S]
    got, has_audio = load_audio(aac, 16000)
    assert has_audio and np.allclose(got.numpy(), ref.mean(axis=0), atol=1e-7)
    assert 0.3 < float(got.abs().max()) < 0.45  # (0.5 + 0.25) / 2 after AAC


def test_raw_file_audio_is_resampled_and_downmixed(synth):
    raw = sorted((synth / "raw" / "UCF-101").rglob("*.mp4"))
    with_audio = [p for p in raw if av.open(str(p)).streams.audio]
    src = with_audio[0]
    with av.open(str(src)) as c:
        stream = c.streams.audio[0]
        duration, rate = float(stream.duration * stream.time_base), stream.rate
    assert rate != 16000
    wave, has_audio = load_audio(src, 16000)
    assert has_audio and abs(len(wave) / 16000 - duration) < 0.05
    assert 0.0 < float(wave.abs().max()) <= 1.0


def test_errors_are_clear(tmp_path, shard_sample):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_audio(tmp_path / "missing.mp4")
    with pytest.raises(MediaError):
        decode_video_clips(bytes(range(256)) * 64, [0.0], 2)
    with pytest.raises(MediaError, match="no video stream"):
        decode_video_clips(shard_sample["flac"], [0.0], 2)
    assert load_audio(shard_sample["mp4"])[1] is False


def test_clip_spec_starts():
    spec = ClipSpec(4, frame_stride=2)
    assert spec.span_s(10.0) == pytest.approx(0.7)
    assert spec.uniform_starts(3.0, 10.0, 3) == pytest.approx([0.0, 1.15, 2.3], abs=0.051)
    assert spec.uniform_starts(0.5, 10.0, 2) == [0.0, 0.0]  # shorter than a clip
    gen = torch.Generator().manual_seed(0)
    starts = spec.random_starts(3.0, 10.0, 50, gen)
    assert min(starts) >= 0 and max(starts) <= 2.3 + 1e-9 and len(set(starts)) > 5
    with pytest.raises(ValueError):
        ClipSpec(4, frame_stride=2, target_fps=5.0)


@pytest.mark.skipif(not MEDIA.is_dir(), reason="shared/media not available")
@pytest.mark.parametrize(
    "name",
    ["ucf_style_mpeg4_mp3.avi", "audioset_clip_h264_aac.mp4", "kinetics_clip_h264_noaudio.mp4"],
)
def test_real_media(name):
    path = MEDIA / name
    frames = naive_frames(path)
    with open_media(path) as c:
        info = probe_video(c)
    spec = ClipSpec(8, frame_stride=2)
    starts = spec.uniform_starts(info.duration, info.fps, 3)
    clips = decode_video_clips(path, starts, 8, frame_stride=2)
    assert np.array_equal(
        clips.reshape(-1, *clips.shape[2:]).numpy(), expected_clips(frames, starts, spec, info.fps)
    )
    wave, has_audio = load_audio(path)
    assert has_audio == ("noaudio" not in name)
    if has_audio:
        assert abs(len(wave) / 16000 - info.duration) < 0.2
