"""Video stored as JPEG frames (``data_prep --jpeg-fps``, DESIGN section 3's alternative for
sparse-frame recipes): the loader takes the image shown at each requested time."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avssl.data.datamodule import AVDataModule, make_eval_loader
from avssl.data.decode import decode_jpeg, open_media, to_rgb
from avssl.data.sampling import build_processor
from tests.data.conftest import JPEG_FPS as FPS
from tests.data.conftest import rewrite, samples_of


def test_prepared_samples_hold_one_jpeg_per_half_second(synth, jpeg_synth):
    manifest = json.loads((jpeg_synth / "manifest.json").read_text())
    assert manifest["prep"]["jpeg_fps"] == FPS and manifest["prep"]["video_codec"] == "mjpeg"
    for s, ref in zip(samples_of(jpeg_synth), samples_of(synth), strict=True):
        meta, mp4_meta = json.loads(s["json"]), json.loads(ref["json"])
        frames = sorted(k for k in s if k.endswith(".jpg"))
        assert "mp4" not in s and frames == [f"f{i:03d}.jpg" for i in range(meta["num_frames"])]
        assert meta["fps"] == FPS and meta["video_format"] == "jpeg"
        assert meta["duration"] == pytest.approx(mp4_meta["duration"], abs=0.05)
        assert meta["num_frames"] == math.floor(mp4_meta["num_frames"] / mp4_meta["fps"] * FPS
                                                - 1e-9) + 1  # fmt: skip
        assert (meta["width"], meta["height"]) == (mp4_meta["width"], mp4_meta["height"])
        # the same picture as the mp4's first frame (both coded from the source's first frame;
        # a colour-range slip would cost > 10 dB)
        with open_media(ref["mp4"]) as c:
            first = to_rgb(next(c.decode(video=0))).astype(np.float64)
        mse = np.mean((decode_jpeg(s["f000.jpg"]).astype(np.float64) - first) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30


def test_processor_takes_the_image_shown_at_each_time(jpeg_synth):
    prep = {"num_frames": 2, "frame_stride": 1, "crop_size": 32, "fbank": {"target_frames": 64}}
    evaluate = build_processor(prep, "eval", 3, "aligned", train=False)
    train = build_processor(prep, "train", 2, "aligned", train=True, on_device=True,
                            keyframe_starts=True)  # fmt: skip
    for s in samples_of(jpeg_synth):
        meta = json.loads(s["json"])
        out = evaluate(s, torch.Generator())
        n, want = meta["num_frames"], []
        for start in out["clip_start"]:
            times = evaluate.spec.frame_times(start, FPS)
            idx = [min(n - 1, math.ceil(t * FPS - 0.5 - 1e-6)) for t in times]
            clip = torch.stack([torch.from_numpy(decode_jpeg(s[f"f{i:03d}.jpg"])) for i in idx])
            want.append(evaluate.video_tf(clip, torch.Generator()))
        assert torch.equal(out["video"], torch.stack(want))
        got = train(s, torch.Generator().manual_seed(0))
        u8, affine = got["video"]
        assert u8.shape == (2, 2, 32, 32, 3) and u8.dtype == torch.uint8
        assert all(0 <= t <= meta["duration"] for t in got["clip_start"])


def test_loader_reads_jpeg_shards_and_skips_broken_frames(jpeg_synth, small_args, tmp_path):
    dm = AVDataModule(str(jpeg_synth), **small_args(train_split=None, val_split=None))
    prep = dm.preprocessing()
    batches = list(make_eval_loader(str(jpeg_synth), None, prep, batch_size=4))
    assert sum(len(b) for b in batches) == len(samples_of(jpeg_synth))
    assert all(b.video.shape[1:] == (3, 4, 32, 32) and bool(b.video_mask.all()) for b in batches)
    assert sum(b.extra["skipped"] for b in batches) == 0
    train = next(iter(dm.train_dataloader()))
    assert train.video.shape == (2, 3, 4, 32, 32)

    broken = []

    def damage(s: dict, i: int) -> dict:
        if i == 1:  # every frame cut short
            s = {k: (v[: len(v) // 2] if k.endswith(".jpg") else v) for k, v in s.items()}
        elif i == 4:  # frames after the first missing, the json still counting them
            s = {k: v for k, v in s.items() if not k.endswith(".jpg") or k == "f000.jpg"}
        else:
            return s
        broken.append(json.loads(s["json"])["id"])
        return s

    bad = rewrite(jpeg_synth, tmp_path / "broken", damage)
    batches = list(make_eval_loader(str(bad), None, prep, batch_size=4))
    assert sorted(k for b in batches for k in b.extra["skipped_keys"]) == sorted(broken)
    assert sum(len(b) for b in batches) == len(samples_of(jpeg_synth)) - 2
