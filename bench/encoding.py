"""What data_prep's x264 ``fastdecode`` tune costs and buys, on your own clips.

Each clip is transcoded twice with the shard writer (``avssl.data.writer.convert``: H.264 at
data_prep's default size, rate, crf and preset), once with data_prep's default tune
(``fastdecode``) and once with ``--tune none``. For each encoding it prints the mp4 bytes, the
PSNR of the decoded frames against the source's frames (when the writer kept their size and
rate), and the loader's decode time (``avssl.data.decode.decode_frames_at``, one codec thread,
in-memory mp4 opened each time) of one frame at a random time and of a 16-frame clip with
stride 4 at a random start; the two encodings are timed alternately over ``--rounds`` rounds
and the medians compared.

Run: ``python bench/encoding.py CLIP [CLIP ...] [--reps 100] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np

from avssl.data.datamodule import tune_worker_process
from avssl.data.decode import MediaError, decode_frames_at
from avssl.data.writer import EncodeSettings, convert
from avssl.data.writer import MediaError as PrepError


def frames_of(data: bytes | str) -> list[np.ndarray]:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with av.open(src) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def psnr(source: list[np.ndarray], coded: list[np.ndarray]) -> float | None:
    """Mean-square-error PSNR (dB) over the frames both have; None when sizes differ."""
    n = min(len(source), len(coded))
    if n == 0 or source[0].shape != coded[0].shape or abs(len(source) - len(coded)) > 1:
        return None
    mse = np.mean([np.mean((source[i].astype(np.float64) - coded[i]) ** 2) for i in range(n)])
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def decode_ms(mp4: bytes, meta: dict, frames: int, reps: int, seed: int) -> float:
    """Mean CPU ms of one ``decode_frames_at`` call (open included) at random starts."""
    rng = np.random.default_rng(seed)
    fps, duration = float(meta["fps"]), float(meta["duration"])
    span = (frames - 1) * 4 / fps
    t0 = time.process_time()
    for _ in range(reps):
        start = float(rng.uniform(0.0, max(0.0, duration - span - 0.5 / fps)))
        with av.open(io.BytesIO(mp4)) as c:
            decode_frames_at(c, [start + 4 * i / fps for i in range(frames)], threads=1)
    return 1000.0 * (time.process_time() - t0) / reps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clips", nargs="+", help="media files")
    ap.add_argument("--reps", type=int, default=100, help="decodes per timing (16x4: a quarter)")
    ap.add_argument("--rounds", type=int, default=4, help="alternated timing rounds")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.rounds < 1:
        ap.exit(1, "encoding.py: --reps and --rounds must be >= 1\n")
    tune_worker_process()  # what one DataLoader worker does
    for clip in args.clips:
        name = Path(clip).name
        try:
            coded = {t: convert(clip, EncodeSettings(tune=t)) for t in ("fastdecode", "none")}
            source = frames_of(clip)
        except (PrepError, MediaError, av.FFmpegError, OSError) as err:
            print(f"encoding.py: {clip}: {err}", file=sys.stderr)
            return 1
        if any(c.mp4 is None for c in coded.values()):
            print(f"encoding.py: {clip}: no video stream", file=sys.stderr)
            return 1
        times: dict[str, dict[int, list[float]]] = {t: {1: [], 16: []} for t in coded}
        for r in range(args.rounds):
            for t, c in coded.items():
                times[t][1].append(decode_ms(c.mp4, c.meta, 1, args.reps, r))
                times[t][16].append(decode_ms(c.mp4, c.meta, 16, max(1, args.reps // 4), r))
        med = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in times.items()}
        for t, c in coded.items():
            q = psnr(source, frames_of(c.mp4))
            q_text = f"{q:.2f} dB PSNR" if q is not None else "PSNR n/a (resized or resampled)"
            print(
                f"[bench encoding] {name}: tune {t:10s} {len(c.mp4) / 1024:7.0f} KiB, {q_text}, "
                f"decode 1 frame {med[t][1]:.2f} ms, 16x4 clip {med[t][16]:.2f} ms"
            )
        a, b = med["fastdecode"], med["none"]
        size = len(coded["fastdecode"].mp4) / len(coded["none"].mp4) - 1
        print(
            f"[bench encoding] {name}: fastdecode vs none: decode {b[1] / a[1]:.2f}x (1 frame), "
            f"{b[16] / a[16]:.2f}x (16x4), bytes {size:+.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
