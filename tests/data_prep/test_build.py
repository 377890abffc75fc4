"""End to end: real clips through ``folder``, bad media, exit codes, reruns, ``synthetic``."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from prep_helpers import REAL_MEDIA, place, read_shards, sample_json, write_text

from avssl.cli import UserError
from avssl.data.audio_decode import load_audio
from avssl.data.fbank import FbankConfig
from avssl.data.writer import FbankStats
from data_prep import prepare_dataset
from data_prep.__main__ import main

REAL = {
    "audioset_clip_h264_aac": (10.0, 12.5, True, (256, 144)),
    "kinetics_clip_h264_noaudio": (10.0, 28.0, False, (426, 256)),  # SAR 64:51 -> square
    "ucf_style_mpeg4_mp3": (6.56, 25.0, True, (320, 240)),
}


def keyframe_gap(mp4: bytes) -> float:
    with av.open(io.BytesIO(mp4)) as c:
        v = c.streams.video[0]
        times = sorted(float(p.pts * p.time_base) for p in c.demux(v) if p.is_keyframe)
        end = float(v.frames / v.average_rate)
    return float(np.diff([*times, end]).max())


def test_real_clips_through_folder(tmp_path):
    if not REAL_MEDIA.is_dir():
        pytest.skip(f"real clips not found in {REAL_MEDIA}")
    root = tmp_path / "real"
    for name in REAL:
        src = next(REAL_MEDIA.glob(f"{name}.*"))
        place(src, root / src.name)
    out = tmp_path / "out"
    manifest = prepare_dataset("folder", root, None, out, progress=False)
    assert manifest["num_samples"] == 3 and manifest["num_failed"] == 0
    assert manifest["prep"]["tune"] == "fastdecode" and manifest["prep"]["crf"] == 23
    assert manifest["prep"]["audio_codec"] == "flac"
    samples = read_shards(out)
    for name, (duration, fps, has_audio, size) in REAL.items():
        key = f"folder/{name}"
        meta = sample_json(samples, key)
        assert meta["duration"] == pytest.approx(duration, abs=0.05), name
        assert meta["fps"] == pytest.approx(fps) and (meta["width"], meta["height"]) == size
        assert meta["has_audio"] is has_audio and ("flac" in samples[key]) is has_audio
        assert keyframe_gap(samples[key]["mp4"]) <= 1.0 + 1e-6
        if has_audio:
            assert meta["audio_sample_rate"] == 16000
            with av.open(io.BytesIO(samples[key]["flac"])) as c:
                ctx = c.streams.audio[0].codec_context
                assert (ctx.sample_rate, ctx.channels) == (16000, 1)
                n = sum(f.samples for f in c.decode(audio=0))
            assert n == meta["audio_num_samples"]
            assert n / 16000 == pytest.approx(duration, abs=0.1)
        else:
            assert meta["audio_sample_rate"] is None
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_clips"] == 2 and -20 < stats["fbank_mean"] < 5 and stats["fbank_std"] > 0.5


def make_bad_tree(root: Path, media: dict) -> Path:
    place(media["av"], root / "good" / "a.mp4")
    place(media["noaudio"], root / "good" / "b.mp4")
    for name in ("zero", "truncated", "text", "badaudio", "nocodec", "nocodec_audio"):
        place(media[name], root / "bad" / media[name].name)
    write_text(root / "bad" / "notes.txt", "not media, ignored\n")
    place(media["av"], root / "good" / "a.mkv")  # same key as a.mp4
    return root


def test_bad_media_recorded_and_max_failures(tmp_path, media, capsys):
    root = make_bad_tree(tmp_path / "tree", media)
    out = tmp_path / "out"
    args = ["--dataset", "folder", "--root", str(root), "--out", str(out), "--no-progress"]
    assert main([*args, "--max-failures", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "converted 2, failed 7 (77.8%)" in printed
    assert f"make pretrain RECIPE=mavil DATA={out}" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {Path(f["path"]).name: f["reason"] for f in manifest["failures"]}
    assert reasons["zero.mp4"] == "zero-byte file"
    assert reasons["truncated.mp4"].startswith("truncated: decoded")
    assert reasons["text.avi"].startswith("not a readable media file")
    assert reasons["badaudio.mp4"].startswith("audio undecodable")
    assert reasons["nocodec.avi"] == "video stream without a usable codec"
    assert reasons["nocodec_audio.avi"] == "audio stream without a usable codec"
    assert reasons["a.mp4"].startswith("same key as") and reasons["a.mp4"].endswith(")")
    assert manifest["classes"] == ["bad", "good"]
    assert manifest["splits"] == {"all": 2, "train": 1, "test": 1}  # the bad clips failed
    (out / "manifest.json").unlink()
    assert main([*args, "--max-failures", ""]) == 1  # default 0.05
    captured = capsys.readouterr()
    assert "more than MAX_FAILURES=0.05" in captured.err
    assert "converted 2, failed 7" in captured.out and "next:" not in captured.out  # no hint
    assert json.loads((out / "manifest.json").read_text())["num_failed"] == 7


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing_root", "ROOT"),
        ("unknown_dataset", "unknown DATASET 'ucf1O1'"),
        ("unwritable_out", "cannot write to OUT"),
        ("bad_option", "--layout must be one of"),
        ("foreign_option", "option --pattern does not apply"),
        ("bad_number", "--workers: expected int"),
        ("missing_splits", "SPLITS"),
        ("bad_tune", "--tune: unknown x264 tune 'fastdecoding'"),
        ("bad_audio_codec", "--audio-codec must be one of flac, wav, got 'mp3'"),
        ("negative_jpeg_fps", "--jpeg-fps must be 0 (mp4) or within (0, max-fps], got -1.0"),
        ("jpeg_fps_over_max", "--jpeg-fps must be 0 (mp4) or within (0, max-fps], got 60.0"),
        ("max_failures_over_1", "--max-failures must be a fraction within [0, 1], got 5.0"),
        ("zero_max_fps", "--max-fps must be > 0, got 0.0"),
        ("small_short_side", "--short-side must be >= 2, got 1"),
        (
            "bad_preset",
            "--preset must be one of x264's presets (ultrafast superfast veryfast "
            "faster fast medium slow slower veryslow placebo), got 'nope'",
        ),
        ("negative_crf", "--crf must be within 0..51 (x264's range), got -5"),
        ("crf_over_51", "--crf must be within 0..51 (x264's range), got 99"),
        ("zero_stats_clips", "--stats-clips must be >= 1, got 0"),
        ("negative_stats_clips", "--stats-clips must be >= 1, got -1"),
    ],
)
def test_user_errors_exit_2(tmp_path, media, capsys, case, message):
    root = tmp_path / "root"
    place(media["av"], root / "x.mp4")
    blocker = write_text(tmp_path / "file", "x")
    argv = {
        "missing_root": ["--dataset", "ucf101", "--root", str(tmp_path / "nope")],
        "unknown_dataset": ["--dataset", "ucf1O1", "--root", str(root)],
        "unwritable_out": ["--dataset", "folder", "--root", str(root), "--out", str(blocker / "o")],
        "bad_option": ["--dataset", "folder", "--root", str(root), "--layout", "tree"],
        "foreign_option": ["--dataset", "folder", "--root", str(root), "--pattern", "{ytid}"],
        "bad_number": ["--dataset", "folder", "--root", str(root), "--workers", "two"],
        "missing_splits": ["--dataset", "ucf101", "--root", str(root), "--splits", str(root / "s")],
        "bad_tune": ["--dataset", "folder", "--root", str(root), "--tune", "fastdecoding"],
        "bad_audio_codec": ["--dataset", "folder", "--root", str(root), "--audio-codec", "mp3"],
        "negative_jpeg_fps": ["--dataset", "folder", "--root", str(root), "--jpeg-fps", "-1"],
        "jpeg_fps_over_max": ["--dataset", "folder", "--root", str(root), "--jpeg-fps", "60"],
        "max_failures_over_1": ["--dataset", "folder", "--root", str(root), "--max-failures", "5"],
        "zero_max_fps": ["--dataset", "folder", "--root", str(root), "--max-fps", "0"],
        "small_short_side": ["--dataset", "folder", "--root", str(root), "--short-side", "1"],
        "bad_preset": ["--dataset", "folder", "--root", str(root), "--preset", "nope"],
        "negative_crf": ["--dataset", "folder", "--root", str(root), "--crf", "-5"],
        "crf_over_51": ["--dataset", "folder", "--root", str(root), "--crf", "99"],
        "zero_stats_clips": ["--dataset", "folder", "--root", str(root), "--stats-clips", "0"],
        "negative_stats_clips": ["--dataset", "folder", "--root", str(root), "--stats-clips=-1"],
    }[case]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("data_prep: error: ") and message in err[0]


def test_rerun_skips_finished_shards(tmp_path, media, capsys):
    root = tmp_path / "root"
    for i in range(4):
        place(media["mono"], root / "cls" / f"clip{i}.mp4")
    out = tmp_path / "out"
    argv = [
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--out",
        str(out),
        "--shard-size",
        "2",
        "--workers",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert [s["num_samples"] for s in first["shards"]] == [2, 2]
    tar0 = out / "shards" / "shard-000000.tar"
    os.utime(tar0, (1, 1))
    (out / "shards" / "shard-000001.json").unlink()  # as if killed before the sidecar
    capsys.readouterr()
    assert main(argv[:-3] + ["--no-progress"]) == 0
    assert "skipping 1 of 2 shards" in capsys.readouterr().err
    assert tar0.stat().st_mtime == 1  # untouched
    second = json.loads((out / "manifest.json").read_text())
    assert second["num_samples"] == 4 and second["splits"] == {"all": 4, "train": 3, "test": 1}
    assert len(read_shards(out)) == 4
    assert main(argv) == 0
    assert "skipping 2 of 2 shards" in capsys.readouterr().err


def make_synthetic_root(root: Path, media: dict) -> None:
    clips = []
    for label, cls in enumerate(["Circle", "Square"]):
        for g in (1, 2):
            rel = f"{cls}/v_{cls}_g{g:02d}_c01.mp4"
            place(media["av"] if g == 1 else media["noaudio"], root / "UCF-101" / rel)
            clips.append(
                {
                    "file": f"UCF-101/{rel}",
                    "class": cls,
                    "label": label,
                    "events": [0.5 * g],
                    "has_audio": g == 1,
                }
            )
    lists = root / "ucfTrainTestlist"
    write_text(lists / "classInd.txt", "1 Circle\n2 Square\n")
    for k in (1, 2, 3):
        write_text(
            lists / f"trainlist0{k}.txt",
            "Circle/v_Circle_g01_c01.mp4 1\nSquare/v_Square_g01_c01.mp4 2\n",
        )
        write_text(
            lists / f"testlist0{k}.txt",
            "Circle/v_Circle_g02_c01.mp4\nSquare/v_Square_g02_c01.mp4\n",
        )
    (root / "synthetic_meta.json").write_text(json.dumps({"clips": clips}))


def test_synthetic_existing_root_copies_truth(tmp_path, media):
    root = tmp_path / "raw"
    make_synthetic_root(root, media)
    out = tmp_path / "out"
    manifest = prepare_dataset("synthetic", root, None, out, progress=False)
    assert manifest["dataset"] == "synthetic" and manifest["num_samples"] == 4
    assert manifest["splits"]["test2"] == 2
    samples = read_shards(out)
    meta = sample_json(samples, "synthetic/Square/v_Square_g02_c01")
    assert meta["synthetic"]["events"] == [1.0] and meta["label"] == 1
    assert meta["has_audio"] is False and "flac" not in samples[meta["id"]]
    with pytest.raises(UserError, match="already holds dataset 'synthetic'"):
        prepare_dataset("folder", root, None, out, progress=False)


def test_synthetic_generator(tmp_path):
    out = tmp_path / "out"
    manifest = prepare_dataset(
        "synthetic", None, None, out, progress=False, num_classes=2, clips_per_class=2, seed=1
    )
    assert (out / "raw" / "synthetic_meta.json").is_file()
    assert manifest["num_samples"] == 4 and len(manifest["classes"]) == 2
    samples = read_shards(out)
    meta = sample_json(samples, next(iter(samples)))
    assert "events" in meta["synthetic"] and meta["source"] == "synthetic"


def test_synthetic_bad_visual_nuisance_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="synthetic: synthetic visual_nuisance must be one of"):
        prepare_dataset(
            "synthetic", None, None, tmp_path / "out", progress=False, visual_nuisance="dim"
        )


def test_stats_clips_are_drawn_among_clips_with_audio(tmp_path, media):
    """The hash order's first clips here have no audio: ``--stats-clips 2`` still takes two
    clips, the first two with audio in that order."""
    names = sorted(
        (f"c{i}" for i in range(6)), key=lambda n: hashlib.sha1(f"folder/{n}".encode()).hexdigest()
    )
    root = tmp_path / "root"
    for i, name in enumerate(names):
        src = media["noaudio"] if i < 2 else media["av" if i % 2 else "mono"]
        place(src, root / f"{name}.mp4")
    out = tmp_path / "out"
    prepare_dataset("folder", root, None, out, stats_clips=2, progress=False)
    stats = json.loads((out / "stats.json").read_text())
    samples = read_shards(out)
    expected = FbankStats()
    for name in names[2:4]:
        wave, _ = load_audio(samples[f"folder/{name}"]["flac"], 16000)
        expected.add_wave(wave.numpy(), FbankConfig())
    mean, std = expected.mean_std()
    assert stats["num_clips"] == 2
    assert stats["fbank_mean"] == pytest.approx(mean, rel=1e-4)
    assert stats["fbank_std"] == pytest.approx(std, rel=1e-4)
    assert json.loads((out / "manifest.json").read_text())["prep"]["stats_clips"] == 2
    # another --stats-clips reuses the shards: the choice is made from the sidecars
    log: list[str] = []
    prepare_dataset("folder", root, None, out, stats_clips=3, progress=False, log=log.append)
    assert any("skipping 1 of 1 shards" in line for line in log), log
    assert json.loads((out / "stats.json").read_text())["num_clips"] == 3
