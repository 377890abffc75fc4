"""``avssl.embed`` on the real clips in shared/media with a bundle's own preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import avssl
from avssl import export
from avssl.cli import UserError
from avssl.data.audio_decode import load_audio
from avssl.data.decode import ClipSpec, decode_video_clips, open_media, probe_video
from avssl.data.fbank import FbankConfig, compute_fbank
from tests.media import MEDIA

CLIPS = {
    "audioset": MEDIA / "audioset_clip_h264_aac.mp4",
    "kinetics": MEDIA / "kinetics_clip_h264_noaudio.mp4",
    "ucf": MEDIA / "ucf_style_mpeg4_mp3.avi",
}
pytestmark = pytest.mark.skipif(not MEDIA.is_dir(), reason="shared/media not available")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fake_objectives):
    from tests.export.export_fakes import fake_checkpoint, randomize

    tmp = tmp_path_factory.mktemp("embed")
    obj = fake_objectives.TwoTower()
    randomize(obj, 7)
    torch.save(fake_checkpoint(obj, "TwoTower"), tmp / "m.ckpt")
    export.export_checkpoint(tmp / "m.ckpt", tmp / "b")
    return avssl.load_encoder(tmp / "b")


def reference(bundle, path: Path) -> dict:
    """One centred clip computed by hand from the bundle's settings (no loader transforms)."""
    prep = bundle.preprocessing
    spec = ClipSpec(prep["num_frames"], prep["frame_stride"], prep["target_fps"])
    with open_media(path) as c:
        info = probe_video(c)
    (start,) = spec.uniform_starts(info.num_frames / info.fps, info.fps, 1)
    clip = decode_video_clips(path, [start], spec.num_frames, frame_stride=spec.frame_stride)[0]
    s = prep["crop_size"]
    x = clip.permute(0, 3, 1, 2)  # [T, 3, H, W]
    h, w = x.shape[-2:]
    size = (max(s, round(h * s / min(h, w))), max(s, round(w * s / min(h, w))))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
    top, left = (size[0] - s) // 2, (size[1] - s) // 2
    x = x[..., top : top + s, left : left + s].float() / 255  # [T, 3, S, S]
    mean, std = torch.tensor(prep["video_mean"]), torch.tensor(prep["video_std"])
    x = ((x.permute(1, 0, 2, 3) - mean.view(3, 1, 1, 1)) / std.view(3, 1, 1, 1))[None]
    out = {"video": bundle.video(x)[0]}
    wave, has_audio = load_audio(path, 16000)
    out["audio"] = None
    if has_audio:
        fb = FbankConfig(**prep["fbank"])
        win = fb.samples_for_frames(fb.target_frames)
        centre = start + spec.span_s(info.fps) / 2
        a = min(max(0, len(wave) - win), max(0, round(centre * fb.sample_rate - win / 2)))
        spec_in = compute_fbank(wave[a : a + win], fb)[None, None]  # [1, 1, Ta, F]
        out["audio"] = bundle.audio(spec_in)[0]
    return out


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_embed_real_clips_matches_hand_made_pipeline(bundle, name):
    emb = avssl.embed(bundle, CLIPS[name])
    with torch.no_grad():
        ref = reference(bundle, CLIPS[name])
    assert emb["video"].shape == (192,) and torch.isfinite(emb["video"]).all()
    assert (emb["video"] - ref["video"]).abs().max() < 1e-4
    if name == "kinetics":  # no audio track: no audio embedding (None), never silence
        assert emb["audio"] is None and ref["audio"] is None
    else:
        assert emb["audio"].shape == (192,)
        assert (emb["audio"] - ref["audio"]).abs().max() < 1e-4


def test_embed_path_and_several_clips(bundle):
    one = avssl.embed(bundle.path, CLIPS["audioset"])  # a path works as well as a bundle
    three = avssl.embed(bundle, CLIPS["audioset"], num_clips=3)
    assert (one["video"] - avssl.embed(bundle, CLIPS["audioset"])["video"]).abs().max() == 0
    assert 1e-5 < (three["video"] - one["video"]).abs().max()  # other clips are averaged in


def test_embed_audio_only_file(bundle, tmp_path):
    path = tmp_path / "tone.wav"
    rate, seconds = 16000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    chirp = np.sin(2 * math.pi * (200 * t + 400 * t**2)) * (0.05 + 0.3 * t / seconds)
    samples = (chirp * 32767).astype(np.int16)[None]  # [1, S], rising in pitch and loudness
    with av.open(str(path), "w") as c:
        stream = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    emb = avssl.embed(bundle, path)
    assert emb["video"] is None and emb["audio"].shape == (192,)
    # by hand: the window centred on the recording, through the bundle's fbank and encoder
    fb = FbankConfig(**bundle.preprocessing["fbank"])
    wave, has_audio = load_audio(path, fb.sample_rate)
    win = fb.samples_for_frames(fb.target_frames)
    a = max(0, round(len(wave) / 2 - win / 2))
    assert has_audio and 0 < len(wave) - win  # the window is a part of the tone
    with torch.no_grad():
        ref = bundle.audio(compute_fbank(wave[a : a + win], fb)[None, None])[0]
    assert (emb["audio"] - ref).abs().max() < 1e-4


def test_embed_bad_media(bundle, tmp_path):
    with pytest.raises(UserError, match="no such media file"):
        avssl.embed(bundle, tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(UserError, match="junk.mp4") as err:
        avssl.embed(bundle, junk)
    assert str(err.value).count("junk.mp4") == 1  # one line, the path named once
    assert "cannot open media (Invalid data" in str(err.value)
    with pytest.raises(UserError, match="num_clips must be >= 1, got 0"):
        avssl.embed(bundle, CLIPS["audioset"], num_clips=0)
