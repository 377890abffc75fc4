"""The embedded synthetic dataset (:mod:`avssl.data.synthetic`) through the UCF101 adapter.

The generator writes real media files in the UCF101 layout into ROOT (default ``OUT/raw``);
they are then sharded exactly like UCF101 under the dataset name ``synthetic`` (keys
``synthetic/<Class>/<file stem>``). Each sample json gets the generator's per-clip truth
(class, event times, fps, size, ...) under ``"synthetic"``. An existing generated ROOT is used
as it is unless generator options are given.
"""

from __future__ import annotations

import json
from pathlib import Path

from avssl.cli import UserError
from data_prep.common import Context, Plan, make_key
from data_prep.ucf101 import collect_ucf_layout

OPTIONS = {"num_classes": int, "clips_per_class": int, "seed": int, "visual_nuisance": str}
META_NAME = "synthetic_meta.json"


def _generate(ctx: Context, raw: Path, gen_opts: dict) -> None:
    from tqdm import tqdm

    from avssl.data.synthetic import generate

    bar = tqdm(
        desc="generating synthetic clips", unit="clip", mininterval=1.0, disable=not ctx.progress
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        generate(raw, workers=ctx.workers, progress=progress, **gen_opts)
    except ValueError as err:
        raise UserError(f"synthetic: {err}") from None
    finally:
        bar.close()


def collect(ctx: Context) -> Plan:
    raw = ctx.root if ctx.root is not None else ctx.out / "raw"
    gen_opts = {
        k: kind(ctx.options[k]) for k, kind in OPTIONS.items() if ctx.options.get(k) is not None
    }
    generated = bool(gen_opts) or not (raw / META_NAME).is_file()
    if generated:
        if ctx.root is not None and ctx.root.exists() and not ctx.root.is_dir():
            raise UserError(f"ROOT {ctx.root} is not a folder")
        _generate(ctx, raw, gen_opts)
    plan = collect_ucf_layout(ctx, ctx.dataset, raw, raw / "ucfTrainTestlist")
    meta = json.loads((raw / META_NAME).read_text())
    truth = {}
    for clip in meta.get("clips", []):
        rel = str(clip.get("file", "")).removeprefix("UCF-101/")
        truth[make_key(ctx.dataset, rel)] = clip
    for item in plan.items:
        if item.key in truth:
            item.extra["synthetic"] = truth[item.key]
    plan.notes.append(f"synthetic clips in {raw} ({'generated' if generated else 'reused'})")
    return plan
