"""The shard writer on sources with awkward timing and geometry: AVI's shuffled timestamps,
streams without timestamps, gaps in the audio, rotated and anamorphic video, cover art,
empty or misplaced audio tracks, and truncated files whose header gives no frame count."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avssl.data import media_encode
from avssl.data.writer import EncodeSettings, MediaError, convert
from tests.media import MEDIA

UCF = MEDIA / "ucf_style_mpeg4_mp3.avi"
KINETICS = MEDIA / "kinetics_clip_h264_noaudio.mp4"


def _frame(i: int, w: int = 64, h: int = 48) -> av.VideoFrame:
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (i * 37) % 256  # the frame's index, readable after encoding
    return av.VideoFrame.from_ndarray(img, format="rgb24")


def _write(path: Path, fmt: str, n: int, fps: int = 25, vcodec: str | None = "libx264",
           audio: list[tuple[float, float]] | None = None, video_start: int = 0,
           sar: Fraction | None = None, no_pts: bool = False,
           acodec: str | None = None) -> Path:  # fmt: skip
    """``n`` frames at ``fps`` and, per ``audio`` entry (start s, seconds), a 440 Hz tone of
    16 kHz PCM / AAC at that timestamp (a gap between entries is a gap in the timestamps)."""
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(vcodec, rate=fps) if vcodec else None
        a = None
        if audio is not None:
            acodec = acodec or ("aac" if fmt == "mp4" else "pcm_s16le")
            a = out.add_stream(acodec, rate=16000, layout="mono")
        if v is not None:
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
            if sar is not None:
                v.codec_context.sample_aspect_ratio = sar
            for i in range(n):
                f = _frame(i)
                if not no_pts:
                    f.pts, f.time_base = video_start + i, Fraction(1, fps)
                for packet in v.encode(f):
                    out.mux(packet)
            for packet in v.encode():
                out.mux(packet)
        for start, seconds in audio or []:
            t = np.arange(int(seconds * 16000)) / 16000
            x = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            for s in range(0, len(x), 1024):
                f = av.AudioFrame.from_ndarray(x[None, s : s + 1024].copy(), "s16", "mono")
                f.sample_rate, f.pts = 16000, int(start * 16000) + s
                f.time_base = Fraction(1, 16000)
                for packet in a.encode(f):  # type: ignore[union-attr]
                    out.mux(packet)
        if a is not None:
            for packet in a.encode():
                out.mux(packet)
    return path


def _stored_indices(mp4: bytes) -> list[int]:
    with av.open(io.BytesIO(mp4)) as c:
        tops = [f.to_ndarray(format="rgb24")[:20].mean() for f in c.decode(video=0)]
    return [int(round(t / 37)) for t in tops]  # indices < 7 are unambiguous


def test_avi_frames_are_stored_once_each_in_decode_order(monkeypatch):
    """UCF101's MPEG-4 AVIs come out of the decoder in display order with shuffled
    timestamps (1, 2, 4, 3, 5, 7, 6, ...): placed by timestamp, 54 of the 164 source frames
    were dropped and 54 stored twice, and the video was taken to start 40 ms late."""
    if not UCF.is_file():
        pytest.skip(f"real clip not found: {UCF}")
    with av.open(str(UCF)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert any(b < a for a, b in zip(pts, pts[1:]))  # the file is the awkward case
    sources: list[int] = []
    emit, push = media_encode._VideoEncoder._emit, media_encode._VideoEncoder.push

    def logged_push(self, frame):
        self.current = self.decoded
        return push(self, frame)

    def logged_emit(self, frame):
        sources.append(self.current)
        return emit(self, frame)

    monkeypatch.setattr(media_encode._VideoEncoder, "push", logged_push)
    monkeypatch.setattr(media_encode._VideoEncoder, "_emit", logged_emit)
    conv = convert(UCF, EncodeSettings())
    assert sources == list(range(len(pts)))
    with av.open(str(UCF)) as c:  # the audio starts with the first frame: nothing cut
        first = next(c.decode(audio=0))
        audio_s = sum(f.samples for f in c.decode(audio=0)) + first.samples
        rate = first.sample_rate
    assert conv.meta["audio_num_samples"] == pytest.approx(audio_s / rate * 16000, abs=16)


def test_frames_without_timestamps_keep_their_rate(tmp_path):
    """Raw H.264 has no timestamps: frames are timed at the source's 60 fps, then dropped to
    the 30 fps cap (they were timed at the capped rate: 4 s became 8 s)."""
    src = _write(tmp_path / "raw.h264", "h264", n=240, fps=60, no_pts=True)
    meta = convert(src, EncodeSettings()).meta
    assert (meta["fps"], meta["num_frames"], meta["duration"]) == (30.0, 120, 4.0)


def test_a_gap_in_the_audio_timestamps_stays_silent(tmp_path):
    """Audio 0-2 s, nothing, then 3-5 s: the stored audio keeps the gap (it was closed, and
    everything after 2 s came 1 s early)."""
    src = _write(tmp_path / "gap.mkv", "matroska", n=125, audio=[(0.0, 2.0), (3.0, 2.0)])
    conv = convert(src, EncodeSettings())
    wave = conv.wave
    assert wave is not None and len(wave) == pytest.approx(5 * 16000, abs=160)
    assert np.abs(wave[int(2.05 * 16000) : int(2.95 * 16000)]).max() == 0
    assert np.abs(wave[int(3.05 * 16000) : int(3.5 * 16000)]).max() > 0.1


def _portrait(tmp_path: Path) -> Path:
    """The Kinetics clip with a -90 degree display matrix in its track header, as a phone
    writes for portrait video (players show it 256 wide, 340 high)."""
    data = KINETICS.read_bytes()
    ident = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    turned = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    at = data.index(ident, data.index(b"tkhd"))
    src = tmp_path / "portrait.mp4"
    src.write_bytes(data[:at] + turned + data[at + len(ident) :])
    return src


def test_rotated_video_is_stored_upright(tmp_path):
    """A phone's portrait clip: a 90 degree display matrix on 340x256 coded frames is shown
    256 wide and stored so (it was stored sideways)."""
    if not KINETICS.is_file():
        pytest.skip(f"real clip not found: {KINETICS}")
    src = _portrait(tmp_path)
    with av.open(str(src)) as c:
        first = next(c.decode(video=0))
        assert first.rotation == -90 and (first.width, first.height) == (340, 256)
        coded = first.to_ndarray(format="rgb24").astype(np.float32)
    plain = convert(KINETICS, EncodeSettings()).meta
    conv = convert(src, EncodeSettings())
    assert (conv.meta["width"], conv.meta["height"]) == (plain["height"], plain["width"])
    with av.open(io.BytesIO(conv.mp4)) as c:
        img = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    assert img.shape[:2] == (conv.meta["height"], conv.meta["width"])

    def error(turns: int) -> float:  # the coded frame turned, at the stored size, against img
        turned = torch.from_numpy(np.rot90(coded, turns).copy()).permute(2, 0, 1)[None]
        small = torch.nn.functional.interpolate(turned, size=img.shape[:2], mode="area")
        return float((small[0].permute(1, 2, 0).numpy() - img).__abs__().mean())

    assert error(3) < 0.25 * error(1)  # turned clockwise, as players show it


def test_anamorphic_video_is_stored_with_square_pixels(tmp_path):
    """64x48 coded with a 4:3 sample aspect ratio shows as 85.3x48 (16:9); it was stored
    64 wide (squeezed)."""
    src = _write(tmp_path / "sar.mp4", "mp4", n=25, sar=Fraction(4, 3))
    meta = convert(src, EncodeSettings()).meta
    assert (meta["width"], meta["height"]) == (84, 48)  # 64 * 4/3 = 85.3 wide, even: 84


def test_cover_art_is_not_a_video(tmp_path):
    """An MP3's embedded picture is a one-frame 'video' stream marked attached_pic: the song
    was stored as 1 frame of video (33 ms) beside 5 s of audio."""
    src = tmp_path / "song.mp3"
    with av.open(str(src), "w", format="mp3") as out:
        a = out.add_stream("libmp3lame", rate=44100, layout="mono")
        ctx = av.CodecContext.create("png", "w")
        ctx.width = ctx.height = 32
        ctx.pix_fmt, ctx.time_base = "rgb24", Fraction(1, 1)
        img = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 99, np.uint8), format="rgb24")
        pic = out.add_stream("png")
        pic.width = pic.height = 32
        pic.pix_fmt = "rgb24"
        pic.disposition = av.stream.Disposition.attached_pic
        for packet in [*ctx.encode(img), *ctx.encode(None)]:
            packet.stream, packet.pts, packet.dts = pic, 0, 0
            out.mux(packet)
        x = (np.sin(np.arange(5 * 44100) * 0.06) * 0.3).astype(np.float32)
        resampler = av.AudioResampler(format=a.codec_context.format.name, layout="mono")
        for s in range(0, len(x), 1152):
            f = av.AudioFrame.from_ndarray(x[None, s : s + 1152].copy(), "fltp", "mono")
            f.sample_rate = 44100
            for o in resampler.resample(f):
                for packet in a.encode(o):
                    out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    meta = convert(src, EncodeSettings(), require_video=False).meta
    assert meta["has_video"] is False and meta["duration"] == pytest.approx(5.0, abs=0.1)
    with pytest.raises(MediaError, match="no video stream"):  # a video dataset refuses it
        convert(src, EncodeSettings())


def test_an_audio_track_without_packets_means_no_sound(tmp_path):
    """A placeholder audio track with no packet: the clip is kept without audio (it failed
    as 'audio undecodable')."""
    src = _write(tmp_path / "empty.mkv", "matroska", n=50, audio=[])
    meta = convert(src, EncodeSettings()).meta
    assert meta["has_audio"] is False and meta["num_frames"] == 50


def test_audio_that_ends_before_the_first_frame_is_no_audio(tmp_path):
    """Audio 0-0.5 s, video from 1 s: after alignment nothing is left; it was stored as
    has_audio true with 0 samples."""
    src = _write(tmp_path / "early.mkv", "matroska", n=50, video_start=25, audio=[(0.0, 0.5)])
    meta = convert(src, EncodeSettings()).meta
    assert meta["has_audio"] is False and meta["audio_num_samples"] == 0
    assert meta["num_frames"] == 50  # 2 s of video from 1 s: not a truncated file


def test_a_cut_matroska_file_is_a_truncation_failure(tmp_path):
    """WebM / Matroska headers give no frame count, so a cut download was stored short; the
    frames' span is now checked against the header's duration."""
    src = _write(tmp_path / "whole.mkv", "matroska", n=100, audio=[(0.0, 4.0)])
    assert convert(src, EncodeSettings()).meta["num_frames"] == 100
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated: frames span"):
        convert(cut, EncodeSettings())


@pytest.mark.parametrize("fmt", ["matroska", "webm"])
def test_matroska_video_shorter_than_its_audio_is_whole(tmp_path, fmt):
    """2 s of video beside 5 s of audio: checked against the container's duration (the longest
    stream) the video looked cut; each track's ``DURATION`` tag is its own end. Cut in the
    audio, the file is a truncation failure by the audio's tag."""
    vcodec = "libx264" if fmt == "matroska" else "libvpx"
    acodec = "pcm_s16le" if fmt == "matroska" else "libopus"
    src = _write(
        tmp_path / f"short.{fmt}", fmt, 50, vcodec=vcodec, audio=[(0.0, 5.0)], acodec=acodec
    )
    with av.open(str(src)) as c:
        tags = [s.metadata.get("DURATION") for s in c.streams]
        assert c.streams.video[0].duration is None and all(tags), tags
    conv = convert(src, EncodeSettings())
    assert conv.meta["num_frames"] == 50 and conv.meta["duration"] == pytest.approx(2.0)
    assert conv.meta["audio_num_samples"] == pytest.approx(5 * 16000, rel=0.01)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 7 // 10])
    with av.open(str(cut)) as c:  # every frame of video is still there
        assert sum(1 for _ in c.decode(video=0)) == 50
    with pytest.raises(MediaError, match="truncated: decoded .* of 5.0. s of audio"):
        convert(cut, EncodeSettings())


