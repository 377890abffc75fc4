"""The printed lines of ``bench/loader.py``: each rate against its baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parent)  # bench/ is no package: its modules import
if _BENCH not in sys.path:  # one another by name, however the first of them was loaded
    sys.path.append(_BENCH)

from loader_rates import xkd_local_view  # noqa: E402


def report(args: argparse.Namespace, data: Path, samples: list[dict], res: dict) -> None:
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
