"""Any folder of clips: one class per first-level sub-folder, or a flat unlabelled collection.

``--layout auto`` (default) uses classes when ROOT holds sub-folders with media and no media
files of its own; ``classes`` forces it (files directly in ROOT get label -1); ``flat``
ignores folders (all labels -1). Every media file below ROOT is a sample (video and/or audio;
files with neither fail). One split, ``all``.
"""

from __future__ import annotations

import os
from pathlib import Path

from avssl.cli import UserError
from data_prep.common import MEDIA_EXTS, Context, Plan, rel_to

OPTIONS = ("layout",)
LAYOUTS = ("auto", "classes", "flat")


def media_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(MEDIA_EXTS)]
    return files


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    layout = ctx.options.get("layout") or "auto"
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    files = media_files(root)
    if not files:
        raise UserError(f"no media files ({', '.join(MEDIA_EXTS)}) below ROOT {root}")
    top_level = any(f.parent == root for f in files)
    labelled = layout == "classes" or (layout == "auto" and not top_level)
    classes = sorted({f.relative_to(root).parts[0] for f in files if f.parent != root})
    if not labelled:
        classes = []
    ids = {c: i for i, c in enumerate(classes)}
    plan = Plan(dataset=ctx.dataset, classes=classes, require_video=False, splits={"all": []})
    plan.notes.append(f"layout: {'one class per sub-folder' if labelled else 'flat, unlabelled'}")
    for path in files:
        rel = rel_to(path, root)
        cls = rel.split("/")[0] if labelled and path.parent != root else None
        label = ids[cls] if cls is not None else -1
        plan.add(rel, path, ["all"], label=label, label_name=cls)
    return plan
