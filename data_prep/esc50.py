"""ESC-50 (https://doi.org/10.1145/2733373.2806390): 2,000 five-second clips, audio only.

``meta/esc50.csv`` columns ``filename,fold,target,category,esc10,src_file,take``; clips in
``audio/<filename>``. Splits ``fold1`` .. ``fold5``; label id = ``target``. No video member is
written (``has_video`` false).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avssl.cli import UserError
from data_prep.common import Context, Plan, csv_rows, need_file, resolve

OPTIONS: tuple[str, ...] = ()
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


#: 400 clips in each of the 5 folds (a different count is noted, not refused)
OFFICIAL_SPLITS = {f"fold{k}": 400 for k in range(1, 6)}


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    if ctx.splits is not None and ctx.splits.is_file():
        meta = ctx.splits
    else:
        meta = (ctx.splits or root / "meta") / "esc50.csv"
    need_file(meta, "ESC-50 metadata (meta/esc50.csv)")
    numbered = csv_rows(meta, COLUMNS, required=("filename", "fold", "target", "category"))
    if not numbered:
        raise UserError(f"{meta}: expected columns {','.join(COLUMNS)} and a row per clip")
    rows = [row for _, row in numbered]
    names = _check_rows(meta, numbered)
    classes = [names[i] for i in range(len(names))]
    plan = Plan(dataset=ctx.dataset, classes=classes, want_video=False, require_video=False)
    plan.looked_for = f"the clips listed in {meta}, under ROOT/audio"
    for k in range(1, 6):
        plan.splits[f"fold{k}"] = []
    for row in rows:
        rel = f"audio/{row['filename']}"
        extra = {
            "fold": row["_fold"],
            "esc10": row["esc10"].strip().lower() == "true",
            "src_file": row["src_file"],
            "take": row["take"],
        }
        plan.add(
            rel,
            resolve(root, rel),
            [f"fold{row['_fold']}"],
            listed_in=meta.name,
            label=row["_target"],
            label_name=row["category"],
            extra=extra,
        )
    return plan


def _check_rows(meta: Path, numbered: list[tuple[int, dict[str, Any]]]) -> dict[int, str]:
    """Checks each row's target and fold (storing them as ``_target``/``_fold``) and returns
    the class names by target, which must number 0..C-1."""
    names: dict[int, str] = {}
    for n, row in numbered:
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except ValueError:
            raise UserError(f"{meta}:{n}: target and fold must be integers") from None
        if not 1 <= fold <= 5:
            raise UserError(f"{meta}:{n}: fold must be 1..5 (ESC-50's five folds), got {fold}")
        if names.setdefault(target, row["category"]) != row["category"]:
            raise UserError(f"{meta}:{n}: target {target} has two categories")
        row["_target"], row["_fold"] = target, fold
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{meta}: targets must be 0..{len(names) - 1} without gaps")
    return names
