"""Tests of the embedded synthetic audio-visual dataset (avssl.data.synthetic)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from avssl.data.synthetic import (
    event_frames,
    event_samples,
    generate,
    load_meta,
)
from avssl.data.synthetic_plan import PLAIN_VISUAL, held_out_groups
from avssl.data.synthetic_render import (
    DISTRACTOR_S,
    FLASH_MIX,
    flash_envelope,
    object_track,
    render_audio,
)

SMALL = dict(num_classes=3, clips_per_class=4, seed=0, min_duration=1.5, max_duration=2.5)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), workers=1, **SMALL)


@pytest.fixture(scope="module")
def meta(small: Path) -> dict:
    return load_meta(small)


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """Frames uint8 [T, H, W, 3], audio float [C, S] (or None) and its sample rate."""
    with av.open(str(path)) as con:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in con.decode(video=0)])
    with av.open(str(path)) as con:
        if not con.streams.audio:
            return frames, None, None
        rate = con.streams.audio[0].sample_rate
        audio = np.concatenate([f.to_ndarray() for f in con.decode(audio=0)], axis=1)
    return frames, audio, rate


@pytest.fixture(scope="module")
def decoded(small: Path, meta: dict) -> list[tuple]:
    return [_decode(small / c["file"]) for c in meta["clips"]]


def test_files_decode_with_meta_properties(small: Path, meta: dict, decoded: list) -> None:
    assert len(meta["clips"]) == 12
    for clip, (frames, audio, rate) in zip(meta["clips"], decoded):
        cls = clip["class"]
        assert re.fullmatch(rf"UCF-101/{cls}/v_{cls}_g\d\d_c\d\d\.mp4", clip["file"])
        with av.open(str(small / clip["file"])) as con:
            video = con.streams.video[0]
            assert video.codec_context.name == "h264"
            assert video.codec_context.pix_fmt == "yuv420p"
            assert video.average_rate == clip["fps"]
            assert len(con.streams.audio) == (1 if clip["has_audio"] else 0)
            if clip["has_audio"]:
                stream = con.streams.audio[0]
                assert stream.codec_context.name == "aac"
                assert stream.channels == clip["channels"]
        assert frames.shape == (clip["num_frames"], clip["height"], clip["width"], 3)
        assert clip["duration"] == pytest.approx(clip["num_frames"] / clip["fps"], abs=1e-5)
        assert 1.5 - 1 / clip["fps"] <= clip["duration"] <= 2.5 + 1 / clip["fps"]
        if clip["has_audio"]:
            assert rate == clip["sample_rate"]
            assert audio.shape[0] == clip["channels"]
            # AAC pads the last frame: at most one frame (1024 samples) plus priming beyond.
            assert 0 <= audio.shape[1] - clip["duration"] * rate < 2100


def test_format_variants_present(meta: dict) -> None:
    clips = meta["clips"]
    assert sum(not c["has_audio"] for c in clips) == 1
    assert {c["fps"] for c in clips} == {25, 15}
    assert {(c["width"], c["height"]) for c in clips} == {(128, 128), (160, 120)}
    assert {c["channels"] for c in clips if c["has_audio"]} == {1, 2}
    assert {c["sample_rate"] for c in clips if c["has_audio"]} == {22050, 44100}


def test_split_files_follow_ucf101(small: Path, meta: dict) -> None:
    lists = small / "ucfTrainTestlist"
    class_ind = lists.joinpath("classInd.txt").read_text().splitlines()
    names = [c["name"] for c in meta["classes"]]
    assert class_ind == [f"{i + 1} {n}" for i, n in enumerate(names)]
    all_files = {c["file"].split("/", 1)[1]: c for c in meta["clips"]}
    test_sets = []
    for split in (1, 2, 3):
        train = [
            ln.split(" ")
            for ln in lists.joinpath(f"trainlist0{split}.txt").read_text().splitlines()
        ]
        test = lists.joinpath(f"testlist0{split}.txt").read_text().splitlines()
        assert all(len(parts) == 2 for parts in train) and all(" " not in ln for ln in test)
        for rel, label in train:
            assert names[int(label) - 1] == rel.split("/")[0] == all_files[rel]["class"]
        train_files = {rel for rel, _ in train}
        assert train_files.isdisjoint(test) and train_files | set(test) == set(all_files)
        assert len(train) + len(test) == len(all_files)
        train_groups = {(all_files[r]["class"], all_files[r]["group"]) for r in train_files}
        assert train_groups.isdisjoint((all_files[r]["class"], all_files[r]["group"]) for r in test)
        assert {all_files[r]["class"] for r in test} == set(names)  # every class is tested
        test_sets.append(frozenset(test))
    assert len(set(test_sets)) == 3


def test_group_split_matches_ucf101_for_25_groups() -> None:
    groups = held_out_groups(25)
    assert groups == {1: list(range(1, 8)), 2: list(range(8, 15)), 3: list(range(15, 22))}
    assert held_out_groups(4) == {1: [1], 2: [2], 3: [3]}


def test_same_seed_same_bytes_with_workers_other_seed_differs(
    small: Path, meta: dict, tmp_path: Path
) -> None:
    again = generate(tmp_path / "again", workers=2, **SMALL)
    assert load_meta(again) == meta
    for clip in meta["clips"]:
        assert (again / clip["file"]).read_bytes() == (small / clip["file"]).read_bytes()
    other = generate(tmp_path / "other", workers=1, **{**SMALL, "seed": 1, "clips_per_class": 2})
    first = load_meta(other)["clips"][0]
    assert first["events"] != meta["clips"][0]["events"]
    assert first["nuisance"] != meta["clips"][0]["nuisance"]
    frames, _, _ = _decode(other / first["file"])
    assert not np.array_equal(frames[0], _decode(small / meta["clips"][0]["file"])[0][0])


def test_rerun_keeps_complete_dataset_and_bad_input_is_refused(small: Path, tmp_path: Path):
    clip_file = small / load_meta(small)["clips"][0]["file"]
    stamp = clip_file.stat().st_mtime_ns
    assert generate(small, workers=1, **SMALL) == small
    assert clip_file.stat().st_mtime_ns == stamp
    (tmp_path / "real" / "UCF-101").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        generate(tmp_path / "real", workers=1, **SMALL)
    with pytest.raises(ValueError, match="clips_per_class"):
        generate(tmp_path / "x", clips_per_class=1)
    with pytest.raises(ValueError, match="num_classes"):
        generate(tmp_path / "x", num_classes=101)


def test_audio_onsets_at_event_times(meta: dict, decoded: list) -> None:
    ratios = []
    for clip, (_, audio, rate) in zip(meta["clips"], decoded):
        if audio is None:
            continue
        mono = audio.mean(axis=0)
        win = int(0.02 * rate)
        off_screen = np.array([d[0] for d in clip["distractors"]])
        for s in event_samples(clip, rate):
            t = s / rate  # an off-screen sound ringing in either window would mask the onset
            masked = np.any((off_screen > t - DISTRACTOR_S - 0.02) & (off_screen < t + 0.02))
            if win <= s <= mono.size - win and not masked:
                after, before = np.mean(mono[s : s + win] ** 2), np.mean(mono[s - win : s] ** 2)
                ratios.append(after / max(before, 1e-12))
        assert len(clip["events"]) >= 3
    assert len(ratios) > 30
    assert min(ratios) > 10.0 and np.median(ratios) > 100.0


def test_off_screen_sounds_are_other_timbres_and_audible(meta: dict) -> None:
    """Distractors: Poisson times inside the clip, never the class timbre, and they are the
    only difference between the soundtrack and the same clip rendered without them."""
    count = 0
    for clip in meta["clips"]:
        cls = meta["classes"][clip["label"]]
        times = [d[0] for d in clip["distractors"]]
        assert times == sorted(times) and all(0 < t < clip["duration"] for t in times)
        assert all(d[1] != cls["timbre"] for d in clip["distractors"])
        count += len(times)
        if not clip["has_audio"]:
            continue
        sr = clip["sample_rate"]
        with_them = render_audio(clip, cls, np.random.default_rng([clip["seed"], 1]))
        without = render_audio(
            {**clip, "distractors": []}, cls, np.random.default_rng([clip["seed"], 1])
        )
        diff = np.abs(with_them - without).max(axis=0)  # [S]
        inside = np.zeros(diff.size, bool)
        for t in times:
            s = int(round(t * sr))
            inside[s : s + int(DISTRACTOR_S * sr)] = True
            assert diff[s : s + int(0.05 * sr)].max() > 1e-4  # audible right from its onset
        assert diff[~inside].max() == 0.0
    total = sum(c["duration"] for c in meta["clips"])
    assert 0.4 < count / total < 2.0  # about one per second


def test_visual_flash_at_event_frames(meta: dict, decoded: list) -> None:
    """The object's centre takes the flash colour exactly at the event frames."""
    luma = np.array([0.299, 0.587, 0.114])
    for clip, (frames, _, _) in zip(meta["clips"], decoded):
        cls = meta["classes"][clip["label"]]
        fps, events = clip["fps"], event_frames(clip)
        assert events == [round(t * fps) for t in clip["events"]]
        times = np.arange(clip["num_frames"]) / fps
        cx, cy, _, flash = object_track(clip, cls, times)
        obj = np.asarray(clip["nuisance"]["object_rgb"])
        target = np.zeros(3) if obj @ luma > 0.5 else np.ones(3)
        expected = 255 * (obj + (target - obj) * FLASH_MIX * flash[:, None])  # [T, 3]
        xi, yi = np.round(cx).astype(int), np.round(cy).astype(int)
        centre = np.stack([frames[t, yi[t] - 1 : yi[t] + 2, xi[t] - 1 : xi[t] + 2].mean((0, 1))
                           for t in range(len(frames))])  # fmt: skip
        assert np.abs(centre - expected).max() < 30  # track, colour and flash as in the meta
        for e in events:
            assert flash[e] == pytest.approx(1.0)
            if e > 0 and flash[e - 1] < 0.1:
                assert np.abs(centre[e] - centre[e - 1]).max() > 60
        assert np.allclose(flash, flash_envelope(times, np.asarray(events) / fps))


