"""VGGSound (https://arxiv.org/abs/2004.14368): 10-second YouTube clips, 309 classes.

``vggsound.csv`` has no header; rows ``youtube_id,start_seconds,label,split`` where labels may
contain commas (quoted), so it is read with a CSV reader. Clips are ``<ytid>_<start:06d>.mp4``
anywhere below ROOT (``--pattern`` changes the name). Classes are the labels present in the
CSV, sorted. Splits ``train`` and ``test``.

Mirrors name clips differently: ``--pattern`` takes the fields ``ytid start end`` (``end`` =
start + 10, VGGSound's clip length), e.g. ``{ytid}_{start}_{end}``. Without it the pattern of
:data:`KNOWN_PATTERNS` that names the most files is used (printed in the notes), and the
default when none names any (the missing files are then counted as such).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from avssl.cli import UserError
from data_prep.common import (
    Context,
    Plan,
    best_pattern,
    index_media,
    need_file,
    read_text,
    rel_to,
)

OPTIONS = ("pattern", "csv")
DEFAULT_PATTERN = "{ytid}_{start:06d}"
#: file names of VGGSound mirrors: the dataset's own (``<ytid>_<start:06d>``), unpadded, and
#: with the end second
KNOWN_PATTERNS = (
    DEFAULT_PATTERN,
    "{ytid}_{start}",
    "{ytid}_{start:06d}_{end:06d}",
    "{ytid}_{start}_{end}",
)
CLIP_SECONDS = 10


def find_csv(ctx: Context, root: Path, name: str) -> Path:
    """``--csv``, else SPLITS (a file, or a folder holding ``name``), else ROOT or its parent."""
    if ctx.options.get("csv"):
        return need_file(Path(ctx.options["csv"]), f"{ctx.dataset} CSV (--csv)")
    if ctx.splits is not None:
        path = ctx.splits if ctx.splits.is_file() else ctx.splits / name
        return need_file(path, f"{ctx.dataset} CSV")
    for cand in (root / name, root.parent / name):
        if cand.is_file():
            return cand
    raise UserError(f"{name} not found in {root} or {root.parent}; pass SPLITS=<path to {name}>")


def format_name(pattern: str, path: Path, n: int, **fields: object) -> str:
    try:
        return pattern.format(**fields)
    except (KeyError, ValueError, IndexError) as err:
        raise UserError(f"--pattern {pattern!r} does not fit {path}:{n} ({err})") from None


def _fields(row: tuple[str, int, str, str]) -> dict:
    """The ``--pattern`` fields of a CSV row."""
    return {"ytid": row[0], "start": row[1], "end": row[1] + CLIP_SECONDS}


def parse_rows(path: Path) -> list[tuple[str, int, str, str]]:
    rows = []
    reader = csv.reader(io.StringIO(read_text(path)))
    for row in reader:
        n = reader.line_num
        if not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 4:
            raise UserError(f"{path}:{n}: expected 4 fields ytid,start,label,split, got {row}")
        ytid, start, label, split = (x.strip() for x in row)
        if not start.lstrip("-").isdigit():
            if n == 1 and any(c.isalpha() for c in start):
                continue  # a header line
            raise UserError(f"{path}:{n}: start_seconds {start!r} is not an integer")
        for name, value in (("youtube_id", ytid), ("label", label)):
            if not value:
                raise UserError(f"{path}:{n}: {name} is empty")
        if split not in ("train", "test"):
            raise UserError(f"{path}:{n}: split must be train or test, got {split!r}")
        rows.append((ytid, int(start), label, split))
    return rows


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    path = find_csv(ctx, root, "vggsound.csv")
    rows = parse_rows(path)
    index = index_media(root)
    pattern = ctx.options.get("pattern")
    if not pattern:
        pattern = best_pattern(rows, _fields, KNOWN_PATTERNS, index) or DEFAULT_PATTERN
    classes = sorted({label for _, _, label, _ in rows})
    class_ids = {name: i for i, name in enumerate(classes)}
    plan = Plan(dataset=ctx.dataset, classes=classes, splits={"train": [], "test": []})
    plan.looked_for = f"the clips listed in {path} (files named {pattern}.*)"
    plan.notes.append(f"file name pattern: {pattern}")
    if len(classes) != 309:
        plan.notes.append(f"{path.name} lists {len(classes)} classes (full VGGSound: 309)")
    for n, row in enumerate(rows, 1):
        ytid, start, label, split = row
        name = format_name(pattern, path, n, **_fields(row))
        found = index.get(name)
        rel = rel_to(found, root) if found else name
        plan.add(
            rel,
            found or root / name,
            [split],
            listed_in=path.name,
            label=class_ids[label],
            label_name=label,
            extra={"ytid": ytid, "start": start},
        )
    return plan
