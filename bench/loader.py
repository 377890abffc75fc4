"""Loader benchmark: clips per second per worker, the avssl loader vs a naive decoder (issue 3).

One clip = 16 frames (every 4th frame, VideoMAE's 16x4) random-resized-cropped to 224 px with
the "train" preset, plus a 10 s log-mel fbank (1000 x 128) of the aligned audio window. Both
paths run in this process with a DataLoader worker's settings (``tune_worker_process``: one
torch thread, malloc keeping freed memory) and one codec thread, i.e. what one worker does:

- ``avssl``: the loader's SampleProcessor on shard samples read from the tars (seek to the
  keyframe before the clip, decode forward, convert only the kept frames to RGB).
- ``naive``: open the mp4 with PyAV, decode every frame to RGB, then pick the clip; the same
  transforms and the same fbank afterwards.
- ``avssl, features on the device``: the loader's share when training on a GPU
  (``AVDataModule(features_on="device")``, the default there): the same SampleProcessor
  shipping waveform windows and uint8 clips, the fbank, colour jitter and normalisation left
  to the GPU (not timed here).

Synthetic shards are built with ``data_prep`` (340x256 px, 30 fps, 10 s clips, like a
prepared Kinetics/VGGSound clip) into ``--out`` (default: a temporary folder) unless
``--data`` names prepared shards. With built shards, the same clips are also prepared with
``--tune none`` (into ``<out>-tune-none``) and the features-on-device path is timed on both,
alternated: what data_prep's default x264 ``fastdecode`` tune buys the loader. ``--quick`` is
a seconds-long smoke run on tiny clips.
Targets (DESIGN section 7): avssl >= 3x naive and >= 25 clips/s per worker. Printed per
wall-clock second and per CPU second of this process (on a shared machine the CPU-time rate is
what a dedicated core would give).

It also times clips that start on the keyframe before each random start
(``AVDataModule(keyframe_starts=True)``; with ``--frames 1`` a clip is one keyframe, CAV-MAE's
one-of-the-1-fps-frames sampling) and clips without their audio (``modalities=["video"]``,
what a video-only step such as VideoMAE's loads) against the same clips with their audio,
3.2 s audio windows (VATT's) decoded alone against cut from the whole decoded recording,
frames converted to RGB through one swscale context per thread (``decode.to_rgb``) against
PyAV's per-frame ``to_ndarray``,
alternated, shard audio stored as 16-bit PCM WAV (``data_prep --audio-codec wav``, read in place
without decoding) against FLAC, for these clips and for CAV-MAE's sample (one frame from a
keyframe + the 10 s window), that sample's frame taken from JPEG frames at 1 fps
(``data_prep --jpeg-fps 1``) against the mp4's keyframes, video-only clips from JPEG frames
stored at the rate the clip samples (fps / stride) against the mp4, clips with XKD's local
view made alongside (``AVDataModule.request_local_view``: a quarter of the frames at 1 / 1.16 of
the side, a quarter of the audio, its own crop, colour and volume) against without, alternated,
and repeated sampling
(``AVDataModule(repeated_sampling=R)``, ``--repeats 4``): R entries, each with its own clip
times and augmentation, from one decoded sample.

``--dataloader`` also times whole batches of 16 through a DataLoader with one worker process
(batching and the transfer to the main process included, the device's share left out), with
everything in the worker and with the features left to the device, alternated. ``--scan
1,8,16`` times batches of 64 through DataLoaders with those numbers of workers (features on the
device): how the loader scales with the cores.

Run: ``python bench/loader.py [--data DIR] [--clips 60] [--quick] [--dataloader]``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile
import torch

from avssl.data import decode
from avssl.data.audio_decode import load_audio
from avssl.data.datamodule import build_processor, tune_worker_process
from avssl.data.fbank import FbankConfig
from avssl.data.local_view import LocalViewSpec
from avssl.data.sampling import SampleProcessor
from avssl.data.shards import ShardReader, resolve, split_table
from avssl.data.writer import EncodeSettings, JpegFrames, encode_flac, encode_wav


def build_shards(out: Path, quick: bool, tune: str = "", raw: Path | None = None) -> Path:
    """Synthetic shards for the benchmark (reused when ``out`` already holds them), encoded
    with data_prep's defaults or x264 ``--tune tune``; clips generated into ``raw`` (default
    ``out/raw``; clips already generated there with the same settings are reused)."""
    from avssl.data.synthetic import generate

    if (out / "manifest.json").is_file():
        return out
    raw = raw or out / "raw"
    size, secs, n = ((128, 96), 3.0, 2) if quick else ((340, 256), 10.0, 4)
    print(f"[bench] generating {2 * n} synthetic clips {size[0]}x{size[1]}, {secs:.0f} s in {raw}")
    generate(raw, num_classes=2, clips_per_class=n, fps=30, size=size, min_duration=secs,
             max_duration=secs, no_audio_fraction=0.0, alt_fps_fraction=0.0,
             alt_size_fraction=0.0, workers=1 if quick else 2)  # fmt: skip
    cmd = [sys.executable, "-m", "data_prep", "--dataset", "synthetic", "--root", str(raw),
           "--out", str(out), "--workers", "2", "--no-progress"]  # fmt: skip
    cmd += ["--tune", tune] if tune else []
    subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], check=True, stdout=subprocess.DEVNULL
    )
    return out


def load_samples(data: Path, limit: int) -> list[dict]:
    reader = ShardReader()
    items = split_table(resolve(data), None).ordered()[:limit]
    return [reader.read(shard, key) for shard, key in items]


def with_audio(samples: list[dict], codec: str) -> list[dict]:
    """The samples with their audio member in ``codec`` ("flac" or "wav", what
    ``data_prep --audio-codec`` writes), the same samples."""
    out = []
    for s in samples:
        have = "flac" if "flac" in s else "wav"
        if have == codec:
            out.append(s)
            continue
        pcm, rate = soundfile.read(io.BytesIO(s[have]), dtype="int16")
        converted = {k: v for k, v in s.items() if k != have}
        converted[codec] = encode_wav(pcm, rate) if codec == "wav" else encode_flac(pcm, rate)
        out.append(converted)
    return out


def with_jpeg_frames(samples: list[dict], fps: float = 0.0, stride: int = 1) -> list[dict]:
    """The samples with their mp4 replaced by JPEG frames at ``fps`` (0: each sample's own
    frame rate / ``stride``), what ``data_prep --jpeg-fps`` writes, here from the mp4's decoded
    frames instead of the source's."""
    out = []
    for s in samples:
        rate = fps or json.loads(s["json"])["fps"] / stride
        with av.open(io.BytesIO(s["mp4"])) as c:
            stream = c.streams.video[0]
            sink = JpegFrames(stream, EncodeSettings(short_side=10**4, jpeg_fps=rate))
            for frame in c.decode(stream):
                sink.push(frame)
        jpegs, info = sink.finish()
        converted = {k: v for k, v in s.items() if k != "mp4"}
        converted.update({f"f{i:03d}.jpg": data for i, data in enumerate(jpegs)})
        converted["json"] = json.dumps({**json.loads(s["json"]), **info}).encode()
        out.append(converted)
    return out