def test_tag_seconds_reads_matroska_durations():
    assert media_encode._tag_seconds("00:00:02.000000000") == pytest.approx(2.0)
    assert media_encode._tag_seconds("01:02:03.5") == pytest.approx(3723.5)
    for bad in (None, "", "2.0", "aa:bb:cc", "00:00:00.000"):
        assert media_encode._tag_seconds(bad) is None


def test_a_cut_wav_file_is_a_truncation_failure(tmp_path):
    """FFmpeg takes a WAV's length from the file size, so a cut ESC-50 file was stored as a
    shorter clip; its data chunk's declared size now says it is cut."""
    src = tmp_path / "whole.wav"
    with av.open(str(src), "w", format="wav") as out:
        a = out.add_stream("pcm_s16le", rate=44100, layout="mono")
        f = av.AudioFrame.from_ndarray(np.ones((1, 5 * 44100), np.int16) * 100, "s16", "mono")
        f.sample_rate, f.pts = 44100, 0
        for packet in [*a.encode(f), *a.encode()]:
            out.mux(packet)
    meta = convert(src, EncodeSettings(), require_video=False).meta
    assert meta["duration"] == pytest.approx(5.0, abs=0.01)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 4 // 10])
    with pytest.raises(MediaError, match="truncated: WAV data holds"):
        convert(cut, EncodeSettings(), require_video=False)


