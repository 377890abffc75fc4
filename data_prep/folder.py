"""Any folder of clips: one class per first-level sub-folder, or a flat unlabelled collection.

``--layout auto`` (default) uses classes when ROOT holds sub-folders with media and no media
files of its own; ``classes`` forces it (files directly in ROOT get label -1); ``flat``
ignores folders (all labels -1). Every media file below ROOT is a sample (video and/or audio;
files with neither fail); other files are counted in a note, and linked folders are followed
(each real folder once). Split ``all`` holds every sample; with classes, ``train`` and
``test`` as well: a seeded split stratified by class (see :func:`stratified_split`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from avssl.cli import UserError
from data_prep.common import MEDIA_EXTS, Context, Plan, rel_to, walk_files

OPTIONS = ("layout", "test_fraction", "split_seed")
LAYOUTS = ("auto", "classes", "flat")
TEST_FRACTION, SPLIT_SEED = 0.2, 0


def media_files(root: Path) -> list[Path]:
    """Every media file below ``root`` (linked folders followed once, see ``walk_files``)."""
    return walk_files(root).media


def stratified_split(
    by_class: dict[str, list[str]], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, test) keys: per class, ``fraction * n`` clips (halves up) to test, at least one.

    Within a class, clips are ordered by SHA-1 of ``"<seed>:<key>"`` and the first ones go to
    test, so the split depends only on the keys and the seed (adding a clip moves no other
    clip unless the class's test count changes). A class with >= 2 clips keeps at least one in
    each part; a class with one clip is train only. Both lists follow the order given.
    """
    test: set[str] = set()
    for keys in by_class.values():
        if len(keys) < 2:
            continue
        n_test = min(max(1, int(fraction * len(keys) + 0.5)), len(keys) - 1)
        order = sorted(keys, key=lambda k: hashlib.sha1(f"{seed}:{k}".encode()).hexdigest())
        test.update(order[:n_test])
    every = [k for keys in by_class.values() for k in keys]
    return [k for k in every if k not in test], [k for k in every if k in test]


def _split_options(options: dict[str, Any], labelled: bool) -> tuple[float, int]:
    given = [k for k in ("test_fraction", "split_seed") if options.get(k) is not None]
    if given and not labelled:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise UserError(f"{names} needs class folders (--layout classes); flat folders get 'all'")
    try:
        fraction = float(options.get("test_fraction", TEST_FRACTION))
        seed = int(options.get("split_seed", SPLIT_SEED))
    except (TypeError, ValueError) as err:
        raise UserError(f"--test-fraction / --split-seed: {err}") from None
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--test-fraction must be within (0, 1), got {fraction}")
    return fraction, seed


def collect(ctx: Context) -> Plan:
    root = ctx.need_root()
    layout = ctx.options.get("layout") or "auto"
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    walk = walk_files(root)
    files = walk.media
    if not files:
        passed = "".join(f"; {note}" for note in walk.notes(root))
        raise UserError(f"no media files ({', '.join(MEDIA_EXTS)}) below ROOT {root}{passed}")
    top_level = any(f.parent == root for f in files)
    labelled = layout == "classes" or (layout == "auto" and not top_level)
    fraction, seed = _split_options(ctx.options, labelled)
    classes = sorted({f.relative_to(root).parts[0] for f in files if f.parent != root})
    if not labelled:
        classes = []
    ids = {c: i for i, c in enumerate(classes)}
    plan = Plan(dataset=ctx.dataset, classes=classes, require_video=False, splits={"all": []})
    plan.notes.append(f"layout: {'one class per sub-folder' if labelled else 'flat, unlabelled'}")
    plan.notes += walk.notes(root)
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for path in files:
        rel = rel_to(path, root)
        cls = rel.split("/")[0] if labelled and path.parent != root else None
        label = ids[cls] if cls is not None else -1
        key = plan.add(rel, path, ["all"], label=label, label_name=cls)
        if key is not None and cls is not None:
            by_class[cls].append(key)
    if labelled:
        plan.splits["train"], plan.splits["test"] = stratified_split(by_class, fraction, seed)
        plan.notes.append(
            f"splits train/test: stratified by class, test fraction {fraction}, split seed "
            f"{seed} (per class fraction x clips, halves up, at least 1 test and 1 train clip; "
            "one-clip classes train only; unlabelled files in ROOT only in 'all')"
        )
    return plan
