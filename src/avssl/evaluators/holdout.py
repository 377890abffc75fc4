"""Held-out parts of a training split, for choosing a probe's L2 strength: which samples
share a source (UCF101's groups, ESC-50's recordings, HMDB51's films; :func:`video_groups`),
stratified and random splits that keep such groups whole, and the per-sample scoring of
held-out clips under ``mean_scores`` (:func:`mean_over_samples`). Used by
:mod:`avssl.evaluators.linear_probe`."""

from __future__ import annotations

import re

import numpy as np
import torch

_GROUP = re.compile(r"_g\d+_c\d+$")  # UCF101 clip names: v_<Class>_g<group>_c<clip>
_ESC50 = re.compile(r"^(\d+-[0-9A-Za-z]+)-[A-Za-z]+-\d+$")  # <fold>-<src_file>-<take>-<target>
#: HMDB51 clip names: <film>_<class>_<visible body>_<camera>_<people>_<viewpoint>_<quality>_<n>
_HMDB = re.compile(r"_[a-z]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+$")


def _group_name(key: str) -> str | None:
    """The source a sample key names, where its dataset's names say (None elsewhere)."""
    if _GROUP.search(key):  # UCF101: the clips of group NN come from one long video
        return key[: key.rfind("_c")]
    folder, _, name = key.rpartition("/")
    esc = _ESC50.match(name)
    if esc:  # ESC-50: the takes of one freesound recording
        return f"{folder}/{esc.group(1)}"
    cls = folder.rpartition("/")[2]
    tail = _HMDB.search(name)
    if tail and name[: tail.start()].endswith(f"_{cls}"):  # HMDB51: the clips of one film
        return f"{folder}/{name[: tail.start() - len(cls) - 1]}"
    return None


def video_groups(keys: list[str]) -> np.ndarray | None:
    """Group ids ``[N]`` for sample keys whose names say which clips share a source: UCF101's
    ``..._gNN_cNN`` (the clips of group NN of a class are cut from one long video), ESC-50's
    ``<fold>-<src_file>-<take>-<target>`` (takes of one recording), HMDB51's
    ``<film>_<class>_<tags>`` (clips of one film, per class). Keys of one source share an id,
    other keys get their own. None when no key names its source."""
    names = [_group_name(k) for k in keys]
    if all(n is None for n in names):
        return None
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(n if n is not None else f"\0{i}", len(ids))
                     for i, n in enumerate(names)])  # fmt: skip


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held_out): about ``fraction`` of each class held out, at least one kept.

    With ``groups`` (``[N]`` ids, :func:`video_groups`) whole groups are held out: per class,
    seeded-random groups are added while fewer than ``round(fraction * n)`` clips are held out,
    and at least one group is kept (a class of one group holds nothing out).
    """
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        target = int(round(fraction * len(idx)))
        if groups is None:
            n_val = min(target, len(idx) - 1)
            held.append(idx[:n_val])
            fit.append(idx[n_val:])
            continue
        order = list(dict.fromkeys(groups[idx].tolist()))  # groups in a seeded random order
        out: set = set()
        n_out = 0
        for g in order[:-1]:
            if n_out >= target:
                break
            out.add(g)
            n_out += int((groups[idx] == g).sum())
        mask = np.isin(groups[idx], list(out))
        held.append(idx[mask])
        fit.append(idx[~mask])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def random_split(
    n: int, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held_out): a seeded random ``round(fraction * n)`` rows held out, at least
    one row kept for fitting. With ``groups`` (``[n]`` ids) whole groups are held out, in a
    seeded random order, while fewer than ``round(fraction * n)`` rows are, and at least one
    group is kept.

    For multi-label data: a stratified split is not defined when a sample belongs to several
    classes at once (iterative stratification, Sechidis et al., 2011,
    https://doi.org/10.1007/978-3-642-23808-6_10, only approximates one), so the held-out part
    is a plain random fraction of the rows. Rare classes may then have no positive in it; they
    are left out of the held-out mAP (:func:`avssl.evaluators.multilabel.per_class`).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        n_val = min(int(round(fraction * n)), n - 1) if n else 0
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    groups = np.asarray(groups)
    names, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    target, n_out, out = int(round(fraction * n)), 0, []
    for i in order[:-1]:
        if n_out >= target:
            break
        out.append(names[i])
        n_out += int(sizes[i])
    mask = np.isin(groups, out)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def row_ids(ids: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    """``ids`` as an ``[n]`` array (None stays None); a ValueError naming ``name`` otherwise."""
    if ids is None:
        return None
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"{name} must be [{n}], got {tuple(ids.shape)}")
    return ids


def kept_together(groups: np.ndarray | None, samples: np.ndarray | None) -> np.ndarray | None:
    """Ids whose rows the held-out split keeps together: the groups, else the samples. With
    both, each sample must lie in one group (its clips are held out together)."""
    if groups is None or samples is None:
        return groups if groups is not None else samples
    pairs = {(str(s), str(g)) for s, g in zip(samples.tolist(), groups.tolist())}
    if len(pairs) != len(np.unique(samples)):
        raise ValueError("samples: the rows of one sample lie in several groups")
    return groups


def mean_over_samples(
    logits: torch.Tensor, y: torch.Tensor, samples: np.ndarray, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_scores`` on held-out rows: (per-sample mean of the rows' probabilities, ``norm``
    "softmax" or "sigmoid", ``[S, C]``; each sample's target), samples in sorted id order."""
    _, first, inverse = np.unique(samples, return_index=True, return_inverse=True)
    inv = torch.from_numpy(inverse.reshape(-1)).to(logits.device)
    prob = logits.double().softmax(dim=1) if norm == "softmax" else logits.double().sigmoid()
    total = torch.zeros(len(first), prob.shape[1], dtype=prob.dtype, device=prob.device)
    total.index_add_(0, inv, prob)
    count = torch.bincount(inv, minlength=len(first)).to(prob.dtype)
    return total / count[:, None], y[torch.from_numpy(first).to(y.device)]


def per_sample(score, samples: np.ndarray, norm: str):
    """``score(logits, y, rows)`` of the held-out ``rows`` after :func:`mean_over_samples`."""

    def scored(logits: torch.Tensor, y: torch.Tensor, rows: np.ndarray) -> float:
        return score(*mean_over_samples(logits, y, samples[rows], norm))

    return scored
