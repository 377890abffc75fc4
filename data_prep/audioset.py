"""AudioSet (https://research.google.com/audioset/): 10-second YouTube segments, 527 classes.

Segment CSVs (``balanced_train_segments.csv``, ``eval_segments.csv``,
``unbalanced_train_segments.csv``) start with 3 comment lines, then rows
``YTID, start_seconds, end_seconds, "m1,m2"`` (comma + space separators, quoted multi-label
mids). ``class_labels_indices.csv`` (``index,mid,display_name``) gives the label order. File
names differ between mirrors: ``--pattern`` (fields ``ytid start end start_int end_int
start_ms end_ms``, e.g. ``{ytid}_{start_int}`` or ``Y{ytid}``); without it the most common
known pattern is detected. Split name = CSV stem. Audio-only mirrors are accepted.
"""

from __future__ import annotations

import csv
from pathlib import Path

from avssl.cli import UserError
from data_prep.common import (
    Context,
    Plan,
    best_pattern,
    csv_rows,
    index_media,
    need_file,
    numbered_lines,
    rel_to,
)
from data_prep.vggsound import format_name

OPTIONS = ("pattern", "csv", "labels")
KNOWN_PATTERNS = (
    "{ytid}_{start_int}",
    "{ytid}_{start:.3f}",
    "{ytid}_{start_int}_{end_int}",
    "{ytid}_{start:.3f}_{end:.3f}",
    "{ytid}_{start_int:06d}",
    "{ytid}_{start_ms}_{end_ms}",
    "{ytid}",
    "Y{ytid}",
)


def _csv_files(ctx: Context, root: Path) -> list[Path]:
    if ctx.options.get("csv"):
        names = [s.strip() for s in str(ctx.options["csv"]).split(",") if s.strip()]
        bases = [Path("."), *(p for p in (ctx.splits, root) if p is not None and p.is_dir())]
        found = []
        for name in names:
            cands = [b / name for b in bases] if not Path(name).is_absolute() else [Path(name)]
            path = next((c for c in cands if c.is_file()), cands[0])
            found.append(need_file(path, "AudioSet segment CSV (--csv)"))
        return found
    if ctx.splits is not None and ctx.splits.is_file():
        return [ctx.splits]
    for folder in (ctx.splits, root, root.parent):
        if folder is not None and folder.is_dir():
            files = sorted(folder.glob("*segments*.csv"))
            if files:
                return files
    raise UserError(
        "AudioSet segment CSVs (*_segments.csv) not found; pass SPLITS=<folder> or --csv"
    )


def read_labels(ctx: Context, root: Path) -> tuple[list[str], dict[str, int]]:
    """``class_labels_indices.csv`` -> (display names by index, mid -> index)."""
    given = ctx.options.get("labels")
    folders = [p for p in (ctx.splits, root, root.parent) if p is not None]
    cands = (
        [Path(given)]
        if given
        else [(f if f.is_dir() else f.parent) / "class_labels_indices.csv" for f in folders]
    )
    path = next((c for c in cands if c.is_file()), cands[0])
    need_file(path, "AudioSet class_labels_indices.csv")
    columns = ("index", "mid", "display_name")
    numbered = csv_rows(path, columns, required=columns)
    if not numbered:
        raise UserError(f"{path}: expected columns index,mid,display_name and a row per class")
    names: dict[int, str] = {}
    mids: dict[str, int] = {}
    for n, row in numbered:
        if not str(row["index"]).strip().isdigit():
            raise UserError(f"{path}:{n}: index {row['index']!r} is not a non-negative integer")
        names[int(row["index"])] = row["display_name"]
        mids[row["mid"]] = int(row["index"])
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{path}: indices must be 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))], mids


def parse_segments(path: Path, mids: dict[str, int]) -> list[dict]:
    rows = []
    for n, line in numbered_lines(path):
        if line.startswith("#"):
            continue
        fields = next(csv.reader([line], skipinitialspace=True))
        if len(fields) != 4 or not fields[0].strip():
            raise UserError(f"{path}:{n}: expected 'YTID, start, end, \"mids\"', got {line!r}")
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise UserError(f"{path}:{n}: start/end seconds are not numbers: {line!r}") from None
        labels = [m.strip() for m in fields[3].split(",") if m.strip()]
        if not labels:
            raise UserError(f"{path}:{n}: no label mids in {line!r}")
        unknown = [m for m in labels if m not in mids]
        if unknown:
            raise UserError(f"{path}:{n}: label {unknown[0]} not in class_labels_indices.csv")
        rows.append({"ytid": fields[0].strip(), "start": start, "end": end, "mids": labels})
    return rows


def _fields(row: dict) -> dict:
    s, e = row["start"], row["end"]
    return {
        "ytid": row["ytid"],
        "start": s,
        "end": e,
        "start_int": int(round(s)),
        "end_int": int(round(e)),
        "start_ms": int(round(s * 1000)),
        "end_ms": int(round(e * 1000)),
    }


def detect_pattern(rows: list[dict], index: dict[str, Path], root: Path) -> str:
    """The known pattern matching the most files (ties: the first in KNOWN_PATTERNS).

    Scores up to 5,000 rows spread evenly over every listed CSV (all rows when none of those
    matches a file: a user may hold the clips of one list only); no rows at all give the
    first pattern.

    Raises:
        UserError: no known pattern matches a file under ``root`` (pass ``--pattern``).
    """
    if not rows:
        return KNOWN_PATTERNS[0]
    pattern = best_pattern(rows, _fields, KNOWN_PATTERNS, index)
    if pattern is not None:
        return pattern
    found = next(iter(index.values()), None)
    example = f"e.g. {found.name}" if found is not None else "no media files there"
    raise UserError(
        f"no known file-name pattern matched the files in ROOT {root} ({example}; tried "
        f"{' '.join(KNOWN_PATTERNS)}); pass --pattern (syntax in data_prep/README.md)"
    )


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    classes, mids = read_labels(ctx, root)
    tables = {path.stem: (path, parse_segments(path, mids)) for path in _csv_files(ctx, root)}
    index = index_media(root)
    all_rows = [row for _, rows in tables.values() for row in rows]
    pattern = ctx.options.get("pattern") or detect_pattern(all_rows, index, root)
    plan = Plan(dataset=ctx.dataset, classes=classes, multilabel=True, require_video=False)
    plan.notes.append(f"file name pattern: {pattern}")
    if len(classes) != 527:
        plan.notes.append(f"class_labels_indices.csv lists {len(classes)} classes (AudioSet: 527)")
    plan.looked_for = f"the segments listed in {', '.join(str(p) for p, _ in tables.values())}"
    for split, (path, rows) in tables.items():
        plan.splits.setdefault(split, [])
        for n, row in enumerate(rows, 1):
            name = format_name(pattern, path, n, **_fields(row))
            found = index.get(name)
            ids = sorted({mids[m] for m in row["mids"]})
            plan.add(
                rel_to(found, root) if found else name,
                found or root / name,
                [split],
                listed_in=path.name,
                label=ids,
                label_name=[classes[i] for i in ids],
                extra={k: row[k] for k in ("ytid", "start", "end", "mids")},
            )
    return plan
