"""Evaluation protocols: ``evaluation/<name>.yaml`` files, loaded and validated.

A protocol names the dataset, the feature kind(s) (``audio``, ``video``, ``joint``; or
``audio-video`` for cross-modal retrieval), the (train, test) split pairs, the clips per video
and how they are aggregated, the classifier settings and the metrics::

    name: ucf101_linear
    dataset: ucf101
    data: shards/ucf101            # default for --data
    modality: video                # or a list, e.g. [audio, video, joint]
    clips_per_video: 10
    clip_aggregation: mean_features  # or mean_scores (linear / knn only)
    splits:                        # train may be a list (ESC-50: the other four folds)
      - {name: split1, train: train1, test: test1}
    classifier: {type: linear, lambdas: [1.0e-6, ...], val_fraction: 0.2, seed: 0}
    metrics: [top1, top5]

Classifier types: ``linear`` (multinomial logistic regression, one class per sample), ``knn``,
``retrieval`` and ``cross_modal`` (single-label data), and ``linear_multilabel`` (one-vs-rest
logistic regression for multi-label data such as AudioSet, metrics mAP / mAUC / d_prime; it
also accepts single-label data, as one-hot targets). Unknown keys are errors (a typo must not
silently fall back to a default). ``avssl eval --set KEY=VALUE`` changes one setting of the
loaded file (:func:`apply_overrides`; dotted keys, YAML values) before it is validated.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from avssl.cli import UserError
from avssl.evaluators.linear_probe import DEFAULT_LAMBDAS

KINDS = ("audio", "video", "joint")
AGGREGATIONS = ("mean_features", "mean_scores")
TOP_KEYS = {
    "name",
    "dataset",
    "description",
    "data",
    "modality",
    "splits",
    "clips_per_video",
    "clip_aggregation",
    "classifier",
    "metrics",
    "notes",
}
CLASSIFIERS: dict[str, dict[str, Any]] = {
    "linear": {
        "lambdas": list(DEFAULT_LAMBDAS),
        "val_fraction": 0.2,
        "seed": 0,
        "max_iter": 500,
        "tol": 1e-4,
        "solver": "torch",
    },
    "linear_multilabel": {
        "lambdas": list(DEFAULT_LAMBDAS),
        "val_fraction": 0.2,
        "seed": 0,
        "max_iter": 500,
        "tol": 1e-4,
    },
    "knn": {"k": [20, 200], "temperature": 0.07},
    "retrieval": {"ks": [1, 5, 10, 20, 50]},
    "cross_modal": {"ks": [1, 5, 10], "max_items": None, "seed": 0},
}
# Classifiers with class scores: mean_scores averages them over the clips (softmax scores for
# linear, sigmoid scores for linear_multilabel, each clip's vote shares for knn); the probes
# are then fitted on single clips too.
SCORED = ("linear", "linear_multilabel", "knn")
METRICS = {
    "linear": ("top1", "top5", "mean_class_acc"),
    "linear_multilabel": ("mAP", "mAUC", "d_prime"),
    "knn": ("top1", "top5", "mean_class_acc"),
    "retrieval": ("recall",),
    "cross_modal": ("recall", "medr"),
}


@dataclass
class SplitPair:
    """One evaluation round: fit on ``train`` (list of split names), score ``test``."""

    name: str
    test: str
    train: list[str] = field(default_factory=list)


@dataclass
class Protocol:
    name: str
    dataset: str
    kinds: list[str]
    splits: list[SplitPair]
    classifier: dict
    metrics: list[str]
    clips_per_video: int = 1
    clip_aggregation: str = "mean_features"
    data: str | None = None
    description: str = ""
    path: str = ""
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, as given

    @property
    def type(self) -> str:
        return self.classifier["type"]

    def to_dict(self) -> dict:
        return asdict(self)


def search_dirs() -> list[Path]:
    """Where protocol names are looked up: $AVSSL_EVAL_DIR, ./evaluation, the checkout's."""
    dirs = [Path(p) for p in os.environ.get("AVSSL_EVAL_DIR", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "evaluation", Path(__file__).resolve().parents[3] / "evaluation"]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def known_protocols() -> list[str]:
    return sorted({p.stem for d in search_dirs() for p in d.glob("*.yaml")})


def protocols_for(dataset: str) -> list[str]:
    """Names of the known protocols whose ``dataset`` is ``dataset`` (unreadable files skipped)."""
    import yaml

    found = set()
    for d in search_dirs():
        for path in d.glob("*.yaml"):
            try:
                raw = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(raw, dict) and str(raw.get("dataset")) == dataset:
                found.add(path.stem)
    return sorted(found)


def find_protocol(name: str) -> Path:
    """Path of protocol ``name`` (a name in the search dirs, or a path to a yaml file)."""
    if not name:
        raise UserError(f"--protocol is required; known protocols: {', '.join(known_protocols())}")
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name:
        if not p.is_file():
            raise UserError(f"protocol file not found: {p}")
        return p
    for d in search_dirs():
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise UserError(f"unknown protocol {name!r}; known protocols: {', '.join(known_protocols())}")


def load_protocol(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Protocol:
    """Loads and validates a protocol by name or path, with ``overrides`` (``KEY=VALUE``, see
    :func:`apply_overrides`) applied first; raises ``UserError`` naming the file."""
    import yaml

    path = find_protocol(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if overrides:
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a protocol must be a mapping")
        raw = apply_overrides(raw, overrides)
    try:
        p = parse_protocol(raw, str(path))
    except (TypeError, ValueError, KeyError) as err:
        given = f" (with --set {' '.join(overrides)})" if overrides else ""
        raise UserError(f"{path}{given}: {err}") from None
    p.overrides = list(overrides)
    return p


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of the protocol mapping ``raw`` with each ``KEY=VALUE`` set: ``KEY`` a dotted
    path into the mapping (``classifier.lambdas``; the last part may be new, the rest must be
    mappings), ``VALUE`` read as YAML (``[0.001]``, ``10``, ``mean_scores``, ``null``).
    Whether the result is a valid protocol is checked afterwards, as for the file itself."""
    import copy

    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UserError(f"--set {item!r}: give KEY=VALUE, e.g. classifier.lambdas=[0.001]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise UserError(f"--set {item!r}: VALUE is not YAML ({first})") from None
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = node.get(part)
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise UserError(f"--set {item!r}: the protocol's {where!r} is not a mapping")
        node[parts[-1]] = value
    return out


def parse_protocol(raw: Any, path: str = "<dict>") -> Protocol:
    """Validates a protocol dict (raises ValueError/TypeError with the offending setting)."""
    if not isinstance(raw, dict):
        raise ValueError("a protocol must be a mapping")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    for key in ("name", "dataset", "modality", "splits", "classifier"):
        if key not in raw:
            raise ValueError(f"missing required key {key!r}")
    clf = _classifier(raw["classifier"])
    kinds = _kinds(raw["modality"], clf["type"])
    metrics = [str(m) for m in raw.get("metrics") or METRICS[clf["type"]][:2]]
    bad = [m for m in metrics if m not in METRICS[clf["type"]]]
    if bad:
        raise ValueError(f"metrics {bad} do not apply to {clf['type']}: {METRICS[clf['type']]}")
    agg = str(raw.get("clip_aggregation", "mean_features"))
    if agg not in AGGREGATIONS or (agg == "mean_scores" and clf["type"] not in SCORED):
        raise ValueError(
            f"clip_aggregation {agg!r}: use mean_features (or mean_scores for {'/'.join(SCORED)})"
        )
    clips = int(raw.get("clips_per_video", 1))
    if clips < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips}")
    return Protocol(
        str(raw["name"]),
        str(raw["dataset"]),
        kinds,
        _splits(raw["splits"], clf["type"]),
        clf,
        metrics,
        clips,
        agg,
        raw.get("data"),
        str(raw.get("description", "")).strip(),
        path,
    )


def _kinds(value: Any, ctype: str) -> list[str]:
    kinds = [str(v) for v in (value if isinstance(value, list) else [value])]
    if ctype == "cross_modal":
        if kinds != ["audio-video"]:
            raise ValueError("cross_modal protocols take modality: audio-video")
        return kinds
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"modality {bad or value!r}: choose from {list(KINDS)} (or a list)")
    return kinds


def _classifier(value: Any) -> dict:
    if not isinstance(value, dict) or value.get("type") not in CLASSIFIERS:
        raise ValueError(f"classifier.type must be one of {sorted(CLASSIFIERS)}")
    ctype = value["type"]
    defaults = CLASSIFIERS[ctype]
    unknown = sorted(set(value) - set(defaults) - {"type"})
    if unknown:
        raise ValueError(
            f"classifier: unknown key(s) {unknown} for {ctype}; allowed: {sorted(defaults)}"
        )
    out = {"type": ctype, **defaults, **{k: v for k, v in value.items() if k != "type"}}
    for key in ("lambdas", "k", "ks"):
        if key in out:
            out[key] = [float(v) if key == "lambdas" else int(v) for v in _as_list(out[key])]
            if not out[key] or min(out[key]) <= 0:
                raise ValueError(f"classifier.{key} must be a non-empty list of positive values")
    for key in ("temperature", "tol"):
        if key in out and float(out[key]) <= 0:
            raise ValueError(f"classifier.{key} must be positive")
    if ctype in ("linear", "linear_multilabel"):
        if not 0.0 < float(out["val_fraction"]) < 1.0:
            raise ValueError("classifier.val_fraction must be in (0, 1)")
    if ctype == "linear":
        if out["solver"] not in ("torch", "sklearn"):
            raise ValueError("classifier.solver must be 'torch' or 'sklearn'")
    return out


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _splits(value: Any, ctype: str) -> list[SplitPair]:
    if not isinstance(value, list) or not value:
        raise ValueError("splits must be a non-empty list of {train, test} entries")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "test" not in entry:
            raise ValueError(f"splits[{i}] must be a mapping with at least 'test'")
        unknown = sorted(set(entry) - {"name", "train", "test"})
        if unknown:
            raise ValueError(f"splits[{i}]: unknown key(s) {unknown}")
        train = [str(t) for t in _as_list(entry.get("train") or [])]
        if ctype != "cross_modal" and not train:
            raise ValueError(f"splits[{i}] needs a 'train' split for {ctype}")
        test = str(entry["test"])
        if test in train:
            raise ValueError(f"splits[{i}]: test split {test!r} is also a train split")
        out.append(SplitPair(str(entry.get("name", test)), test, train))
    return out