def test_a_channel_layout_change_mid_stream_is_converted(tmp_path):
    """Joined MP2 files, mono then stereo: the resampler is set up again (it failed with
    'Frame does not match AudioResampler setup')."""
    parts = []
    for channels in (1, 2):
        path = tmp_path / f"part{channels}.mp2"
        layout = "mono" if channels == 1 else "stereo"
        with av.open(str(path), "w", format="mp2") as out:
            a = out.add_stream("mp2", rate=44100, layout=layout)
            x = np.tile((np.sin(np.arange(2 * 44100) * 0.06) * 8000).astype(np.int16), (1, 1))
            data = np.repeat(x, channels, 0).T.reshape(1, -1).copy()
            f = av.AudioFrame.from_ndarray(data, "s16", layout)
            f.sample_rate, f.pts = 44100, 0
            for packet in [*a.encode(f), *a.encode()]:
                out.mux(packet)
        parts.append(path.read_bytes())
    src = tmp_path / "joined.mp2"
    src.write_bytes(b"".join(parts))
    meta = convert(src, EncodeSettings(), require_video=False).meta
    assert meta["duration"] == pytest.approx(4.0, abs=0.1)


def test_the_raw_file_decoder_turns_rotated_frames_upright(tmp_path):
    """``avssl.embed`` decodes raw files with :func:`avssl.data.decode.to_rgb`: a portrait
    clip's frames come out upright as in the shards (they came out sideways)."""
    from avssl.data.decode import to_rgb

    if not KINETICS.is_file():
        pytest.skip(f"real clip not found: {KINETICS}")
    src = _portrait(tmp_path)
    with av.open(str(KINETICS)) as c:
        plain = to_rgb(next(c.decode(video=0)))
    with av.open(str(src)) as c:
        upright = to_rgb(next(c.decode(video=0)))
    assert plain.shape == (256, 340, 3) and upright.shape == (340, 256, 3)
    assert np.array_equal(upright, np.rot90(plain, 3))  # a quarter turn clockwise


@pytest.mark.parametrize("fmt, codec", [("mpegts", "mpeg2video"), ("mpegts", "libx264")])
def test_interlaced_video_keeps_its_frame_rate(tmp_path, fmt, codec):
    """25i sources (broadcast MPEG-2, camcorder H.264) are stored at 25 fps, not at the field
    rate, and every frame once."""
    path = tmp_path / f"interlaced_{codec}.ts"
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(codec, rate=25)
        v.width, v.height, v.pix_fmt = 128, 96, "yuv420p"
        if codec == "libx264":
            v.options = {"x264-params": "interlaced=1:tff=1", "flags": "+ildct+ilme"}
        else:
            v.options = {"flags": "+ildct+ilme", "top": "1"}
        for i in range(50):
            for packet in v.encode(_frame(i, 128, 96)):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).interlaced_frame
    conv = convert(path, EncodeSettings(), require_video=True)
    assert conv.meta["fps"] == 25.0 and conv.meta["num_frames"] == 50
    assert _stored_indices(conv.mp4)[:7] == list(range(7))