def _audio_feature(audio: np.ndarray, rate: int, clip: dict) -> np.ndarray:
    """Pitch-independent timbre of the notes at the clip's (visible) events: spectral centroid
    over the strongest peak, share of bins within 30 dB of the peak, spectral flatness; 40 ms
    after each onset, averaged. Pitch and off-screen sounds are nuisances of the set."""
    mono, n = audio.mean(axis=0), int(0.04 * rate)
    out = []
    for s in event_samples(clip, rate):
        if s + n > mono.size:
            continue
        power = np.abs(np.fft.rfft(mono[s : s + n] * np.hanning(n))) ** 2
        freqs = np.fft.rfftfreq(n, 1.0 / rate)
        band = (freqs > 50) & (freqs < 8000)
        p, f = power[band], freqs[band]
        centroid = (p * f).sum() / p.sum()
        flatness = np.exp(np.mean(np.log(p + 1e-12))) / p.mean()
        out.append(
            [np.log(centroid / f[np.argmax(p)]), np.mean(p > 1e-3 * p.max()), np.log(flatness)]
        )
    return np.mean(out, axis=0)


def _video_feature(frames: np.ndarray, clip: dict) -> np.ndarray:
    """Fill ratio of the object's bounding box and share of its motion along x."""
    obj = 255 * np.asarray(clip["nuisance"]["object_rgb"])
    mask = np.abs(frames.astype(np.float32) - obj).max(axis=-1) < 40  # [T, H, W]
    fills, xs, ys = [], [], []
    for m in mask:
        y, x = np.nonzero(m)
        if x.size > 20:
            fills.append(x.size / ((np.ptp(x) + 1) * (np.ptp(y) + 1)))
            xs.append(x.mean())
            ys.append(y.mean())
    sx, sy = np.std(xs), np.std(ys)
    return np.array([np.median(fills), sx / (sx + sy + 1e-6)])


