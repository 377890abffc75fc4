"""avssl.evaluators: frozen-feature evaluation (DESIGN section 5).

Library functions on plain tensors or NumPy arrays (usable from a notebook):

- :func:`avssl.evaluators.knn.knn_predict` - weighted kNN class scores (DINO convention).
- :func:`avssl.evaluators.linear_probe.fit_predict` - logistic-regression probe, L2 strength
  chosen on a held-out part of the training split (:mod:`~avssl.evaluators.holdout`: which
  samples share a source and are held out together).
- :func:`avssl.evaluators.linear_probe.fit_predict_multilabel` - its one-vs-rest version for
  multi-label data, and :func:`avssl.evaluators.multilabel.multilabel_metrics` (mAP, mAUC,
  d-prime).
- :func:`avssl.evaluators.retrieval.recall_at_k` and
  :func:`avssl.evaluators.retrieval.cross_modal`.

Around them: :mod:`~avssl.evaluators.features` (extraction + cache),
:mod:`~avssl.evaluators.protocols` (``evaluation/*.yaml``), :mod:`~avssl.evaluators.report`
and :mod:`~avssl.evaluators.run` (``avssl eval`` / ``make eval``).

Submodules are imported on first use, so ``import avssl.evaluators`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "knn_predict": "avssl.evaluators.knn",
    "fit_predict": "avssl.evaluators.linear_probe",
    "fit_predict_multilabel": "avssl.evaluators.linear_probe",
    "multilabel_metrics": "avssl.evaluators.multilabel",
    "recall_at_k": "avssl.evaluators.retrieval",
    "cross_modal": "avssl.evaluators.retrieval",
    "extract_features": "avssl.evaluators.features",
    "load_protocol": "avssl.evaluators.protocols",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'avssl.evaluators' has no attribute {name!r}")
