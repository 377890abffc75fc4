"""FeatureSet semantics (clip means, joint features, masks) and the cache files."""

from __future__ import annotations

import json

import torch

from avssl.evaluators import cache
from avssl.evaluators.features import FeatureSet


def _fs() -> FeatureSet:
    audio = torch.tensor([[[3.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # [N=2, K=2, D=2]
    video = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 4.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    masks = {"audio": torch.tensor([True, False]), "video": torch.tensor([True, True])}
    return FeatureSet(["a", "b"], torch.tensor([0, 1]), {"audio": audio, "video": video}, masks)


def test_clip_mean_and_joint_features():
    fs = _fs()
    assert fs.get("audio").tolist() == [[2.0, 0.0], [0.0, 0.0]]
    assert fs.get("video", per_clip=True).shape == (2, 2, 3)
    r = 1 / 3**0.5
    joint = fs.get("joint")  # [L2(audio mean), L2(video mean)]; a missing modality -> zeros
    torch.testing.assert_close(joint, torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, r, r, r]]))
    assert fs.get("joint", per_clip=True).shape == (2, 2, 5)
    assert fs.mask("audio").tolist() == [True, False]


def test_joint_mask_is_the_samples_that_have_both():
    """JOINT_DOC: joint features are evaluated on the samples that have both modalities; the
    joint mask was audio OR video (a sample without audio counted, its audio half zeros)."""
    fs = _fs()
    assert fs.mask("joint").tolist() == [True, False]
    fs.masks["video"] = torch.tensor([False, True])
    assert fs.mask("joint").tolist() == [False, False]
    fs.masks = {"audio": torch.tensor([True, True]), "video": torch.tensor([True, True])}
    assert fs.mask("joint").tolist() == [True, True]


def test_select_keeps_order_and_reports_skipped():
    fs = _fs()
    fs.skipped = {"c": "could not be decoded"}
    sub = fs.select(["b", "c", "a"])
    assert sub.keys == ["b", "a"] and sub.labels.tolist() == [1, 0]
    assert sub.skipped == {"c": "could not be decoded"}
    assert sub.masks["audio"].tolist() == [False, True]


def test_cache_round_trip_and_corrupt_files(tmp_path):
    feats = cache.CachedFeatures(
        ["x", "y"],
        torch.randn(2, 3, 4),
        torch.tensor([True, False]),
        torch.tensor([4, 2]),
        {"z": "could not be decoded"},
    )
    key = cache.cache_key({"encoder_sha256": "abc", "num_clips": 3})
    assert key != cache.cache_key({"encoder_sha256": "abd", "num_clips": 3})
    cache.save(tmp_path, key, feats, {"num_clips": 3})
    back = cache.load(tmp_path, key)
    assert back.keys == ["x", "y"] and back.failed == feats.failed
    assert torch.equal(back.features, feats.features) and torch.equal(back.mask, feats.mask)
    assert json.loads((tmp_path / f"{key}.json").read_text())["settings"] == {"num_clips": 3}
    more = cache.CachedFeatures(
        ["y", "w"], torch.ones(2, 3, 4), torch.tensor([True, True]), torch.tensor([2, 0])
    )
    merged = back.merge(more)
    assert merged.keys == ["x", "y", "w"] and torch.equal(merged.features[2], torch.ones(3, 4))
    (tmp_path / f"{key}.safetensors").write_bytes(b"not a safetensors file")
    assert cache.load(tmp_path, key) is None  # unreadable -> extracted again, never trusted


def test_hash_module_follows_the_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert cache.hash_module(a) == cache.hash_module(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert cache.hash_module(a) != cache.hash_module(b)