def _leave_one_out_nearest_centroid(x: np.ndarray, y: np.ndarray) -> float:
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    hits = 0
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        cents = np.stack([x[rest & (y == k)].mean(0) for k in np.unique(y)])
        hits += int(np.argmin(((cents - x[i]) ** 2).sum(1)) == y[i])
    return hits / len(y)


def test_class_recoverable_from_each_modality(meta: dict, decoded: list) -> None:
    labels = np.array([c["label"] for c in meta["clips"]])
    video = np.stack([_video_feature(f, c) for c, (f, _, _) in zip(meta["clips"], decoded)])
    assert _leave_one_out_nearest_centroid(video, labels) >= 0.8  # chance 1/3
    has = np.array([a is not None for _, a, _ in decoded])
    audio = np.stack(
        [_audio_feature(a, r, c) for c, (_, a, r) in zip(meta["clips"], decoded) if a is not None]
    )
    assert _leave_one_out_nearest_centroid(audio, labels[has]) >= 0.8


def test_plain_visual_nuisance_fixes_the_screen_and_keeps_the_rest(tmp_path, meta) -> None:
    # the control set: colours, background, position and size are constant on screen; every
    # other per-clip value (timing, motion speed, audio) is the default set's for the same seed
    plain_root = generate(tmp_path / "plain", workers=1, visual_nuisance="plain", **SMALL)
    plain = load_meta(plain_root)
    assert plain["settings"]["visual_nuisance"] == "plain"
    assert meta["settings"]["visual_nuisance"] == "full"
    fixed = set(PLAIN_VISUAL)
    for full_clip, clip in zip(meta["clips"], plain["clips"]):
        nz, full_nz = clip["nuisance"], full_clip["nuisance"]
        assert {k: nz[k] for k in fixed} == PLAIN_VISUAL
        assert {k: v for k, v in nz.items() if k not in fixed} == {
            k: v for k, v in full_nz.items() if k not in fixed
        }
        assert clip["events"] == full_clip["events"] and clip["seed"] == full_clip["seed"]
        assert clip["distractors"] == full_clip["distractors"]
    # the default set varies what the plain one holds fixed
    assert len({json.dumps(c["nuisance"]["object_rgb"]) for c in meta["clips"]}) > 1
    # decoded: a flat background of the plain grey away from the object
    clip = plain["clips"][0]
    frames, _, _ = _decode(plain_root / clip["file"])
    bg = round(PLAIN_VISUAL["bg_rgb"][0] * 255)
    corner = frames[:, :6, :6].astype(int)  # the object starts at the centre, never reaches it
    assert np.abs(corner - bg).max() <= 3
    with pytest.raises(ValueError, match="visual_nuisance must be one of full, plain"):
        generate(tmp_path / "bad", workers=1, visual_nuisance="none", **SMALL)
