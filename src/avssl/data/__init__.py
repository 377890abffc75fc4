"""Shard reading, decoding, clip sampling, transforms, the DataModule and the synthetic data."""

from avssl.data.batch import AVBatch

__all__ = ["AVBatch"]
