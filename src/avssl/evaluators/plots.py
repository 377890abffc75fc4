"""PNG plots of an evaluation (matplotlib, Agg backend): a row-normalised confusion matrix and
sorted per-class accuracy (summed over the rounds of a feature kind), sorted per-class average
precision (multi-label probes; averaged over the rounds), or recall@k curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avssl.evaluators.protocols import Protocol


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def make_plots(out: Path, results: dict, p: Protocol, class_names: list[str]) -> list[Path]:
    """Writes the protocol's plots into ``out``; returns their paths. Each title names the
    protocol, the encoder, the feature kind, the splits and how many samples are shown."""
    written = []
    kinds = list(dict.fromkeys(r["kind"] for r in results["rounds"]))
    for kind in kinds:
        rounds = [r for r in results["rounds"] if r["kind"] == kind]
        title = f"{p.name} ({results['encoder']['name']}), {kind}"
        splits = "+".join(r["split"] for r in rounds)
        n_test = sum(int(r["n_test"]) for r in rounds)
        if "confusion" in rounds[0]:
            cm = np.sum([np.asarray(r["confusion"]) for r in rounds], axis=0)
            names = class_names if len(class_names) == len(cm) else [str(i) for i in range(len(cm))]
            sub = f"{splits} pooled: {n_test} test samples" + (
                f", k={p.classifier['k'][0]}" if p.type == "knn" else ""
            )
            written.append(
                confusion_png(cm, names, out / f"confusion_{kind}.png", f"{title}\n{sub}")
            )
            written.append(
                per_class_png(cm, names, out / f"per_class_accuracy_{kind}.png", f"{title}\n{sub}")
            )
        elif "per_class_ap" in rounds[0]:
            ap = np.array([r["per_class_ap"] for r in rounds], dtype=float)  # [rounds, C]
            c = ap.shape[1]
            names = class_names if len(class_names) == c else [str(i) for i in range(c)]
            sub = (f"mean over {splits} ({n_test} test samples); classes without a test "
                   "positive left out")  # fmt: skip
            written.append(
                per_class_ap_png(ap, names, out / f"per_class_ap_{kind}.png", f"{title}\n{sub}")
            )
        else:
            sub = "\n".join(_retrieval_counts(r) for r in rounds)  # one line per round
            written.append(recall_png(rounds, out / f"recall_at_k_{kind}.png", f"{title}\n{sub}"))
    return written


def _retrieval_counts(r: dict) -> str:
    """How many queries a retrieval round scored (cross-modal: pairs, each queried both ways)."""
    if "n_items" in r:
        return f"{r['split']}: {r['n_items']} audio-video pairs"
    return f"{r['split']}: {r['n_test']} test queries, {r['n_train']} train items"


def confusion_png(cm: np.ndarray, names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted class)."""
    plt = _plt()
    c = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.25 * c, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if c <= 60:
        ax.set_xticks(range(c), names, rotation=90, fontsize=max(4, 10 - c // 10))
        ax.set_yticks(range(c), names, fontsize=max(4, 10 - c // 10))
    if c <= 12:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_class_png(cm: np.ndarray, names: list[str], path: Path, title: str) -> Path:
    """Per-class accuracy (recall), sorted, with the mean as a line."""
    plt = _plt()
    totals = cm.sum(axis=1)
    present = np.flatnonzero(totals)
    acc = 100.0 * cm.diagonal()[present] / totals[present]
    order = np.argsort(acc, kind="stable")
    height = min(2 + 0.22 * len(present), 30)
    fig, ax = plt.subplots(figsize=(8, height))
    ax.barh(range(len(order)), acc[order], color="tab:blue")
    ax.set_yticks(
        range(len(order)), [names[present[i]] for i in order], fontsize=max(4, 9 - len(order) // 30)
    )
    return _finish_bars(plt, fig, ax, acc, "accuracy (%)", title, path)


def per_class_ap_png(ap: np.ndarray, names: list[str], path: Path, title: str) -> Path:
    """Per-class average precision ``[rounds, C]`` (NaN: not scored), averaged over the rounds
    that score the class, sorted, with the mean over classes (the mAP of a single round) as a
    line. Class names are written for up to 60 classes."""
    plt = _plt()
    present = np.flatnonzero(~np.isnan(ap).all(axis=0))
    vals = 100.0 * np.array([np.nanmean(ap[:, i]) for i in present])
    order = np.argsort(vals, kind="stable")
    labelled = len(order) <= 60
    fig, ax = plt.subplots(figsize=(8, 2 + 0.22 * len(order) if labelled else 6))
    ax.barh(range(len(order)), vals[order], color="tab:blue", height=0.8 if labelled else 1.0)
    if labelled:
        ax.set_yticks(range(len(order)), [names[present[i]] for i in order], fontsize=8)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(order)} classes, sorted")
    ax.set_ylim(-0.5, max(len(order), 1) - 0.5)
    return _finish_bars(plt, fig, ax, vals, "average precision (%)", title, path)


def _finish_bars(plt, fig, ax, vals: np.ndarray, xlabel: str, title: str, path: Path) -> Path:
    """Per-class bar chart in percent: the mean over classes as a dashed line, axes, saved."""
    if len(vals):
        ax.axvline(
            vals.mean(),
            color="tab:red",
            linestyle="--",
            label=f"mean over classes {vals.mean():.1f} %",
        )
        ax.legend(loc="lower right")
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def recall_png(rounds: list[dict], path: Path, title: str) -> Path:
    """Recall@k curves, one line per round and direction."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rounds:
        groups: dict[str, list[tuple[int, float]]] = {}
        for key, v in r["metrics"].items():
            if "R@" in key:
                prefix, k = key.split("R@")
                groups.setdefault(prefix.rstrip("_") or r["split"], []).append((int(k), v))
        for name, pts in groups.items():
            ks, vs = zip(*sorted(pts))
            ax.plot(ks, vs, marker="o", label=f"{r['split']} {name}".strip())
    ax.set_xscale("log")
    ticks = sorted({int(k.split("R@")[1]) for r in rounds for k in r["metrics"] if "R@" in k})
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
