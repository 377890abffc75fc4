"""Command line of data_prep (``make prep``); empty strings mean "not given".

Exit codes: 0 done; 1 more failures than --max-failures (manifest still written) or a crashed
worker; 2 user error (missing ROOT or split file, unknown dataset, unwritable OUT, bad option).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from avssl.cli import UserError

GENERIC = (
    ("workers", int, None),
    ("max_failures", float, 0.05),
    ("shard_size", int, 256),
    ("short_side", int, 256),
    ("max_fps", float, 30.0),
    ("sample_rate", int, 16000),
    ("crf", int, 23),
    ("preset", str, "veryfast"),
    ("tune", str, "fastdecode"),
    ("audio_codec", str, "flac"),
    ("jpeg_fps", float, 0.0),
    ("stats_clips", int, 2000),
)
SPECIFIC = (
    ("pattern", str),
    ("csv", str),
    ("labels", str),
    ("layout", str),
    ("test_fraction", float),
    ("split_seed", int),
    ("num_classes", int),
    ("clips_per_class", int),
    ("seed", int),
    ("visual_nuisance", str),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    from data_prep.build import DATASETS

    p = _Parser(
        prog="python -m data_prep",
        description=__doc__,
        epilog=f"datasets: {', '.join(DATASETS)}; see data_prep/README.md",
    )
    p.add_argument("--dataset", default="", help="one of: " + ", ".join(DATASETS))
    p.add_argument("--root", default="", help="folder of the dataset's clips")
    p.add_argument("--splits", default="", help="folder (or file) of index/split files")
    p.add_argument("--out", default="", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, _, default in GENERIC:
        p.add_argument(f"--{name.replace('_', '-')}", default="", help=f"default {default}")
    for name, _ in SPECIFIC:
        p.add_argument(f"--{name.replace('_', '-')}", default="", help="dataset option")
    return p


def _value(name: str, kind: type, raw: str, default: object) -> object:
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return kind(str(raw).strip())
    except ValueError:
        raise UserError(
            f"--{name.replace('_', '-')}: expected {kind.__name__}, got {raw!r}"
        ) from None


def _summary(manifest: dict, out: str, seconds: float) -> float:
    """Prints the counts and where the output went; returns the fraction of failed clips."""
    ok, bad = manifest["num_samples"], manifest["num_failed"]
    frac = bad / max(ok + bad, 1)
    print(f"data_prep: converted {ok}, failed {bad} ({100 * frac:.1f}%) in {seconds:.0f} s")
    print(
        f"data_prep: output in {Path(out).resolve()} ({len(manifest['shards'])} shards, "
        f"splits: {', '.join(f'{k}={v}' for k, v in manifest['splits'].items())})"
    )
    if bad:
        print(f"data_prep: failures with reasons are listed in {Path(out) / 'manifest.json'}")
    return frac


def next_step(manifest: dict, out: str) -> str:
    """What to run on the prepared data: pretraining, or evaluation when it lacks a modality.

    Every pretraining recipe is audio-visual: data without any video (``prep.want_video``
    false, or no converted sample with video) or without any audio is pointed to ``make eval``.
    Counts of None (shards of an older version) are taken as present.
    """
    data = shlex.quote(out)
    if manifest["num_samples"] == 0:
        return "no clip was converted; repair or replace the failed clips and rerun"
    absent = {
        "video": not manifest["prep"].get("want_video", True)
        or manifest.get("num_with_video") == 0,
        "audio": manifest.get("num_with_audio") == 0,
    }
    lacking = [m for m, gone in absent.items() if gone]
    if not lacking:
        return f"make pretrain RECIPE=mavil DATA={data}"
    both = " and ".join(lacking)
    protocol = "esc50_linear" if manifest["dataset"] == "esc50" else "<protocol>"
    return (
        f"no converted clip has {' or '.join(lacking)}, and the pretraining recipes are all "
        f"audio-visual (they need {both}); evaluate an encoder on it instead: make eval "
        f"EVAL={protocol} ENCODER=<bundle> DATA={data}"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs data_prep; returns the exit code."""
    from data_prep.build import prepare_dataset

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        if not args.dataset:
            raise UserError("--dataset is required")
        kw = {n: _value(n, k, getattr(args, n), d) for n, k, d in GENERIC}
        kw["workers"] = kw["workers"] or 1
        opts = {n: _value(n, k, getattr(args, n), None) for n, k in SPECIFIC}
        start = time.monotonic()
        manifest = prepare_dataset(
            args.dataset,
            args.root or None,
            args.splits or None,
            args.out,
            progress=not args.no_progress,
            **kw,
            **opts,
        )
    except UserError as err:
        print(f"data_prep: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except RuntimeError as err:
        print(f"data_prep: error: {err}", file=sys.stderr)
        return 1
    frac = _summary(manifest, args.out, time.monotonic() - start)
    if frac > kw["max_failures"]:
        print(
            f"data_prep: error: {100 * frac:.1f}% of clips failed, more than MAX_FAILURES="
            f"{kw['max_failures']}",
            file=sys.stderr,
        )
        return 1
    print(f"data_prep: next: {next_step(manifest, str(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
