"""The rows and targets of one protocol round (:mod:`avssl.evaluators.tasks`), checked: a
one-line ``UserError`` for an empty split, samples without a label (or multi-label ones where
one class is needed), and NaN or infinite features; samples without the round's modality are
left out and counted."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avssl.cli import UserError
from avssl.evaluators._tensors import non_finite_rows
from avssl.evaluators.features import MODALITIES, FeatureSet
from avssl.evaluators.protocols import Protocol, SplitPair


def _labels(fs: FeatureSet, split: str) -> torch.Tensor:
    y = fs.labels
    if y.ndim != 1:
        raise UserError(
            f"split {split!r} is multi-label: linear/kNN/retrieval need one class "
            "(classifier type linear_multilabel evaluates multi-label data)"
        )
    if len(y) and int(y.min()) < 0:
        raise UserError(f"split {split!r} has {int((y < 0).sum())} samples without a label")
    return y


def _multi_hot(fs: FeatureSet, split: str, num_classes: int) -> torch.Tensor:
    """Float ``[N, C]`` 0/1 targets; single-label data becomes one-hot."""
    y = fs.labels
    if y.ndim == 1:
        y = _labels(fs, split)
        if len(y) and int(y.max()) >= num_classes:
            raise UserError(f"split {split!r} has class ids >= the {num_classes} classes")
        return F.one_hot(y, num_classes).float()
    if y.shape[1] != num_classes:
        raise UserError(f"split {split!r} has {y.shape[1]} label columns for {num_classes} classes")
    return y.float()


def _present(fs: FeatureSet, kind: str) -> torch.Tensor:
    """``[N]`` bool: the sample has the feature kind's modality (both for "joint")."""
    return fs.mask("audio") & fs.mask("video") if kind == "joint" else fs.mask(kind)


def _with_modality(fs: FeatureSet, kind: str, split: str, what: str) -> FeatureSet:
    """The rows of ``fs`` that have ``kind``'s modality; a one-line error when none has."""
    keep = _present(fs, kind)
    if len(fs) and not bool(keep.any()):
        need = "both audio and video" if kind == "joint" else kind
        other = "audio" if kind == "video" else "video"
        raise UserError(
            f"{kind}/{split}: no {what} sample has {need} (all {len(fs)} lack it); to evaluate "
            f"the other features alone, leave {kind} out of the protocol's modality list "
            f'(make eval ARGS="--set modality=[{other}]")'
        )
    return fs if bool(keep.all()) else fs.select([k for k, ok in zip(fs.keys, keep) if ok])


def _non_empty(fs: FeatureSet, where: str, split: str, what: str) -> None:
    """A one-line error when the ``what`` ("train" or "test") split has no sample: its
    metrics would be NaN (and so the mean over the splits) or its classifier would fail."""
    if len(fs):
        return
    failed = f"; {len(fs.skipped)} listed sample(s) could not be decoded" if fs.skipped else ""
    verb = "fit" if what == "train" else "score"
    raise UserError(f"{where}: the {what} split {split!r} has no sample to {verb}{failed}")


def _finite(x: torch.Tensor, keys: list[str], where: str, what: str, modality: str) -> None:
    """A one-line error naming the samples whose features ``x`` (``[N, ...]``) have a NaN or
    infinite entry (a diverged encoder, an overflow): a NaN similarity compares false with
    every other, so retrieval would count it a hit at rank 1 and kNN would vote at random."""
    bad = non_finite_rows(x).tolist()
    if bad:
        names = ", ".join(keys[i] for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise UserError(
            f"{where}: {len(bad)} {what} sample(s) have NaN or infinite {modality} features "
            f"({names}): the encoder's outputs are not finite"
        )


def _check_features(fs: FeatureSet, kind: str, where: str, what: str) -> None:
    """:func:`_finite` for every clip of each modality that ``kind`` uses."""
    for m in MODALITIES if kind == "joint" else (kind,):
        _finite(fs.clips[m], fs.keys, where, what, m)


def checked_rows(
    fs_tr: FeatureSet, fs_te: FeatureSet, kind: str, pair: SplitPair, info: dict
) -> tuple[FeatureSet, FeatureSet]:
    """The train and test rows a round scores: a one-line error for an empty split or
    non-finite features, the samples without ``kind``'s modality left out; ``info`` records
    how many were left out, how many test samples are also in the train split, and the counts
    of the rows kept."""
    info["n_missing_modality"] = {  # left out: no features to score them on
        "train": int((~_present(fs_tr, kind)).sum()),
        "test": int((~_present(fs_te, kind)).sum()),
    }
    info["n_in_both"] = len(set(fs_tr.keys) & set(fs_te.keys))
    where = f"{kind}/{pair.name}"
    _non_empty(fs_tr, where, "+".join(pair.train), "train")
    _non_empty(fs_te, where, pair.test, "test")
    fs_tr = _with_modality(fs_tr, kind, pair.name, "train")
    fs_te = _with_modality(fs_te, kind, pair.name, "test")
    _check_features(fs_tr, kind, where, "train")
    _check_features(fs_te, kind, where, "test")
    info["n_train"], info["n_test"] = len(fs_tr), len(fs_te)
    return fs_tr, fs_te


def targets(
    p: Protocol, fs_tr: FeatureSet, fs_te: FeatureSet, pair: SplitPair, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) targets: ``[N, C]`` 0/1 for ``linear_multilabel``, else ``[N]`` class ids
    (a one-line error for multi-label or unlabelled samples); the test split is checked first."""
    if p.type == "linear_multilabel":
        y_te = _multi_hot(fs_te, pair.test, num_classes)
        y_tr = _multi_hot(fs_tr, "+".join(pair.train), num_classes)
    else:
        y_te = _labels(fs_te, pair.test)
        y_tr = _labels(fs_tr, "+".join(pair.train))
    return y_tr, y_te