def naive_clip(proc: SampleProcessor, sample: dict, gen: torch.Generator) -> None:
    """The naive path: decode every frame to RGB, then pick the clip, then the same work."""
    with av.open(io.BytesIO(sample["mp4"])) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    spec = proc.spec
    start = spec.random_starts(len(frames) / fps, fps, 1, gen)[0]
    idx = [min(len(frames) - 1, round(t * fps)) for t in spec.frame_times(start, fps)]
    proc.video_tf(torch.from_numpy(np.stack([frames[i] for i in idx])), gen)
    wave, _ = load_audio(sample.get("flac", sample.get("wav")), proc.fbank.sample_rate)
    proc._audio(wave, [start + spec.span_s(fps) / 2], gen)


XKD_LOCAL = {"crop_scale": [0.08, 0.4], "jitter": 0.4, "jitter_p": 1.0, "hue": 0.2,
             "grey_p": 0.2, "gain_db": 1.9, "gain_p": 1.0}  # fmt: skip


def xkd_local_view(frames: int, crop: int, audio_frames: int) -> LocalViewSpec:
    """XKD's local view (its recipe's options) of clips of these sizes, 16-px patches and
    4-frame tubelets: a quarter of the frames and fbank frames, 1 / 1.16 of the side."""
    return LocalViewSpec(
        frames=max(1, frames // 4),
        size=max(16, int(crop / 1.16) // 16 * 16),
        audio_frames=max(16, audio_frames // 4 // 16 * 16),
        augment=XKD_LOCAL,
    )


def rate(fn, samples: list[dict], clips: int) -> tuple[float, float]:
    """Clips per second of ``fn(sample)`` over ``clips`` calls cycling through ``samples``:
    (per wall-clock second, per second of this process's CPU time). On a busy machine the
    CPU-time rate is what one dedicated core would do."""
    fn(samples[0])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(clips):
        fn(samples[i % len(samples)])
    return clips / (time.perf_counter() - t0), clips / (time.process_time() - c0)


def per_frame_rgb(fn):
    """``fn`` with the frames converted by PyAV's ``to_ndarray(format="rgb24")``, which sets up
    a new swscale context for every frame (what the loader did before ``decode.to_rgb``)."""

    def run(sample):
        keep = decode.to_rgb
        decode.to_rgb = lambda frame: frame.to_ndarray(format="rgb24")
        try:
            return fn(sample)
        finally:
            decode.to_rgb = keep

    return run


def alternated(runs: dict, clips: int, rounds: int = 3) -> dict[str, float]:
    """Mean CPU-time clips/s of each ``runs[name] = (fn, samples)``, alternated over rounds."""
    got: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, samples) in runs.items():
            got[name].append(rate(fn, samples, clips)[1])
    return {name: sum(v) / len(v) for name, v in got.items()}


def encoding_rates(plain: Path, samples: list[dict], proc, gen, clips: int):
    """CPU-time clips/s of ``proc`` on ``samples`` (data_prep's default encoding) and on the same
    clips from ``plain`` (``--tune none``), alternated over 3 rounds; and their mp4 bytes."""
    by_key = {s["__key__"]: s for s in load_samples(plain, 16)}
    base = [by_key[s["__key__"]] for s in samples]

    def fn(s):
        return proc(s, gen)

    mean = alternated({"tuned": (fn, samples), "plain": (fn, base)}, clips)
    size = [sum(len(s["mp4"]) for s in group) for group in (samples, base)]
    return (mean["tuned"], mean["plain"]), size


def dataloader_rates(data: Path, prep: dict, rounds: int, batches: int) -> dict[str, float]:
    """Mean clips/s of batches of 16 drawn from a one-worker DataLoader, per ``features_on``."""
    from avssl.data.datamodule import AVDataModule

    rates: dict[str, list[float]] = {"loader": [], "device": []}
    for _ in range(rounds):
        for mode, got in rates.items():
            dm = AVDataModule(data=str(data), train_split=None, batch_size=16, num_workers=1,
                              num_frames=prep["num_frames"], frame_stride=prep["frame_stride"],
                              crop_size=prep["crop_size"], features_on=mode,
                              audio_frames=prep["fbank"]["target_frames"],
                              batches_per_epoch=10**6)  # fmt: skip
            batches_in = iter(dm.train_dataloader())
            for _ in range(2):  # the worker's start and its first batches
                next(batches_in)
            t0 = time.perf_counter()
            for _ in range(batches):
                next(batches_in)
            got.append(16 * batches / (time.perf_counter() - t0))
            del batches_in
    return {mode: sum(v) / len(v) for mode, v in rates.items()}


def scan_rates(data: Path, prep: dict, workers: list[int], batch: int, batches: int) -> list:
    """Clips/s of a DataLoader with each number of workers (features on the device, clips on
    keyframes for one frame): how the loader scales with the cores (on a shared-core machine
    this includes hyperthreads and the main process's share)."""
    from avssl.data.datamodule import AVDataModule

    got = []
    for n in workers:
        dm = AVDataModule(data=str(data), train_split=None, batch_size=batch, num_workers=n,
                          num_frames=prep["num_frames"], frame_stride=prep["frame_stride"],
                          crop_size=prep["crop_size"], features_on="device",
                          audio_frames=prep["fbank"]["target_frames"], batches_per_epoch=10**6,
                          keyframe_starts=prep["num_frames"] == 1)  # fmt: skip
        batches_in = iter(dm.train_dataloader())
        for _ in range(2 * n):  # the workers' start and their first batches
            next(batches_in)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(batches_in)
        got.append((n, batch * batches / (time.perf_counter() - t0)))
        del batches_in
    return got


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[int], argparse.ArgumentParser]:
    """The options, the --scan worker counts and the parser; argparse errors for bad values."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="prepared shards to read (default: build)")
    ap.add_argument("--out", default="", help="where to build the synthetic shards")
    ap.add_argument("--clips", type=int, default=60, help="clips timed per path")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--audio-seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    ap.add_argument("--dataloader", action="store_true", help="also time a 1-worker DataLoader")
    ap.add_argument("--repeats", type=int, default=4, help="entries per sample, repeated sampling")
    ap.add_argument("--scan", default="", help="also time DataLoaders with these worker counts")
    args = ap.parse_args(argv)
    try:
        scan = [int(n) for n in args.scan.split(",") if n.strip()]
    except ValueError:
        ap.error(f"--scan takes worker counts joined by commas, got {args.scan!r}")
    if any(n < 1 for n in scan):
        ap.error(f"--scan: worker counts must be >= 1, got {args.scan!r}")
    if args.repeats < 1 or args.clips < 1:
        ap.error("--repeats and --clips must be >= 1")
    if args.quick:
        args.clips, args.frames, args.crop = 3, 4, 64
    return args, scan, ap


def _measure(args: argparse.Namespace, scan: list[int], data: Path, plain: Path | None,
             samples: list[dict]) -> dict:  # fmt: skip
    """Every rate the report prints, one worker's processing in this process."""
    fb = FbankConfig(target_frames=round(args.audio_seconds * 100))
    prep = {"num_frames": args.frames, "frame_stride": args.stride, "crop_size": args.crop,
            "video_mean": [0.485, 0.456, 0.406], "video_std": [0.229, 0.224, 0.225],
            "fbank": fb.to_dict()}  # fmt: skip
    proc = build_processor(prep, "train", 1, "aligned", train=True, threads=1)
    gen = torch.Generator().manual_seed(0)
    ours = rate(lambda s: proc(s, gen), samples, args.clips)
    wave_proc = build_processor(prep, "train", 1, "aligned", train=True, threads=1, on_device=True)
    waves = rate(lambda s: wave_proc(s, gen), samples, args.clips)
    rep_proc = build_processor(  # what TrainStream(repeats=R) runs once per decoded sample
        prep, "train", args.repeats, "aligned", train=True, threads=1, on_device=True
    )
    key_proc = build_processor(
        prep, "train", 1, "aligned", train=True, threads=1, on_device=True,
        keyframe_starts=True,
    )  # fmt: skip
    video_proc = build_processor(  # a video-only step (VideoMAE): no audio decoded
        prep, "train", 1, "aligned", train=True, threads=1, on_device=True,
        modalities=("video",),
    )  # fmt: skip
    short = {**prep, "fbank": FbankConfig(target_frames=320).to_dict()}  # VATT's 3.2 s
    by_window, whole = (
        build_processor(short, "train", 1, "aligned", train=True, threads=1, on_device=True)
        for _ in range(2)
    )
    whole.audio_windows = False  # the recording decoded whole, the window cut from it
    wavs, flacs = with_audio(samples, "wav"), with_audio(samples, "flac")
    jpegs = with_jpeg_frames(wavs, 1.0)
    # these clips' frames stored as JPEG at the rate the clip samples (fps / stride)
    dense = with_jpeg_frames(samples, stride=args.stride)
    dense_proc = build_processor(  # stride 1 over the stored images: the same frame times
        {**prep, "frame_stride": 1}, "train", 1, "aligned", train=True, threads=1,
        on_device=True, modalities=("video",),
    )  # fmt: skip
    cavmae = build_processor(  # CAV-MAE's sample: one frame from a keyframe + 10 s
        {**prep, "num_frames": 1, "fbank": FbankConfig(target_frames=1000).to_dict()},
        "train", 1, "aligned", train=True, threads=1, on_device=True, keyframe_starts=True,
    )  # fmt: skip
    local_proc = build_processor(  # + XKD's local view of every clip (avssl.data.local_view)
        prep, "train", 1, "aligned", train=True, threads=1, on_device=True,
        local=xkd_local_view(args.frames, args.crop, fb.target_frames),
    )  # fmt: skip
    runs = {"random": (lambda s: wave_proc(s, gen), samples),
            "local": (lambda s: local_proc(s, gen), samples),
            "per_frame": (per_frame_rgb(lambda s: wave_proc(s, gen)), samples),
            "window": (lambda s: by_window(s, gen), flacs),  # FLAC even from WAV shards
            "whole": (lambda s: whole(s, gen), flacs),
            "keyframe": (lambda s: key_proc(s, gen), samples),
            "video": (lambda s: video_proc(s, gen), samples),
            "wav": (lambda s: wave_proc(s, gen), wavs),
            "flac": (lambda s: wave_proc(s, gen), flacs),
            "cavmae_flac": (lambda s: cavmae(s, gen), flacs),
            "cavmae_wav": (lambda s: cavmae(s, gen), wavs),
            "cavmae_jpeg": (lambda s: cavmae(s, gen), jpegs),
            "video_jpeg": (lambda s: dense_proc(s, gen), dense)}  # fmt: skip
    starts = alternated(runs, args.clips)
    reps = max(1, args.clips // args.repeats)
    repeated = [args.repeats * r for r in rate(lambda s: rep_proc(s, gen), samples, reps)]
    if args.dataloader:
        rounds, n = (1, 1) if args.quick else (3, max(4, args.clips // 16))
        through = dataloader_rates(data, prep, rounds, n)
    if scan:
        scanned = scan_rates(data, prep, scan, 8 if args.quick else 64, 2 if args.quick else 10)
    naive = rate(lambda s: naive_clip(proc, s, gen), samples, max(2, args.clips // 3))
    if plain is not None:
        coding = encoding_rates(plain, samples, wave_proc, gen, args.clips)
    return {"ours": ours, "waves": waves, "repeated": repeated, "starts": starts, "naive": naive,
            "dense": dense, "coding": coding if plain is not None else None,
            "scanned": scanned if scan else [],
            "through": through if args.dataloader else None}  # fmt: skip


def _report(args: argparse.Namespace, data: Path, samples: list[dict], res: dict) -> None:
    """Prints the rates of ``_measure`` against their baselines."""
    ours, naive, waves, repeated = res["ours"], res["naive"], res["waves"], res["repeated"]
    starts, dense = res["starts"], res["dense"]
    what = f"{args.frames} frames (stride {args.stride}) at {args.crop} px"
    print(f"[bench loader] {what} + {args.audio_seconds:g} s fbank; {len(samples)} clips of {data}")
    for name, o, n in (("wall", ours[0], naive[0]), ("cpu", ours[1], naive[1])):
        print(f"[bench loader] {name:4s}: avssl {o:.1f} clips/s per worker (target >= 25), "
              f"naive {n:.1f} clips/s, ratio {o / n:.2f}x (target >= 3x)")  # fmt: skip
    for name, o, w in (("wall", ours[0], waves[0]), ("cpu", ours[1], waves[1])):
        print(f"[bench loader] {name:4s}: avssl with the features on the device {w:.1f} clips/s "
              f"per worker, {w / o:.2f}x all in the loader")  # fmt: skip
    for name, w, r in (("wall", waves[0], repeated[0]), ("cpu", waves[1], repeated[1])):
        print(f"[bench loader] {name:4s}: repeated sampling, {args.repeats} entries per decoded "
              f"sample, features on the device {r:.1f} clips/s per worker, {r / w:.2f}x one "
              f"entry per sample")  # fmt: skip
    print(f"[bench loader] cpu : clips starting on keyframes (keyframe_starts), features on the "
          f"device {starts['keyframe']:.1f} clips/s per worker, {starts['random']:.1f} from "
          f"random starts, {starts['keyframe'] / starts['random']:.2f}x")  # fmt: skip
    shared, per_frame = starts["random"], starts["per_frame"]
    print(f"[bench loader] cpu : RGB through one swscale context per thread (to_rgb), features "
          f"on the device {shared:.1f} clips/s per worker, {per_frame:.1f} with PyAV's "
          f"per-frame to_ndarray, {shared / per_frame:.2f}x")  # fmt: skip
    local = xkd_local_view(args.frames, args.crop, round(args.audio_seconds * 100))
    print(f"[bench loader] cpu : with XKD's local view of each clip ({local.frames} frames at "
          f"{local.size} px, {local.audio_frames} fbank frames), features on the device "
          f"{starts['local']:.1f} clips/s per worker, {starts['random']:.1f} without, "
          f"{starts['local'] / starts['random']:.2f}x")  # fmt: skip
    print(f"[bench loader] cpu : video only (modalities [video]), features on the device "
          f"{starts['video']:.1f} clips/s per worker, {starts['random']:.1f} with the audio, "
          f"{starts['video'] / starts['random']:.2f}x")  # fmt: skip
    print(f"[bench loader] cpu : 3.2 s audio windows decoded alone (FlacWindows), features on "
          f"the device {starts['window']:.1f} clips/s per worker, {starts['whole']:.1f} "
          f"decoding the whole recording, {starts['window'] / starts['whole']:.2f}x")  # fmt: skip
    wav, flac = starts["wav"], starts["flac"]
    print(f"[bench loader] cpu : shard audio as WAV (--audio-codec wav), features on the device "
          f"{wav:.1f} clips/s per worker, {flac:.1f} from FLAC, {wav / flac:.2f}x")  # fmt: skip
    wav, flac = starts["cavmae_wav"], starts["cavmae_flac"]
    print(f"[bench loader] cpu : shard audio as WAV, CAV-MAE's sample (1 frame from a keyframe + "
          f"10 s), features on the device {wav:.1f} clips/s per worker, {flac:.1f} from FLAC, "
          f"{wav / flac:.2f}x")  # fmt: skip
    jpeg, mp4 = starts["cavmae_jpeg"], starts["cavmae_wav"]
    print(f"[bench loader] cpu : CAV-MAE's sample with WAV audio, its frame from JPEG frames at 1 "
          f"fps (--jpeg-fps 1), features on the device {jpeg:.1f} clips/s per worker, {mp4:.1f} "
          f"from the mp4's keyframes, {jpeg / mp4:.2f}x")  # fmt: skip
    jpeg, mp4 = starts["video_jpeg"], starts["video"]
    grow = sum(len(v) for x in dense for k, v in x.items() if k.endswith(".jpg"))
    grow = grow / sum(len(x["mp4"]) for x in samples)
    print(f"[bench loader] cpu : video only, frames as JPEG at fps / {args.stride} (--jpeg-fps, "
          f"stride 1), features on the device {jpeg:.1f} clips/s per worker, {mp4:.1f} from the "
          f"mp4 (stride {args.stride}), {jpeg / mp4:.2f}x; video bytes {grow:.2f}x")  # fmt: skip
    if res["coding"] is not None:
        (tuned, untuned), (b_tuned, b_plain) = res["coding"]
        grow = b_tuned / b_plain - 1
        print(f"[bench loader] shard encoding, features on the device: x264 tune fastdecode "
              f"(data_prep's default) {tuned:.1f} clips/s per worker (cpu), tune none "
              f"{untuned:.1f}, {tuned / untuned:.2f}x; video bytes {grow:+.1%}")  # fmt: skip
    for n, r in res["scanned"]:
        print(f"[bench loader] DataLoader with {n} workers, features on the device: {r:.1f} "
              f"clips/s, {r / n:.1f} per worker")  # fmt: skip
    if res["through"] is not None:
        lo, dev = res["through"]["loader"], res["through"]["device"]
        print(f"[bench loader] 1-worker DataLoader, batches of 16: all in the worker {lo:.1f} "
              f"clips/s, features on the device {dev:.1f} clips/s, {dev / lo:.2f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args, scan, ap = _parse(argv)
    tune_worker_process()  # this process does what one DataLoader worker does
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "shards"
        data = Path(args.data) if args.data else build_shards(out, args.quick)
        plain = None  # the same clips encoded without the fastdecode tune (baseline)
        if not args.data:
            plain = build_shards(out.with_name(out.name + "-tune-none"), args.quick, "none",
                                 raw=out / "raw")  # fmt: skip
        samples = [s for s in load_samples(data, 16) if "mp4" in s and ("flac" in s or "wav" in s)]
        if not samples:
            ap.error(f"{data}: no samples with both video and audio among the first 16")
        res = _measure(args, scan, data, plain, samples)
    _report(args, data, samples, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
