"""UCF101 (https://arxiv.org/abs/1212.0402): ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi``.

Index files in ``ucfTrainTestlist/``: ``classInd.txt`` (``<1-based id> <Class>``, label order),
``trainlist0{1,2,3}.txt`` (``<Class>/<file> <id>``) and ``testlist0{1,2,3}.txt``
(``<Class>/<file>``). Traps handled: CRLF endings; the class comes from the folder part of a
line, never from the file name (``HandstandPushups/v_HandStandPushups_g01_c01.avi``).
"""

from __future__ import annotations

from pathlib import Path

from avssl.cli import UserError
from data_prep.common import Context, Plan, find_dir, need_file, numbered_lines, resolve

OPTIONS: tuple[str, ...] = ()
SPLIT_NAMES = ("train1", "test1", "train2", "test2", "train3", "test3")
#: clips per split in the official lists (a different count is noted, not refused)
OFFICIAL_SPLITS = dict(zip(SPLIT_NAMES, (9537, 3783, 9586, 3734, 9624, 3696)))


def read_class_index(path: Path) -> list[str]:
    """``classInd.txt`` -> class names ordered by their 1-based id."""
    ids: dict[int, str] = {}
    for n, line in numbered_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{path}:{n}: expected '<id> <ClassName>', got {line!r}")
        ids[int(parts[0])] = parts[1]
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise UserError(f"{path}: class ids must be 1..{len(ids)} without gaps")
    return [ids[i] for i in range(1, len(ids) + 1)]


def _parse_list(path: Path, classes: dict[str, int], labelled: bool) -> list[tuple[str, int]]:
    """Split list lines -> (relative path, label id from the class folder)."""
    rows = []
    for n, line in numbered_lines(path):
        parts = line.split()
        rel = parts[0].replace("\\", "/")
        folder = rel.split("/")[0] if "/" in rel else ""
        if folder not in classes:
            raise UserError(f"{path}:{n}: class folder {folder!r} of {rel!r} not in classInd.txt")
        label = classes[folder]
        if labelled and len(parts) > 1 and not parts[1].isdigit():
            raise UserError(f"{path}:{n}: label {parts[1]!r} of {rel!r} is not a classInd.txt id")
        if labelled and len(parts) > 1 and int(parts[1]) - 1 != label:
            raise UserError(
                f"{path}:{n}: label {parts[1]} does not match class {folder} "
                f"(id {label + 1} in classInd.txt)"
            )
        rows.append((rel, label))
    return rows


def collect_ucf_layout(ctx: Context, dataset: str, root: Path, split_dir: Path | None) -> Plan:
    """Parses a UCF101-style tree (also used by the synthetic dataset)."""
    video_root = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    split_dir = find_dir(
        [split_dir, root / "ucfTrainTestlist", video_root.parent / "ucfTrainTestlist"],
        "UCF101 split folder (ucfTrainTestlist)",
        "pass SPLITS=<path to ucfTrainTestlist>",
    )
    classes = read_class_index(need_file(split_dir / "classInd.txt", "UCF101 class index"))
    class_ids = {name: i for i, name in enumerate(classes)}
    plan = Plan(dataset=dataset, classes=classes)
    plan.looked_for = f"the clips listed in {split_dir}/trainlist0k.txt and testlist0k.txt"
    for k in (1, 2, 3):
        for kind in ("train", "test"):
            list_path = need_file(split_dir / f"{kind}list0{k}.txt", "UCF101 split file")
            for rel, label in _parse_list(list_path, class_ids, kind == "train"):
                plan.add(
                    rel,
                    resolve(video_root, rel),
                    [f"{kind}{k}"],
                    listed_in=list_path.name,
                    label=label,
                    label_name=classes[label],
                )
    for name in SPLIT_NAMES:
        plan.splits.setdefault(name, [])
    return plan


def collect(ctx: Context) -> Plan:
    return collect_ucf_layout(ctx, ctx.dataset, ctx.need_root(), ctx.splits)
