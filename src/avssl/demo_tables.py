"""The demo's result tables (:mod:`avssl.demo`): Markdown tables of linear-probe top-1.

One table compares the random-init baseline with one pretrained run per feature kind (mean
over the splits, the gain, the per-split values); the other reports several seeds' runs with
the gains' mean, sample standard deviation, minimum and per-seed values.
"""

from __future__ import annotations

import statistics


def _table(random: dict, trained: dict, recipe: str) -> str:
    """Markdown table: mean top-1 over the splits per feature kind, random init vs trained."""
    lines = [
        f"| features | random init top-1 (%) | {recipe}-pretrained top-1 (%) | gain (points) "
        "| pretrained, per split |",
        "|---|---|---|---|---|",
    ]
    for kind, mean in trained["summary"].items():
        base = random["summary"][kind]["top1"]
        per = ", ".join(
            f"{r['metrics']['top1']:.1f}" for r in trained["rounds"] if r["kind"] == kind
        )
        lines.append(
            f"| {kind} | {base:.1f} | {mean['top1']:.1f} | {mean['top1'] - base:+.1f} | {per} |"
        )
    return "\n".join(lines)


def _seeds_table(random: dict, trained: list[dict], recipe: str) -> str:
    """Markdown table for several seeds: per feature kind the random-init top-1, each seed's
    pretrained top-1, and the gains' mean, sample standard deviation, minimum and values."""
    n = len(trained)
    lines = [
        f"| features | random init top-1 (%) | {recipe}-pretrained top-1 (%), seeds 0-{n - 1} "
        "| gain, mean +- sd (points) | gain, lowest | gains per seed |",
        "|---|---|---|---|---|---|",
    ]
    for kind in trained[0]["summary"]:
        base = random["summary"][kind]["top1"]
        tops = [t["summary"][kind]["top1"] for t in trained]
        gains = [t - base for t in tops]
        mean = statistics.fmean(gains)
        sd = statistics.stdev(gains)
        lines.append(
            f"| {kind} | {base:.1f} | {', '.join(f'{t:.1f}' for t in tops)} | {mean:+.1f} +- "
            f"{sd:.1f} | {min(gains):+.1f} | {', '.join(f'{g:+.1f}' for g in gains)} |"
        )
    return "\n".join(lines)
