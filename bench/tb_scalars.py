"""Prints the first and last value of chosen TensorBoard scalars of run folders (GPU scripts).

python bench/tb_scalars.py runs/mavil/<run id> [...] [--tags loss/loss,perf/samples_per_sec]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TAGS = ("loss/loss", "train/nonfinite_skipped", "perf/samples_per_sec", "perf/data_wait_fraction")


def scalars(run: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every event file under ``run``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {t: [] for t in tags}
    for events in sorted(run.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for t in tags:
            if t in acc.Tags().get("scalars", []):
                out[t] += [(e.step, e.value) for e in acc.Scalars(t)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--tags", default=",".join(TAGS))
    args = p.parse_args(argv)
    tags = [t for t in args.tags.split(",") if t]
    bad = 0
    for run in args.runs:
        if not run.is_dir():
            print(f"[tb] {run}: no such run folder")
            bad += 1
            continue
        cells = []
        for tag, values in scalars(run, tags).items():
            if not values:
                cells.append(f"{tag}: none")
                continue
            (s0, v0), (s1, v1) = min(values), max(values)
            cells.append(f"{tag}: {v0:.4g} (step {s0}) -> {v1:.4g} (step {s1})")
        print(f"[tb] {run}: " + "; ".join(cells))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
