"""One protocol round = (feature kind, split pair) -> metrics, for each classifier type."""

from __future__ import annotations

import numpy as np
import torch

from avssl.cli import UserError
from avssl.evaluators._round_inputs import (  # noqa: F401  (the _names: re-exported, moved)
    _check_features,
    _finite,
    _labels,
    _multi_hot,
    _non_empty,
    _present,
    _with_modality,
    checked_rows,
    targets,
)
from avssl.evaluators._tensors import confusion_matrix, topk_accuracy
from avssl.evaluators.features import MODALITIES, FeatureSet
from avssl.evaluators.holdout import video_groups
from avssl.evaluators.knn import knn_predict
from avssl.evaluators.linear_probe import fit_predict, fit_predict_multilabel
from avssl.evaluators.multilabel import multilabel_metrics
from avssl.evaluators.protocols import Protocol, SplitPair
from avssl.evaluators.retrieval import cross_modal, recall_at_k


def _mean_class_acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    accs = [(pred[y == c] == c).double().mean().item() for c in torch.unique(y).tolist()]
    return 100.0 * float(np.mean(accs)) if accs else float("nan")


def _scores(fn, fs_te: FeatureSet, kind: str, aggregate: str, norm: str = "softmax"):
    """Class scores of the test rows; ``mean_scores`` averages each clip's scores over its K
    clips, as probabilities: ``norm`` "softmax" (logits), "sigmoid" (independent per-class
    probes) or "votes" (kNN's vote sums, divided by their total)."""
    if aggregate == "mean_features":
        return fn(fs_te.get(kind))
    clips = fs_te.get(kind, per_clip=True)  # [M, K, D]
    m, k = clips.shape[:2]
    s = fn(clips.reshape(m * k, -1)).double()  # [M * K, C]
    if norm == "votes":  # sums of exp(sim / T) of up to ~1e6 each: a softmax would be one-hot
        prob = s / s.sum(dim=1, keepdim=True).clamp_min(1e-300)
    else:
        prob = s.sigmoid() if norm == "sigmoid" else s.softmax(dim=1)
    return prob.reshape(m, k, -1).mean(dim=1)  # [M, C]


def _train_rows(p: Protocol, fs_tr: FeatureSet, kind: str, y_tr: torch.Tensor, groups):
    """(features, targets, groups, samples) the probe trains on: one row per sample (clip
    features averaged; samples None), or with ``mean_scores`` one row per clip (the sample's
    target and group, and its index in ``samples``), so that the probe is fitted on what it
    scores and lambda is chosen on held-out samples scored as the test ones are."""
    if p.clip_aggregation == "mean_features":
        return fs_tr.get(kind), y_tr, groups, None
    clips = fs_tr.get(kind, per_clip=True)  # [N, K, D]
    n, k = clips.shape[:2]
    samples = np.repeat(np.arange(n), k)
    rows = clips.reshape(n * k, -1)  # [N K, D]
    groups = None if groups is None else np.repeat(np.asarray(groups), k)
    return rows, y_tr.repeat_interleave(k, dim=0), groups, samples


def _classification(scores: torch.Tensor, y: torch.Tensor, prefix: str = "") -> dict:
    metrics = {f"{prefix}{k}": v for k, v in topk_accuracy(scores, y, (1, 5)).items()}
    pred = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, 0]
    metrics[f"{prefix}mean_class_acc"] = _mean_class_acc(pred, y)
    return {"metrics": metrics, "pred": pred}


