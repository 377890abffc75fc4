"""Smoke tests of ``bench/loader.py --quick``: on the session's synthetic shards, and building
its own shards with both encodings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "loader.py"
LINE = re.compile(
    r"\[bench loader\] (wall|cpu) *: avssl ([\d.]+) clips/s.*"
    r"naive ([\d.]+) clips/s, ratio ([\d.]+)x"
)
DEVICE = re.compile(
    r"\[bench loader\] (wall|cpu) *: avssl with the features on the device ([\d.]+) clips/s "
    r"per worker, ([\d.]+)x all in the loader"
)
REPEATED = re.compile(
    r"\[bench loader\] (wall|cpu) *: repeated sampling, 4 entries per decoded sample, features "
    r"on the device ([\d.]+) clips/s per worker, ([\d.]+)x one entry per sample"
)
KEYFRAMES = re.compile(
    r"\[bench loader\] cpu : clips starting on keyframes \(keyframe_starts\), features on the "
    r"device ([\d.]+) clips/s per worker, ([\d.]+) from random starts, ([\d.]+)x"
)
VIDEO_ONLY = re.compile(
    r"\[bench loader\] cpu : video only \(modalities \[video\]\), features on the device "
    r"([\d.]+) clips/s per worker, ([\d.]+) with the audio, ([\d.]+)x"
)
LOCAL = re.compile(
    r"\[bench loader\] cpu : with XKD's local view of each clip \(\d+ frames at \d+ px, \d+ "
    r"fbank frames\), features on the device ([\d.]+) clips/s per worker, ([\d.]+) without, "
    r"([\d.]+)x"
)
WINDOWS = re.compile(
    r"\[bench loader\] cpu : 3.2 s audio windows decoded alone \(FlacWindows\), features on "
    r"the device ([\d.]+) clips/s per worker, ([\d.]+) decoding the whole recording, ([\d.]+)x"
)
RGB = re.compile(
    r"\[bench loader\] cpu : RGB through one swscale context per thread \(to_rgb\), features "
    r"on the device ([\d.]+) clips/s per worker, ([\d.]+) with PyAV's per-frame to_ndarray, "
    r"([\d.]+)x"
)
WAV = re.compile(
    r"\[bench loader\] cpu : shard audio as WAV \(--audio-codec wav\), features on the device "
    r"([\d.]+) clips/s per worker, ([\d.]+) from FLAC, ([\d.]+)x"
)
WAV_CAVMAE = re.compile(
    r"\[bench loader\] cpu : shard audio as WAV, CAV-MAE's sample \(1 frame from a keyframe \+ "
    r"10 s\), features on the device ([\d.]+) clips/s per worker, ([\d.]+) from FLAC, ([\d.]+)x"
)
JPEG = re.compile(
    r"\[bench loader\] cpu : CAV-MAE's sample with WAV audio, its frame from JPEG frames at 1 "
    r"fps \(--jpeg-fps 1\), features on the device ([\d.]+) clips/s per worker, ([\d.]+) from "
    r"the mp4's keyframes, ([\d.]+)x"
)
DENSE_JPEG = re.compile(
    r"\[bench loader\] cpu : video only, frames as JPEG at fps / \d+ \(--jpeg-fps, stride 1\), "
    r"features on the device ([\d.]+) clips/s per worker, ([\d.]+) from the mp4 \(stride \d+\), "
    r"([\d.]+)x; video bytes [\d.]+x"
)
SCAN = re.compile(
    r"\[bench loader\] DataLoader with (\d+) workers, features on the device: ([\d.]+) "
    r"clips/s, ([\d.]+) per worker"
)
THROUGH = re.compile(
    r"\[bench loader\] 1-worker DataLoader, batches of 16: all in the worker ([\d.]+) "
    r"clips/s, features on the device ([\d.]+) clips/s, ([\d.]+)x"
)


def _one_ratio_line(pattern: re.Pattern, stdout: str) -> tuple[float, float, float]:
    """The one line ``pattern`` matches, as (rate, baseline rate, printed ratio); both rates
    positive and the ratio their quotient."""
    found = [m.groups() for m in map(pattern.match, stdout.splitlines()) if m]
    assert len(found) == 1, stdout
    rate, base, ratio = map(float, found[0])
    assert rate > 0 and base > 0 and abs(ratio - rate / base) <= 0.01 + 0.02 * ratio
    return rate, base, ratio


def test_bench_quick_prints_rates_and_ratio(synth):
    cmd = [sys.executable, str(BENCH), "--quick", "--data", str(synth), "--dataloader"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [m.groups() for m in map(LINE.match, done.stdout.splitlines()) if m]
    assert [r[0] for r in rows] == ["wall", "cpu"], done.stdout
    for _, ours, naive, ratio in rows:
        ours, naive, ratio = float(ours), float(naive), float(ratio)
        assert ours > 0 and naive > 0 and abs(ratio - ours / naive) <= 0.01 + 0.02 * ratio
    device = [m.groups() for m in map(DEVICE.match, done.stdout.splitlines()) if m]
    assert [r[0] for r in device] == ["wall", "cpu"], done.stdout
    for (_, ours, _, _), (_, waves, ratio) in zip(rows, device):
        assert float(waves) > 0
        assert abs(float(ratio) - float(waves) / float(ours)) <= 0.01 + 0.02 * float(ratio)
    repeated = [m.groups() for m in map(REPEATED.match, done.stdout.splitlines()) if m]
    assert [r[0] for r in repeated] == ["wall", "cpu"], done.stdout
    for (_, waves, _), (_, rate, ratio) in zip(device, repeated):
        assert float(rate) > 0
        assert abs(float(ratio) - float(rate) / float(waves)) <= 0.01 + 0.02 * float(ratio)
    _, rnd, _ = _one_ratio_line(KEYFRAMES, done.stdout)
    _, both, _ = _one_ratio_line(VIDEO_ONLY, done.stdout)
    assert both == rnd  # the same baseline run, printed twice
    _one_ratio_line(WINDOWS, done.stdout)
    _, without, _ = _one_ratio_line(LOCAL, done.stdout)
    assert without == rnd  # the same baseline run
    shared, _, _ = _one_ratio_line(RGB, done.stdout)
    assert shared == rnd
    _one_ratio_line(WAV, done.stdout)
    _, mp4, _ = _one_ratio_line(JPEG, done.stdout)
    wav, _, _ = _one_ratio_line(WAV_CAVMAE, done.stdout)
    assert mp4 == wav  # the same run, printed twice
    _, from_mp4, _ = _one_ratio_line(DENSE_JPEG, done.stdout)
    video, _, _ = _one_ratio_line(VIDEO_ONLY, done.stdout)
    assert from_mp4 == video  # the same run, printed twice
    through = [m.groups() for m in map(THROUGH.match, done.stdout.splitlines()) if m]
    assert len(through) == 1, done.stdout
    lo, dev, ratio = map(float, through[0])
    assert lo > 0 and dev > 0 and abs(ratio - dev / lo) <= 0.01 + 0.02 * ratio


def test_bench_reads_wav_shards_and_scans_worker_counts(tmp_path_factory):
    """Shards prepared with ``--audio-codec wav``: the same lines (FLAC made from the WAV for
    the comparison), and ``--scan``: one line per worker count."""
    from tests.test_recipes import build_tiny_shards

    shards = build_tiny_shards(tmp_path_factory.getbasetemp(), "wav")
    cmd = [sys.executable, str(BENCH), "--quick", "--data", str(shards), "--scan", "1,2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _one_ratio_line(WAV, done.stdout)
    _one_ratio_line(WAV_CAVMAE, done.stdout)
    scanned = [m.groups() for m in map(SCAN.match, done.stdout.splitlines()) if m]
    assert [int(n) for n, _, _ in scanned] == [1, 2], done.stdout
    for n, rate, per in scanned:
        assert float(rate) > 0 and abs(float(per) - float(rate) / int(n)) <= 0.1
    bad = subprocess.run([*cmd[:-1], "1,0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--scan: worker counts must be >= 1" in bad.stderr


ENCODING = re.compile(
    r"\[bench loader\] shard encoding, features on the device: x264 tune fastdecode "
    r"\(data_prep's default\) ([\d.]+) clips/s per worker \(cpu\), tune none ([\d.]+), "
    r"([\d.]+)x; video bytes ([+-][\d.]+)%"
)


def test_bench_builds_both_encodings_and_compares_them(tmp_path):
    out = tmp_path / "shards"
    cmd = [sys.executable, str(BENCH), "--quick", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tunes = [
        json.loads((folder / "manifest.json").read_text())["prep"]["tune"]
        for folder in (out, tmp_path / "shards-tune-none")
    ]
    assert tunes == ["fastdecode", "none"]
    found = [m.groups() for m in map(ENCODING.match, done.stdout.splitlines()) if m]
    assert len(found) == 1, done.stdout
    tuned, plain, ratio, grow = map(float, found[0])
    assert tuned > 0 and plain > 0 and abs(ratio - tuned / plain) <= 0.01 + 0.02 * ratio
    assert grow != 0.0  # the same clips, encoded two ways: the bytes differ
