"""Checks made before any clip is converted: prep options, and a plan that found no clip.

Each failed check is a one-line :class:`avssl.cli.UserError` (``python -m data_prep`` exit 2),
so that a bad option is named as such instead of failing every clip in the encoder.
"""

from __future__ import annotations

from pathlib import Path

from avssl.cli import UserError
from avssl.data.writer import AUDIO_CODECS, check_tune
from data_prep.common import Plan

#: libx264's presets, fastest first (``x264 --help``).
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
#: libx264's constant rate factor range for 8-bit video.
CRF_RANGE = (0, 51)


def check_numbers(
    workers: int,
    shard_size: int,
    short_side: int,
    sample_rate: int,
    max_fps: float,
    max_failures: float,
    stats_clips: int,
) -> None:
    """Counts, sizes and fractions within their ranges.

    Raises:
        UserError: the first value out of range, named by its command line option.
    """
    for name, value, low in (
        ("workers", workers, 1),
        ("shard-size", shard_size, 1),
        ("short-side", short_side, 2),
        ("sample-rate", sample_rate, 1000),
        ("stats-clips", stats_clips, 1),
    ):
        if int(value) < low:
            raise UserError(f"--{name} must be >= {low}, got {value}")
    if float(max_fps) <= 0:
        raise UserError(f"--max-fps must be > 0, got {max_fps}")
    if not 0 <= float(max_failures) <= 1:
        raise UserError(f"--max-failures must be a fraction within [0, 1], got {max_failures}")


def check_encoding(
    crf: int, preset: str, tune: str, audio_codec: str, jpeg_fps: float, max_fps: float
) -> str:
    """Encoder options known to libx264 and the writer; returns the checked ``tune``.

    Raises:
        UserError: an unknown preset, tune or audio codec, a CRF outside x264's 0..51, or a
            ``jpeg_fps`` outside ``[0, max_fps]``.
    """
    if preset not in X264_PRESETS:
        names = " ".join(X264_PRESETS)
        raise UserError(f"--preset must be one of x264's presets ({names}), got {preset!r}")
    low, high = CRF_RANGE
    if not low <= int(crf) <= high:
        raise UserError(f"--crf must be within {low}..{high} (x264's range), got {crf}")
    try:
        tune = check_tune(tune)
    except ValueError as err:
        raise UserError(f"--tune: {err}") from None
    if audio_codec not in AUDIO_CODECS:
        raise UserError(
            f"--audio-codec must be one of {', '.join(AUDIO_CODECS)}, got {audio_codec!r}"
        )
    if not 0 <= float(jpeg_fps) <= float(max_fps):
        raise UserError(f"--jpeg-fps must be 0 (mp4) or within (0, max-fps], got {jpeg_fps}")
    return tune


def check_plan_found_clips(plan: Plan, root: Path | None) -> None:
    """A plan without any clip (none to convert, none failed) is a user error, not a success.

    Raises:
        UserError: naming the dataset, ROOT, what the adapter looked for and its notes.
    """
    if plan.items or plan.failures:
        return
    where = f" in ROOT {root}" if root is not None else ""
    sought = f": looked for {plan.looked_for}" if plan.looked_for else ""
    notes = "".join(f"; {note}" for note in plan.notes)
    raise UserError(f"no clips found for dataset {plan.dataset}{where}{sought}{notes}")


HELD_OUT = ("test", "val", "validate", "validation", "eval")


def consistency_notes(plan: Plan, official: dict[str, int] | None = None) -> list[str]:
    """Notes on what a plan's lists say that a user should know before training on them: clips
    listed with two labels (the first kept), clips in both the training and the held-out list
    of one split (``train1`` / ``test1``, ``train`` / ``val``, any two ESC-50 folds), and
    split sizes that differ from the dataset's official ones (``official``: split -> clips)."""
    notes = []
    if plan.relabelled:
        key, kept, other = plan.relabelled[0]
        notes.append(
            f"{len(plan.relabelled)} listing(s) give a clip a second label; the first is kept "
            f"(e.g. {key}: {kept!r}, not {other!r})"
        )
    names = list(plan.splits)
    pairs = [(a, a.replace("train", h, 1)) for a in names if "train" in a for h in HELD_OUT]
    folds = sorted(n for n in names if n.startswith("fold"))
    pairs += [(a, b) for i, a in enumerate(folds) for b in folds[i + 1 :]]
    for a, b in pairs:
        if b in plan.splits:
            both = set(plan.splits[a]) & set(plan.splits[b])
            if both:
                notes.append(f"{len(both)} clip(s) are in both {a} and {b} (e.g. {min(both)})")
    for name, want in (official or {}).items():
        got = len(plan.splits.get(name, []))
        if got != want:
            notes.append(
                f"{name}: {got:,} clips found, the official list has {want:,} (a subset, another "
                "list version, or clips missing on disk: see the failures)"
            )
    return notes
