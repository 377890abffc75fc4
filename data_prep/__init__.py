"""data_prep: turn video collections into avssl shard format v1 (see data_prep/README.md).

``python -m data_prep --dataset D --root R --splits S --out O`` (or ``make prep``), or from
Python ``data_prep.prepare_dataset(dataset, root=..., splits=..., out=...)``.
"""

from data_prep.build import DATASETS, prepare_dataset

__all__ = ["DATASETS", "prepare_dataset"]
