"""The embedded synthetic audio-visual dataset, written as real media files in the UCF101 layout.

``generate(root)`` writes::

    ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.mp4    H.264 + AAC (a few clips without audio)
    ROOT/ucfTrainTestlist/classInd.txt             "<1-based idx> <Class>"
    ROOT/ucfTrainTestlist/trainlist0{1,2,3}.txt    "<Class>/<file> <label>"
    ROOT/ucfTrainTestlist/testlist0{1,2,3}.txt     "<Class>/<file>"
    ROOT/synthetic_meta.json                       settings, classes and per-clip truth

so that it goes through the same path as UCF101 (Soomro et al., https://arxiv.org/abs/1212.0402):
clips are grouped ``g01..g25`` and each of the three splits holds out different groups (with 25
groups exactly as UCF101: 1-7, 8-14, 15-21).

Each class is a shape + motion path (seen in every frame) and a timbre + rhythm (heard at every
event); :mod:`avssl.data.synthetic_classes` lists them. Events follow the class rhythm with a
random per-clip phase and a tempo factor in a narrow range, so per-clip timing says no more than
the class does (DESIGN section 11; "Objects that Sound", https://arxiv.org/abs/1712.06651).
At each event the object flashes and the note starts, at the same instant. Colours, background
texture, position, size, speed, loudness, pitch (+-5 semitones), background noise and off-screen
sounds (other timbres at Poisson times, about one per second, not shown on screen) are drawn
independently of the class. These nuisances are what make the set a learning check: features of
an untrained encoder probe far below a raw spectrum average, and pretraining has to recover the
class (meta format version 2: larger objects, pitch range, distractors).

Workers are spawned processes: a script calling ``generate(..., workers=2)`` needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from avssl.data.synthetic_classes import class_table
from avssl.data.synthetic_plan import (
    MAX_GROUPS,
    event_times,
    held_out_groups,
    plan_clips,
    validate_settings,
)

__all__ = ["generate", "load_meta", "event_times", "event_frames", "event_samples"]

META_NAME = "synthetic_meta.json"
META_FORMAT = "avssl-synthetic"
META_VERSION = 2


def _write_lists(root: Path, classes: list[dict], clips: list[dict], num_groups: int) -> None:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    lines = [f"{i + 1} {c['name']}" for i, c in enumerate(classes)]
    (lists / "classInd.txt").write_text("\n".join(lines) + "\n")
    for split, held_out in held_out_groups(num_groups).items():
        train: list[tuple[str, int]] = []
        test: list[tuple[str, int]] = []
        for c in clips:
            rel = c["file"].split("/", 1)[1]  # "<Class>/<file>"
            (test if c["group"] in held_out else train).append((rel, c["label"] + 1))
        (lists / f"trainlist0{split}.txt").write_text("".join(f"{r} {y}\n" for r, y in train))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{r}\n" for r, _ in test))


def _is_complete(root: Path, settings: dict) -> bool:
    try:
        meta = json.loads((root / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("version") == META_VERSION
        and meta.get("settings") == settings
        and all((root / c["file"]).is_file() for c in meta.get("clips", []))
    )


def _render_all(root: Path, clips: list[dict], classes: list[dict], workers: int, progress):
    from avssl.data.synthetic_render import write_clip

    jobs = [(str(root), c, classes[c["label"]]) for c in clips]
    if workers <= 1:
        for done, job in enumerate(jobs, 1):
            write_clip(*job)
            if progress:
                progress(done, len(jobs))
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(write_clip, *job) for job in jobs]
        for done, fut in enumerate(as_completed(futures), 1):
            fut.result()
            if progress:
                progress(done, len(jobs))


def generate(
    root: str | os.PathLike,
    num_classes: int = 10,
    clips_per_class: int = 40,
    seed: int = 0,
    workers: int | None = None,
    *,
    min_duration: float = 4.0,
    max_duration: float = 8.0,
    fps: int = 25,
    size: tuple[int, int] = (128, 128),
    alt_fps: tuple[int, ...] = (15, 30),
    alt_size: tuple[int, int] = (160, 120),
    sample_rate: int = 22050,
    alt_sample_rate: int = 44100,
    no_audio_fraction: float = 0.05,
    alt_fps_fraction: float = 0.05,
    alt_size_fraction: float = 0.05,
    stereo_fraction: float = 0.3,
    alt_rate_fraction: float = 0.2,
    visual_nuisance: str = "full",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the synthetic dataset under ``root`` in the UCF101 layout; returns ``root``.

    Deterministic for a seed (same meta, same decoded frames and audio; in practice same bytes),
    whatever ``workers``. A complete dataset with the same settings is kept as it is unless
    ``overwrite``; a different one written by this generator is replaced.

    Args:
        root: output folder (created).
        num_classes: classes (1..100; the first 10 differ in shape, motion, timbre and rhythm).
        clips_per_class: clips per class (>= 2), spread over min(25, clips_per_class) groups.
        seed: random seed.
        workers: parallel processes (spawn); default ``min(2, cpu count)``; 1 = in-process.
        min_duration: shortest clip (s). max_duration: longest clip (s).
        fps: frame rate of most clips. size: (width, height) of most clips.
        alt_fps: frame rates of the ``alt_fps_fraction`` clips. alt_size: (width, height) of
            the ``alt_size_fraction`` clips.
        sample_rate: audio rate of most clips; ``alt_sample_rate`` of ``alt_rate_fraction``.
        no_audio_fraction: clips written without an audio stream.
        stereo_fraction: clips with stereo audio (panned), the rest mono.
        visual_nuisance: "full" (default): colours, background texture, position and size vary
            per clip; "plain": those are fixed (a light grey object of mid size starting at the
            centre of a flat dark background), a control set that is easier to see; the audio,
            the timing and the motion speed are the same as in "full" for the same seed.
        overwrite: regenerate even when a complete dataset with these settings exists.
        progress: called as ``progress(done, total)`` after each clip.

    Raises:
        ValueError: invalid settings, or ``root/UCF-101`` exists without a synthetic meta file
            (never overwrite real data).
    """
    settings = validate_settings(
        num_classes=num_classes,
        clips_per_class=clips_per_class,
        seed=seed,
        min_duration=float(min_duration),
        max_duration=float(max_duration),
        fps=fps,
        size=size,
        alt_fps=alt_fps,
        alt_size=alt_size,
        sample_rate=sample_rate,
        alt_sample_rate=alt_sample_rate,
        no_audio_fraction=no_audio_fraction,
        alt_fps_fraction=alt_fps_fraction,
        alt_size_fraction=alt_size_fraction,
        stereo_fraction=stereo_fraction,
        alt_rate_fraction=alt_rate_fraction,
        visual_nuisance=visual_nuisance,
    )
    root = Path(root)
    if not overwrite and _is_complete(root, settings):
        return root
    part = root / (META_NAME + ".part")  # written first: marks a dataset in progress as ours
    if (root / "UCF-101").exists():
        if not (root / META_NAME).exists() and not part.exists():
            raise ValueError(
                f"{root / 'UCF-101'} exists and is not a synthetic dataset; choose an empty folder"
            )
        (root / META_NAME).unlink(missing_ok=True)  # it marks a complete dataset: drop it first
        shutil.rmtree(root / "UCF-101")
        shutil.rmtree(root / "ucfTrainTestlist", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    classes = class_table(num_classes)
    clips = plan_clips(settings, classes)
    groups = min(MAX_GROUPS, clips_per_class)
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "settings": settings,
        "classes": classes,
        "test_groups": held_out_groups(groups),
        "clips": clips,
    }
    part.write_text(json.dumps(meta, separators=(",", ":")))
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    _render_all(root, clips, classes, max(1, min(workers, len(clips))), progress)
    _write_lists(root, classes, clips, groups)
    os.replace(part, root / META_NAME)
    return root


def load_meta(root: str | os.PathLike) -> dict:
    """The ``synthetic_meta.json`` of a generated dataset."""
    return json.loads((Path(root) / META_NAME).read_text())


def event_frames(clip: dict, fps: float | None = None) -> list[int]:
    """Frame indices at which the clip's events are visible (the flash peaks there).

    At the clip's own frame rate (default) these are the exact event frames. At another rate
    (a re-encoded copy) frame ``j`` shows the source frame at ``j / fps``, so the first frame
    showing an event at ``t`` is ``ceil(t * fps)``.
    """
    if fps is None or abs(fps - clip["fps"]) < 1e-9:
        return [int(round(t * clip["fps"])) for t in clip["events"]]
    return [int(math.ceil(t * fps - 1e-6)) for t in event_times(clip)]


def event_samples(clip: dict, sample_rate: int) -> list[int]:
    """Audio sample indices of the clip's note onsets at ``sample_rate``."""
    return [int(s) for s in np.round(event_times(clip) * sample_rate)]
