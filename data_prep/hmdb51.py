"""HMDB51 (https://serre-lab.clps.brown.edu/wp-content/uploads/2012/08/Kuehne_etal_iccv11.pdf).

Layout ``<class>/<video>.avi`` (video names may contain ``( ) ! &``); split files
``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`` with lines ``<video>.avi <id>``:
1 = train, 2 = test, 0 = not used in that split. Every listed video is stored once; the splits
are key lists. Class ids follow the sorted class names.
"""

from __future__ import annotations

import re
from pathlib import Path

from avssl.cli import UserError
from data_prep.common import Context, Plan, find_dir, numbered_lines, resolve

OPTIONS: tuple[str, ...] = ()
SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>[123])\.txt$")
CODES = {"0": None, "1": "train", "2": "test"}


def _split_files(split_dir: Path) -> dict[str, dict[int, Path]]:
    by_class: dict[str, dict[int, Path]] = {}
    for path in sorted(split_dir.iterdir()):
        match = SPLIT_FILE.match(path.name)
        if match:
            by_class.setdefault(match["cls"], {})[int(match["k"])] = path
    if not by_class:
        raise UserError(f"no <class>_test_split<k>.txt files in HMDB51 split folder {split_dir}")
    for cls, files in by_class.items():
        for k in (1, 2, 3):
            if k not in files:
                raise UserError(
                    f"HMDB51 split file not found: {split_dir / f'{cls}_test_split{k}.txt'}"
                )
    return by_class


def _parse(path: Path) -> list[tuple[str, str | None]]:
    rows = []
    for n, line in numbered_lines(path):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or parts[1] not in CODES:
            raise UserError(f"{path}:{n}: expected '<video>.avi <0|1|2>', got {line!r}")
        rows.append((parts[0], CODES[parts[1]]))
    return rows


#: videos per split in the official lists (70 train / 30 test per class; a different count is
#: noted, not refused)
OFFICIAL_SPLITS = {
    f"{kind}{k}": n for k in (1, 2, 3) for kind, n in (("train", 3570), ("test", 1530))
}


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    split_dir = find_dir(
        [
            ctx.splits,
            root / "testTrainMulti_7030_splits",
            root.parent / "testTrainMulti_7030_splits",
        ],
        "HMDB51 split folder (testTrainMulti_7030_splits)",
        "pass SPLITS=<path to testTrainMulti_7030_splits>",
    )
    by_class = _split_files(split_dir)
    classes = sorted(by_class)
    plan = Plan(dataset=ctx.dataset, classes=classes)
    plan.looked_for = f"the videos listed in {split_dir}/<class>_test_split<k>.txt"
    for k in (1, 2, 3):
        plan.splits.setdefault(f"train{k}", [])
        plan.splits.setdefault(f"test{k}", [])
    for label, cls in enumerate(classes):
        for k in (1, 2, 3):
            path = by_class[cls][k]
            for video, kind in _parse(path):
                rel = f"{cls}/{video}"
                names = [f"{kind}{k}"] if kind else []
                plan.add(
                    rel, resolve(root, rel), names, listed_in=path.name, label=label, label_name=cls
                )
    return plan