def run_round(
    p: Protocol,
    fs_tr: FeatureSet,
    fs_te: FeatureSet,
    kind: str,
    pair: SplitPair,
    num_classes: int,
    device,
) -> dict:
    """Metrics of one round plus what the report needs (predictions, chosen settings)."""
    info = _round_info(fs_tr, fs_te, kind, pair)
    if p.type == "cross_modal":
        return {**info, **_cross_modal(p, fs_te)}
    fs_tr, fs_te = checked_rows(fs_tr, fs_te, kind, pair, info)
    y_tr, y_te = targets(p, fs_tr, fs_te, pair, num_classes)
    if p.type == "retrieval":
        x_tr = fs_tr.get(kind)
        info["metrics"] = recall_at_k(fs_te.get(kind), y_te, x_tr, y_tr, p.classifier["ks"], device)
        return info
    if p.type == "linear_multilabel":
        x_tr, y_tr, _, samples = _train_rows(p, fs_tr, kind, y_tr, None)
        try:
            info.update(_linear_multilabel(p, x_tr, y_tr, fs_te, y_te, kind, device, samples))
        except ValueError as err:
            raise UserError(f"{kind}/{pair.name}: {err}") from None
        return info
    try:
        out = _single_label(p, fs_tr, y_tr, fs_te, y_te, kind, num_classes, device)
    except ValueError as err:
        raise UserError(f"{kind}/{pair.name}: {err}") from None
    info.update(out.get("extra", {}))
    info["metrics"] = out["metrics"]
    info["confusion"] = confusion_matrix(out["pred"].numpy(), y_te.numpy(), num_classes)
    return info


def _round_info(fs_tr: FeatureSet, fs_te: FeatureSet, kind: str, pair: SplitPair) -> dict:
    """What every round records first: its feature kind, splits and sample counts."""
    return {
        "kind": kind,
        "split": pair.name,
        "train": pair.train,
        "test": pair.test,
        "n_train": len(fs_tr),
        "n_test": len(fs_te),
    }


def _single_label(
    p: Protocol,
    fs_tr: FeatureSet,
    y_tr: torch.Tensor,
    fs_te: FeatureSet,
    y_te: torch.Tensor,
    kind: str,
    num_classes: int,
    device,
) -> dict:
    """The linear probe's or kNN's metrics and predictions (:func:`_linear`, :func:`_knn`) on the
    rows of :func:`_train_rows`; the probe holds out whole video groups to choose lambda."""
    if p.type == "linear":
        x_tr, y_fit, groups, samples = _train_rows(p, fs_tr, kind, y_tr, video_groups(fs_tr.keys))
        return _linear(p, x_tr, y_fit, fs_te, y_te, kind, num_classes, device, groups, samples)
    x_bank, y_bank, _, _ = _train_rows(p, fs_tr, kind, y_tr, None)  # clips: mean_scores
    return _knn(p, x_bank, y_bank, fs_te, y_te, kind, num_classes, device)


def _probe_settings(clf: dict, device) -> dict:
    """Keyword arguments both linear probes take from the protocol's classifier settings."""
    keys = ("lambdas", "val_fraction", "seed", "max_iter", "tol")
    return {**{k: clf[k] for k in keys}, "device": device, "return_info": True}


def _linear(
    p: Protocol, x_tr, y_tr, fs_te, y_te, kind, num_classes, device, groups, samples
) -> dict:
    """Linear probe: metrics, predictions and the chosen lambda with its held-out accuracies;
    ``groups``: video groups of the training rows (held out whole) or None; ``samples``: the
    sample of each row when rows are clips (``mean_scores``), else None."""
    clf, holder = p.classifier, {}

    def probe(x_te: torch.Tensor) -> torch.Tensor:
        s, holder["info"] = fit_predict(
            x_tr,
            y_tr,
            x_te,
            solver=clf["solver"],
            num_classes=num_classes,
            groups=groups,
            samples=samples,
            **_probe_settings(clf, device),
        )
        return s

    out = _classification(_scores(probe, fs_te, kind, p.clip_aggregation), y_te)
    info = holder["info"]
    out["extra"] = {"lambda": info["lambda"], "val_top1": info.get("val_top1"),
                    "val_groups": info.get("val_groups"), "val_on": info.get("val_on"),
                    **_fit_record(info)}  # fmt: skip
    return out


def _fit_record(info: dict) -> dict:
    """What the report says of the probe's fits: the lambdas whose warm-started fit did no
    iteration (the previous lambda's probe again), and the fits stopped at ``max_iter``."""
    fits = info.get("val_fits") or {}
    grid = list(fits)
    same = [lam for lam in grid[1:] if fits[lam].get("iterations") == 0]
    capped = sum(not f.get("converged", True) for f in [*fits.values(), info.get("refit", {})])
    return {"val_fits": fits, "refit": info.get("refit"), "lambdas_as_previous": same,
            "fits_not_converged": capped}  # fmt: skip


