"""What the report's plots say they show: protocol, encoder, feature kind, splits, samples."""

from __future__ import annotations

import numpy as np
import pytest

from avssl.evaluators import plots
from avssl.evaluators.protocols import parse_protocol


def _protocol(classifier: dict, modality="video"):
    return parse_protocol({"name": "t", "dataset": "d", "modality": modality,
                           "splits": [{"name": f"split{i}", "train": f"train{i}",
                                       "test": f"test{i}"} for i in (1, 2, 3)],
                           "classifier": classifier})  # fmt: skip


def _round(i: int, **extra) -> dict:
    return {"kind": "video", "split": f"split{i}", "train": [f"train{i}"], "test": f"test{i}",
            "n_train": 10 * i, "n_test": i, **extra}  # fmt: skip


@pytest.fixture()
def titles(monkeypatch, tmp_path):
    """The title each plot would be drawn with (nothing drawn)."""
    got: dict[str, str] = {}
    for fn in ("confusion_png", "per_class_png", "per_class_ap_png"):
        monkeypatch.setattr(plots, fn, lambda v, n, path, title: got.setdefault(path.stem, title))
    monkeypatch.setattr(
        plots, "recall_png", lambda rs, path, title: got.setdefault(path.stem, title)
    )
    return got


def test_pooled_confusion_names_its_splits_and_samples(titles, tmp_path):
    """Before: "3 split(s) pooled", with no split names and no count of the pooled samples
    (the cells sum to all the test sets together)."""
    cm = np.eye(2, dtype=int)
    rounds = [_round(i, confusion=cm) for i in (1, 2, 3)]
    results = {"rounds": rounds, "encoder": {"name": "enc"}}
    plots.make_plots(tmp_path, results, _protocol({"type": "knn"}), ["a", "b"])
    for stem in ("confusion_video", "per_class_accuracy_video"):
        assert titles[stem] == "t (enc), video\nsplit1+split2+split3 pooled: 6 test samples, k=20"


def test_recall_and_ap_plots_say_how_many_samples(titles, tmp_path):
    """Before: the recall@k title named neither the splits nor the numbers of queries."""
    rounds = [_round(i, metrics={"R@1": 50.0, "R@5": 80.0}) for i in (1, 2)]
    results = {"rounds": rounds, "encoder": {"name": "enc"}}
    plots.make_plots(tmp_path, results, _protocol({"type": "retrieval"}), [])
    assert titles["recall_at_k_video"] == (
        "t (enc), video\nsplit1: 1 test queries, 10 train items\nsplit2: 2 test queries, "
        "20 train items"
    )
    ap = [_round(i, per_class_ap=[0.5, float("nan")]) for i in (1, 2)]
    p = _protocol({"type": "linear_multilabel"})
    plots.make_plots(tmp_path, {"rounds": ap, "encoder": {"name": "enc"}}, p, [])
    assert titles["per_class_ap_video"] == (
        "t (enc), video\nmean over split1+split2 (3 test samples); classes without a test "
        "positive left out"
    )


def test_cross_modal_recall_says_how_many_pairs(titles, tmp_path):
    rounds = [{"kind": "audio-video", "split": "test", "train": [], "test": "test", "n_train": 0,
               "n_test": 7, "n_items": 5, "metrics": {"a2v_R@1": 20.0}}]  # fmt: skip
    p = parse_protocol({"name": "x", "dataset": "d", "modality": "audio-video",
                        "splits": [{"name": "test", "test": "test"}],
                        "classifier": {"type": "cross_modal"}})  # fmt: skip
    plots.make_plots(tmp_path, {"rounds": rounds, "encoder": {"name": "enc"}}, p, [])
    assert titles["recall_at_k_audio-video"] == "x (enc), audio-video\ntest: 5 audio-video pairs"
