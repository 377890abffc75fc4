"""Kinetics-Sounds (https://arxiv.org/abs/1705.08168): the 32 Kinetics classes with sound used by
XKD (https://arxiv.org/abs/2211.13929; class list from its repository's Kinetics-Sounds split
files), 22,713 train / 1,593 val clips.

The class list is fixed below; label id = index in the sorted list. Clips are found in one of:

1. split lists ``SPLITS/train.txt`` and ``SPLITS/val.txt`` (one ``<class_folder>/<file>`` per
   line or a JSON list, as in the XKD repository), files under ``ROOT/<split>/`` or ``ROOT/``;
2. Kinetics annotation CSVs ``SPLITS/{train,validate|val}.csv``
   (``label,youtube_id,time_start,time_end,split[,is_cc]``), files named
   ``<ytid>_<start:06d>_<end:06d>.*`` anywhere below ROOT (other classes ignored);
3. folders ``ROOT/train/<class>/*`` and ``ROOT/{val,validate,validation}/<class>/*``.

Class folders may spell names with spaces or underscores.
"""

from __future__ import annotations

import json
from pathlib import Path

from avssl.cli import UserError
from data_prep.common import (
    Context,
    Plan,
    Walk,
    csv_rows,
    index_media,
    numbered_lines,
    read_text,
    rel_to,
    resolve,
    walk_files,
)

OPTIONS: tuple[str, ...] = ()
CLASSES = sorted(
    [
        "blowing nose",
        "blowing out candles",
        "bowling",
        "chopping wood",
        "dribbling basketball",
        "laughing",
        "mowing lawn",
        "playing accordion",
        "playing bagpipes",
        "playing bass guitar",
        "playing clarinet",
        "playing drums",
        "playing guitar",
        "playing harmonica",
        "playing keyboard",
        "playing organ",
        "playing piano",
        "playing saxophone",
        "playing trombone",
        "playing trumpet",
        "playing violin",
        "playing xylophone",
        "ripping paper",
        "shoveling snow",
        "shuffling cards",
        "singing",
        "stomping grapes",
        "strumming guitar",
        "tap dancing",
        "tapping guitar",
        "tapping pen",
        "tickling",
    ]
)
VAL_NAMES = ("val", "validate", "validation")
#: clips in XKD's lists (a different count is noted, not refused: Kinetics videos vanish)
OFFICIAL_SPLITS = {"train": 22713, "val": 1593}


def norm(name: str) -> str:
    return name.strip().strip('"').replace("_", " ").lower()


IDS = {norm(c): i for i, c in enumerate(CLASSES)}


def _list_entries(path: Path) -> list[tuple[str, str]]:
    """(where, relative path) of each entry of a split list: ``path:line`` or ``path: entry k``.

    Raises:
        UserError: JSON that does not parse, or an entry that is empty or not a string.
    """
    text = read_text(path).strip()
    if not text.startswith("["):
        return [(f"{path}:{n}", line.split()[0]) for n, line in numbered_lines(path)]
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not a valid JSON list ({err})") from None
    found = []
    for k, entry in enumerate(entries, 1):
        if not isinstance(entry, str) or not entry.split():
            raise UserError(f"{path}: entry {k}: expected '<class_folder>/<file>', got {entry!r}")
        found.append((f"{path}: entry {k}", entry.split()[0]))
    return found


def _from_lists(ctx: Context, plan: Plan, root: Path, lists: dict[str, Path]) -> None:
    for split, path in lists.items():
        for where, rel in _list_entries(path):
            cls = norm(rel.split("/")[0])
            if cls not in IDS:
                raise UserError(f"{where}: {rel!r} is not in a Kinetics-Sounds class folder")
            dirs = [split, *VAL_NAMES] if split == "val" else [split]
            cands = [resolve(root / d, rel) for d in dirs] + [resolve(root, rel)]
            found = next((c for c in cands if c.is_file()), None)
            plan.add(
                rel_to(found, root) if found else f"{split}/{rel}",
                found or root / split / rel,
                [split],
                listed_in=path.name,
                label=IDS[cls],
                label_name=CLASSES[IDS[cls]],
            )


CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def _from_csvs(ctx: Context, plan: Plan, root: Path, tables: dict[str, Path]) -> None:
    index = index_media(root)
    for split, path in tables.items():
        for n, row in csv_rows(path, CSV_COLUMNS):
            cls = norm(row["label"])
            if cls not in IDS:
                continue
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise UserError(f"{path}:{n}: time_start/time_end are not numbers") from None
            ytid = row["youtube_id"].strip()
            if not ytid:
                raise UserError(f"{path}:{n}: youtube_id is empty")
            name = f"{ytid}_{start:06d}_{end:06d}"
            found = index.get(name)
            plan.add(
                rel_to(found, root) if found else f"{split}/{name}",
                found or root / split / name,
                [split],
                listed_in=path.name,
                label=IDS[cls],
                label_name=CLASSES[IDS[cls]],
                extra={"ytid": ytid},
            )


def _from_folders(plan: Plan, root: Path) -> None:
    split_dirs = {"train": root / "train"}
    split_dirs["val"] = next((root / v for v in VAL_NAMES if (root / v).is_dir()), root / "val")
    plan.looked_for = (
        f"media files in folders of the {len(CLASSES)} Kinetics-Sounds classes (e.g. "
        f"'{CLASSES[0]}' or '{CLASSES[0].replace(' ', '_')}') in {split_dirs['train']} "
        f"and {split_dirs['val']}"
    )
    walks = []
    for split, folder in split_dirs.items():
        if not folder.is_dir():
            raise UserError(
                f"Kinetics-Sounds: {folder} not found (expected ROOT/train and "
                "ROOT/val class folders, or split lists/CSVs in SPLITS)"
            )
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            cls = norm(class_dir.name)
            if cls not in IDS:
                continue
            walk = walk_files(class_dir)
            walks.append(walk)
            for path in walk.media:
                plan.add(
                    rel_to(path, root), path, [split], label=IDS[cls], label_name=CLASSES[IDS[cls]]
                )
    every = Walk()
    for walk in walks:
        every.not_media += walk.not_media
        every.links_skipped += walk.links_skipped
        every.unreadable += walk.unreadable
    plan.notes += every.notes(root)


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    plan = Plan(dataset=ctx.dataset, classes=list(CLASSES), splits={"train": [], "val": []})
    sdir = ctx.splits
    if sdir is not None and (sdir / "train.txt").is_file():
        val = next((sdir / f"{v}.txt" for v in VAL_NAMES if (sdir / f"{v}.txt").is_file()), None)
        if val is None:
            raise UserError(f"Kinetics-Sounds split list not found: {sdir / 'val.txt'}")
        plan.looked_for = f"the clips listed in {sdir / 'train.txt'} and {val}"
        _from_lists(ctx, plan, root, {"train": sdir / "train.txt", "val": val})
    elif sdir is not None and (sdir / "train.csv").is_file():
        val = next((sdir / f"{v}.csv" for v in VAL_NAMES if (sdir / f"{v}.csv").is_file()), None)
        if val is None:
            raise UserError(f"Kinetics annotation CSV not found: {sdir / 'validate.csv'}")
        plan.looked_for = (
            f"rows of the {len(CLASSES)} Kinetics-Sounds classes in {sdir / 'train.csv'} and {val}"
        )
        _from_csvs(ctx, plan, root, {"train": sdir / "train.csv", "val": val})
    elif sdir is not None:
        raise UserError(f"SPLITS {sdir} holds neither train.txt/val.txt nor train.csv/validate.csv")
    else:
        _from_folders(plan, root)
        plan.notes.append("splits taken from the ROOT/train and ROOT/val folders")
    return plan
