"""Rates of ``bench/loader.py``: clips per second of one processing path, alternated
comparisons, the shard encodings, and whole DataLoaders (one worker, or a scan of worker counts).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from avssl.data import decode
from avssl.data.local_view import LocalViewSpec

_BENCH = str(Path(__file__).resolve().parent)  # bench/ is no package: its modules import
if _BENCH not in sys.path:  # one another by name, however the first of them was loaded
    sys.path.append(_BENCH)

from loader_samples import load_samples  # noqa: E402

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
