"""Runs a protocol end to end on an encoder bundle: features -> rounds -> results dict."""

from __future__ import annotations

import time

import torch

import avssl
from avssl.cli import UserError
from avssl.evaluators.features import JOINT_DOC, FeatureSet, extract_features
from avssl.evaluators.protocols import Protocol
from avssl.evaluators.tasks import run_round, summarise


def evaluate(
    p: Protocol,
    bundle,
    data: str,
    source,
    keys: dict[str, list[str]],
    modalities: tuple[str, ...],
    name: str,
    opts,
) -> dict:
    """Results of protocol ``p`` (see :func:`avssl.evaluators.run.main` for the checks before).

    Args:
        p: the protocol. bundle: ``EncoderBundle``. data: data folder. source: its DataSource.
        keys: split name -> keys. modalities: encoders to run. name: encoder name (reports).
        opts: ``batch_size``, ``num_workers``, ``device``, ``cache_dir``, ``no_cache``,
            ``no_progress`` (the ``avssl eval`` arguments).
    """
    device = opts.device or None
    feats, t_feat = _features(p, bundle, data, keys, modalities, device, opts)
    space = None
    if p.type == "cross_modal":
        feats, space = in_shared_space(feats, bundle)
    y = feats.labels
    num_classes = len(source.classes) or (y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    rounds = _rounds(p, feats, keys, num_classes, device, space)
    results = _header(p, bundle, data, source, name, num_classes)
    results["features"].update(
        modalities=list(modalities), num_samples=len(feats), seconds=round(t_feat, 1)
    )
    results.update(rounds=rounds, summary=summarise(rounds), skipped=feats.skipped)
    results["notes"] = _notes(p, rounds, feats, source)
    results["notes"] += seen_in_pretraining(p, bundle, source, keys)
    return results


def _features(
    p: Protocol,
    bundle,
    data: str,
    keys: dict[str, list[str]],
    modalities: tuple[str, ...],
    device,
    opts,
) -> tuple[FeatureSet, float]:
    """The features of every sample the splits name (:func:`extract_features`) and the seconds
    they took; a one-line error when the data has none of a modality the protocol needs."""
    union = list(dict.fromkeys(k for ks in keys.values() for k in ks))
    t0 = time.time()
    feats = extract_features(
        bundle,
        data,
        union,
        modalities,
        num_clips=p.clips_per_video,
        batch_size=opts.batch_size,
        num_workers=opts.num_workers,
        device=device,
        cache_dir=None if opts.no_cache else opts.cache_dir,
        progress=not opts.no_progress,
    )
    t_feat = time.time() - t0
    for m in modalities:
        if len(feats) and not bool(feats.masks[m].any()):
            raise UserError(
                f"{data} has no {m} in the splits of protocol {p.name}, but the "
                f"protocol evaluates {', '.join(p.kinds)} features"
            )
    return feats, t_feat


def _rounds(
    p: Protocol,
    feats: FeatureSet,
    keys: dict[str, list[str]],
    num_classes: int,
    device,
    space: str | None,
) -> list[dict]:
    """:func:`run_round` for each feature kind and split pair, in that order; ``space``: the
    cross-modal rounds' embedding space (recorded in each round), or None."""
    rounds = []
    for kind in p.kinds:
        for pair in p.splits:
            fs_tr = feats.select([k for n in pair.train for k in keys[n]])
            fs_te = feats.select(keys[pair.test])
            rounds.append(run_round(p, fs_tr, fs_te, kind, pair, num_classes, device))
            if space is not None:
                rounds[-1]["space"] = space
    return rounds


def in_shared_space(feats: FeatureSet, bundle) -> tuple[FeatureSet, str]:
    """Per-clip features mapped by the bundle's projection heads (cross-modal retrieval), and
    which space was scored; without heads the encoders' clip embeddings, said so. A bundle with
    a video -> audio space of its own (``heads_v2a``) adds ``"audio_v2a"`` / ``"video_v2a"``
    features, which the video -> audio direction is scored on."""
    if bundle.heads is None:
        return feats, (
            "backbone: the encoders' clip embeddings; this bundle has no projection heads (its "
            "objective trains no shared audio-video space, or it was exported before bundles "
            "held them: export it again), so R@k near chance is expected"
        )
    dim = int(bundle.config["heads"]["dim"])
    clips, masks = {}, dict(feats.masks)
    # "<m>_v2a": the video -> audio direction's own space, where the bundle has one
    directions = (("a2v", ""), ("v2a", "_v2a"))[: 1 + (bundle.heads_v2a is not None)]
    for m, x in feats.clips.items():  # [N, K, D] -> [N, K, P], rows without m stay zero
        for direction, tag in directions:
            z = bundle.project(m, x, direction) if len(x) else x.new_zeros(0, x.shape[1], dim)
            clips[m + tag] = z.float().cpu() * feats.masks[m].reshape(-1, 1, 1).float()
            masks[m + tag] = feats.masks[m]
    space = f"shared: the bundle's projection heads into the {bundle.shared_space} space (P={dim})"
    if bundle.heads_v2a is not None:
        v2a = bundle.config["heads"]["v2a"]
        space = (f"shared: audio -> video in the bundle's {bundle.shared_space} space, video -> "
                 f"audio in its {v2a['space']} space (projection heads, P={dim})")  # fmt: skip
    return FeatureSet(feats.keys, feats.labels, clips, masks, feats.skipped), space


def seen_in_pretraining(p: Protocol, bundle, source, keys: dict[str, list[str]]) -> list[str]:
    """Notes on test splits whose clips the encoder saw (unlabelled) in pretraining: its
    bundle records the pretraining dataset and split, and the data here is the same dataset
    (e.g. pretrained on UCF101's train1, which holds the test clips of splits 2 and 3)."""
    seen = (bundle.provenance or {}).get("train_data") or {}
    dataset = source.manifest.get("dataset")
    if not seen or seen.get("dataset") != dataset or dataset is None:
        return []
    try:
        listed = source.split_keys(seen.get("split"))
    except FileNotFoundError:
        return [f"the encoder was pretrained on {dataset} split {seen.get('split')!r}, which "
                "this data does not have: overlap with the test splits not checked"]  # fmt: skip
    pretrained = None if listed is None else set(listed)
    notes = []
    for test in dict.fromkeys(pair.test for pair in p.splits):
        test_keys = keys[test]
        n = len(test_keys) if pretrained is None else sum(k in pretrained for k in test_keys)
        if n:
            notes.append(
                f"{test}: {n} of {len(test_keys)} test clips were in the encoder's pretraining "
                f"data ({dataset} split {seen.get('split') or 'all'}, unlabelled); results on "
                f"{test} are not held out from pretraining"
            )
    return notes


def _header(p: Protocol, bundle, data: str, source, name: str, num_classes: int) -> dict:
    """What was evaluated: protocol, encoder, data, feature settings, versions."""
    m = source.manifest
    return {
        "protocol": p.to_dict(),
        "encoder": {
            "name": name,
            "path": str(bundle.path),
            "provenance": bundle.provenance,
            "embed_dim": bundle.embed_dim,
        },
        "data": {
            "path": str(data),
            "dataset": m.get("dataset"),
            "num_samples": m.get("num_samples"),
            "num_failed_at_prep": m.get("num_failed", 0),
            "num_classes": num_classes,
        },
        "features": {
            "clips_per_video": p.clips_per_video,
            "aggregation": p.clip_aggregation,
            "joint": JOINT_DOC,
        },
        "avssl_version": avssl.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _fit_notes(rounds: list[dict]) -> list[str]:
    """The linear probes' sweep lambdas that repeated the probe before, and unconverged fits."""
    same = [f"{r['kind']}/{r['split']} lambda <= {max(r['lambdas_as_previous']):.0e}"
            for r in rounds if r.get("lambdas_as_previous")]  # fmt: skip
    capped = sum(int(r.get("fits_not_converged") or 0) for r in rounds)
    notes = []
    if same:
        notes.append(
            "lambda sweep: the warm-started fits of the weakest lambdas did no iteration (the "
            "gradient already below tol) and repeated the probe of the lambda before, so they "
            f"are never chosen: {'; '.join(same)}"
        )
    if capped:
        notes.append(f"{capped} probe fit(s) stopped at max_iter before converging")
    return notes


def _knn_notes(rounds: list[dict]) -> list[str]:
    """One note on the kNN rounds whose k exceeded their training samples (all of them vote)."""
    over = []
    for r in rounds:
        capped = r.get("k_capped") or {}  # k -> number of train samples
        if capped:
            n = next(iter(capped.values()))
            over.append(
                f"{r['kind']}/{r['split']} k={', '.join(map(str, capped))} ({n} train samples)"
            )
    if not over:
        return []
    return [f"kNN: where k exceeds the train samples, all of them vote: {'; '.join(over)}"]


def _notes(p: Protocol, rounds: list[dict], feats, source) -> list[str]:
    """Things a reader must know: left-out samples, missing modalities, prep failures."""
    notes = []
    if feats.skipped:
        first = ", ".join(list(feats.skipped)[:10])
        notes.append(
            f"{len(feats.skipped)} sample(s) could not be decoded and are left out: "
            f"{first}{' ...' if len(feats.skipped) > 10 else ''}"
        )
    for r in rounds:
        notes += _round_notes(r, rounds[0]["kind"], notes)
    notes += _fit_notes(rounds) + _knn_notes(rounds)
    failed = source.manifest.get("num_failed", 0)
    if failed:
        notes.append(
            f"{failed} source file(s) failed at prep and are absent from the splits "
            "(see manifest.json)"
        )
    return notes


def _round_notes(r: dict, first_kind: str, before: list[str]) -> list[str]:
    """The notes of one round: its samples left out for a missing modality, its test samples
    also in the train split (said once, for the rounds of ``first_kind``), the classes left
    out of mAP / mAUC (unless a note in ``before`` says the same) and the samples left out of
    cross-modal retrieval."""
    notes = []
    miss = r.get("n_missing_modality", {})
    if any(miss.values()):
        need = "audio or video" if r["kind"] == "joint" else f"the {r['kind']} modality"
        notes.append(
            f"{r['kind']}/{r['split']}: {miss['train']} train and {miss['test']} "
            f"test sample(s) lack {need} and are left out (the table's counts exclude them)"
        )
    if r.get("n_in_both") and r["kind"] == first_kind:  # the same for every kind
        notes.append(
            f"{r['split']}: {r['n_in_both']} test sample(s) are also in the train split "
            f"({'+'.join(r['train'])}): kNN and retrieval find each among the training "
            "items, and the linear probe has fitted it"
        )
    if r.get("n_skipped_ap") or r.get("n_skipped_auc"):  # the same for every kind
        note = (
            f"{r['split']}: {r['n_skipped_ap']} of {r['n_classes']} classes have no "
            f"positive in {r['test']} and are left out of mAP; {r['n_skipped_auc']} (no "
            "positive or no negative) are left out of mAUC"
        )
        notes += [] if note in before or note in notes else [note]
    if r.get("n_without_both"):
        notes.append(
            f"{r['split']}: {r['n_without_both']} test sample(s) lack audio or "
            "video and are left out of cross-modal retrieval"
        )
    return notes
