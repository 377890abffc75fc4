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
import sys
import tempfile
from pathlib import Path

import torch

from avssl.data.datamodule import build_processor, tune_worker_process
from avssl.data.fbank import FbankConfig

_BENCH = str(Path(__file__).resolve().parent)  # bench/ is no package: its modules import
if _BENCH not in sys.path:  # one another by name, however the first of them was loaded
    sys.path.append(_BENCH)

from loader_rates import (  # noqa: E402
    XKD_LOCAL,
    alternated,
    dataloader_rates,
    encoding_rates,
    per_frame_rgb,
    rate,
    scan_rates,
    xkd_local_view,
)
from loader_report import report  # noqa: E402
from loader_samples import (  # noqa: E402
    build_shards,
    load_samples,
    naive_clip,
    with_audio,
    with_jpeg_frames,
)

__all__ = [  # the names this script defined before they moved to its sibling modules
    "XKD_LOCAL", "alternated", "build_shards", "dataloader_rates", "encoding_rates",
    "load_samples", "main", "naive_clip", "per_frame_rgb", "rate", "report", "scan_rates",
    "with_audio", "with_jpeg_frames", "xkd_local_view",
]  # fmt: skip


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
    report(args, data, samples, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
