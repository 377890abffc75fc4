"""Evaluation reports: ``results.json``, ``results.md`` (a Markdown table that states the
protocol exactly) and PNG plots (confusion matrix, per-class accuracy or AP, recall@k)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avssl.evaluators.features import JOINT_DOC
from avssl.evaluators.protocols import Protocol

HEADERS = {"d_prime": "d-prime"}  # column headers that differ from the metric key


def columns(p: Protocol, keys: list[str]) -> list[tuple[str, str]]:
    """(metric key, column header) of the protocol's metrics, in the rounds' key order."""
    out = []
    for key in keys:
        if p.type == "linear_multilabel":
            if key in p.metrics:
                out.append((key, HEADERS.get(key, key)))
        elif p.type in ("linear", "knn"):
            metric = key.split("_", 1)[1] if p.type == "knn" else key
            if metric in p.metrics:
                header = key.replace("_", " ", 1) if p.type == "knn" else key
                out.append((key, header.replace("k", "k=", 1) if p.type == "knn" else header))
        elif ("R@" in key and "recall" in p.metrics) or (
            key.endswith("medr") and "medr" in p.metrics
        ):
            out.append((key, key.replace("_", " ")))
    return out


def _chosen(rounds: list[dict]) -> str:
    return ", ".join(f"{r['kind']}/{r['split']}: {r['lambda']:.0e}" for r in rounds)


def _grid(c: dict) -> list[float]:
    return [float(f"{v:.0e}") for v in c["lambdas"]]


def _on_samples(rounds: list[dict]) -> str:
    """How the held-out part is scored when the probe fits clips (``mean_scores``)."""
    if not any(r.get("val_on") == "samples" for r in rounds):
        return ""
    return " of the held-out samples' clip-averaged scores, as the test split is scored,"


def _linear_doc(c: dict, rounds: list[dict]) -> str:
    return (
        "Classifier: multinomial logistic regression (full-batch L-BFGS, tol "
        f"{c['tol']:g}, solver {c['solver']}); features L2-normalised, then standardised "
        f"with train statistics; L2 strength lambda (mean CE + lambda/2 ||W||^2) chosen from "
        f"{_grid(c)} by top-1{_on_samples(rounds)} on a stratified "
        f"{c['val_fraction']:.0%} of the train split (seed {c['seed']}"
        + ("; whole video groups held out" if any(r.get("val_groups") for r in rounds) else "")
        + "), then refit on the "
        f"whole train split. Chosen lambda: {_chosen(rounds)}. The test split chooses nothing."
    )


def _multilabel_doc(c: dict, rounds: list[dict]) -> str:
    counts = {
        (r["kind"], r["split"]): f"AP of {r['n_classes'] - r['n_skipped_ap']}, AUC of "
        f"{r['n_classes'] - r['n_skipped_auc']} of {r['n_classes']} classes"
        for r in rounds
    }
    same = len({(s, c) for (_, s), c in counts.items()}) == len({s for _, s in counts})
    scored = "; ".join(  # the kinds named where they differ (a modality missing in some clips)
        dict.fromkeys(f"{s if same else f'{k}/{s}'}: {c}" for (k, s), c in counts.items())
    )
    return (
        "Classifier: one-vs-rest logistic regression, an independent sigmoid + binary "
        f"cross-entropy probe per class (full-batch L-BFGS, tol {c['tol']:g}); features "
        "L2-normalised, then standardised with train statistics; L2 strength lambda (per "
        f"class mean BCE + lambda/2 ||w_c||^2) chosen from "
        f"{_grid(c)} by mAP{_on_samples(rounds)} on a random "
        f"{c['val_fraction']:.0%} of the train split (seed {c['seed']}; multi-label data "
        "has no stratified split), then refit on the whole train split. Chosen lambda: "
        f"{_chosen(rounds)}. The test split chooses nothing. mAP = mean over classes with a "
        "positive in the test split of the average precision (sum over thresholds of (R_n - "
        "R_n-1) P_n, tied scores one threshold); mAUC = mean ROC AUC over classes with "
        f"positives and negatives; d-prime = sqrt(2) Phi^-1(mAUC). Scored: {scored}."
    )


def _knn_doc(c: dict, rounds: list[dict]) -> str:
    return (
        f"Classifier: weighted kNN, cosine similarity, k in {c['k']}, vote weight "
        f"exp(sim / T) with T = {c['temperature']} (DINO / solo-learn convention)."
    )


def _retrieval_doc(c: dict, rounds: list[dict]) -> str:
    return (
        f"Retrieval: test videos query the train videos by cosine similarity; R@k for k in "
        f"{c['ks']} = % of queries with a same-class video among the k nearest (VCOP); "
        "ties counted against the query."
    )


def _cross_modal_doc(c: dict, rounds: list[dict]) -> str:
    return (
        f"Cross-modal retrieval: audio->video and video->audio on the test split, item i "
        f"matches item i; R@k for k in {c['ks']} and median rank (1-based, ties counted "
        f"against the query); max items: {c.get('max_items') or 'all'}; chance with N items: "
        f"R@k = 100 k / N %, median rank (N + 1) / 2."
        + "".join(
            f" Embeddings scored: {s}." for s in dict.fromkeys(r.get("space") for r in rounds) if s
        )
    )


# the classifier's sentence of describe_protocol, per classifier type
_CLASSIFIER_DOCS = {
    "linear": _linear_doc,
    "linear_multilabel": _multilabel_doc,
    "knn": _knn_doc,
    "retrieval": _retrieval_doc,
    "cross_modal": _cross_modal_doc,
}


def describe_protocol(p: Protocol, rounds: list[dict]) -> str:
    """One paragraph stating splits, clips, classifier settings and what was chosen."""
    pairs = "; ".join(f"{s.name}: {'+'.join(s.train) or '-'} -> {s.test}" for s in p.splits)
    scored = {"linear_multilabel": "sigmoid scores", "knn": "vote shares (each clip's "
              "class votes over their total)"}.get(p.type, "softmax scores")  # fmt: skip
    fitted = "; the probe is fitted on single clips" if p.type.startswith("linear") else ""
    agg = (
        "clip features averaged"
        if p.clip_aggregation == "mean_features"
        else f"{scored} averaged over clips{fitted}"
    )
    changed = f", changed with --set {' '.join(p.overrides)}" if p.overrides else ""
    parts = [
        f"Protocol `{p.name}` ({p.path}{changed}): dataset {p.dataset}; splits (train -> "
        f"test): {pairs}.",
        f"Features: {', '.join(p.kinds)}; {p.clips_per_video} uniformly spaced clip(s) per "
        f"video, centre crop, {agg}.",
    ]
    if "joint" in p.kinds:
        parts.append(JOINT_DOC[0].upper() + JOINT_DOC[1:] + ".")
    parts.append(_CLASSIFIER_DOCS[p.type](p.classifier, rounds))
    return " ".join(parts)


def to_markdown(results: dict, p: Protocol) -> str:
    """The results table (one row per round, plus the mean per feature kind)."""
    rounds = results["rounds"]
    cols = columns(p, list(rounds[0]["metrics"]))
    head = ["features", "split", "train -> test", "n train/test"] + [h for _, h in cols]
    lines = [
        f"## {p.name}: {results['encoder']['name']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rounds:
        pair = f"{'+'.join(r['train']) or '-'} -> {r['test']}"
        n = f"{r['n_train']}/{r['n_test']}"
        vals = [_fmt(r["metrics"][k], k) for k, _ in cols]
        lines.append("| " + " | ".join([r["kind"], r["split"], pair, n, *vals]) + " |")
        if len([x for x in rounds if x["kind"] == r["kind"]]) > 1 and r is _last(rounds, r):
            mean = results["summary"][r["kind"]]
            count = sum(x["kind"] == r["kind"] for x in rounds)
            vals = [f"**{_fmt(mean[k], k)}**" for k, _ in cols]
            lines.append(
                "| " + " | ".join([r["kind"], f"**mean of {count}**", "", "", *vals]) + " |"
            )
    lines += ["", describe_protocol(p, rounds)]
    notes = results.get("notes", [])
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _last(rounds: list[dict], r: dict) -> dict:
    return [x for x in rounds if x["kind"] == r["kind"]][-1]


def _fmt(v: float, key: str = "") -> str:
    """One decimal for percentages and ranks; d-prime (a few units) with three."""
    if v != v:
        return "nan"
    if key == "d_prime":
        return f"{v:.3f}"
    return f"{v:.1f}" if abs(v) < 1e4 else f"{v:.3g}"


def write_report(out: Path, results: dict, p: Protocol, class_names: list[str]) -> list[Path]:
    """Writes results.json, results.md and the plots into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = to_markdown(results, p)
    (out / "results.md").write_text(md)
    written.append(out / "results.md")
    from avssl.evaluators import plots

    written += plots.make_plots(out, results, p, class_names)
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    written.insert(0, out / "results.json")
    return written


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, float) and x != x:
        return None
    return x