def _linear_multilabel(p: Protocol, x_tr, y_tr, fs_te, y_te, kind, device, samples) -> dict:
    """One-vs-rest probe: mAP / mAUC / d-prime, per-class AP, the chosen lambda with its
    held-out mAPs, and how many classes the test split could not score."""
    clf, holder = p.classifier, {}

    def probe(x_te: torch.Tensor) -> torch.Tensor:
        s, holder["info"] = fit_predict_multilabel(
            x_tr, y_tr, x_te, samples=samples, **_probe_settings(clf, device)
        )
        return s

    scores = _scores(probe, fs_te, kind, p.clip_aggregation, "sigmoid")
    out = multilabel_metrics(scores, y_te)
    out["lambda"], out["val_mAP"] = holder["info"]["lambda"], holder["info"].get("val_mAP")
    out["val_on"] = holder["info"].get("val_on")
    return {**out, **_fit_record(holder["info"])}


def _knn(p: Protocol, x_tr, y_tr, fs_te, y_te, kind, num_classes, device) -> dict:
    """Weighted kNN: metrics for every k, predictions of the first k (for the plots), and
    ``k_capped``: each k above the number of training rows N, where all N vote. The rows are
    the training samples' clip means, or with ``mean_scores`` their single clips (each test
    clip votes among training clips, as the probes are fitted on them)."""
    clf, metrics, pred = p.classifier, {}, None
    for k in clf["k"]:

        def vote(x_te: torch.Tensor, k: int = k) -> torch.Tensor:
            return knn_predict(x_tr, y_tr, x_te, k, clf["temperature"], num_classes, device=device)

        scores = _scores(vote, fs_te, kind, p.clip_aggregation, "votes")
        res = _classification(scores, y_te, f"k{k}_")
        metrics.update(res["metrics"])
        pred = res["pred"] if pred is None else pred
    capped = {int(k): len(x_tr) for k in clf["k"] if int(k) > len(x_tr)}
    return {"metrics": metrics, "pred": pred, "extra": {"k_capped": capped}}


def _cross_modal(p: Protocol, fs: FeatureSet) -> dict:
    both = fs.mask("audio") & fs.mask("video")
    idx = torch.nonzero(both).flatten()
    cap = p.classifier.get("max_items")
    if cap is not None and len(idx) > int(cap):
        gen = torch.Generator().manual_seed(int(p.classifier.get("seed", 0)))
        idx = idx[torch.randperm(len(idx), generator=gen)[: int(cap)]].sort().values
    keys = [fs.keys[i] for i in idx.tolist()]
    for m in [m for m in fs.clips if m.split("_")[0] in MODALITIES]:  # audio, video, *_v2a
        _finite(fs.clips[m][idx], keys, "cross-modal retrieval", "test", m.replace("_", " "))
    a, v = fs.get("audio")[idx], fs.get("video")[idx]
    # the video -> audio direction in its own space where the bundle has one (in_shared_space)
    v2a = (fs.get("audio_v2a")[idx], fs.get("video_v2a")[idx]) if "video_v2a" in fs.clips else None
    if a.shape[1] != v.shape[1]:
        raise UserError(
            f"cross-modal retrieval needs audio and video embeddings of the same size, got "
            f"D={a.shape[1]} (audio) and D={v.shape[1]} (video)"
        )
    if len(idx) == 0:
        raise UserError("no test sample has both audio and video: cross-modal retrieval is empty")
    return {
        "n_items": len(idx),
        "n_without_both": int((~both).sum()),
        "metrics": cross_modal(a, v, tuple(p.classifier["ks"]), v2a=v2a),
    }


def summarise(rounds: list[dict]) -> dict:
    """Mean of every metric over the rounds of each feature kind."""
    out: dict = {}
    for kind in dict.fromkeys(r["kind"] for r in rounds):
        rs = [r["metrics"] for r in rounds if r["kind"] == kind]
        out[kind] = {m: float(np.mean([r[m] for r in rs])) for m in rs[0]}
    return out
