"""Validation (``data.init_args.val_split``): every recipe's objective gives its losses on a
validation batch as ``val/<term>``, from a fixed seed, without touching the training stream
of random numbers or any state; objectives whose loss needs per-sample training state refuse
a ``val_split`` in one line; losses gather nothing across ranks inside ``rank_local``."""

from __future__ import annotations

import pytest
import torch
import yaml

from avssl.losses import contrastive
from tests.export.test_all_objectives import NAMES, RECIPES, build_objective
from tests.objectives.batches import make_batch

pytestmark = pytest.mark.slow
NO_VALIDATION = {"avid", "avid_cma"}  # memory rows of training clips


def _logged(model, batch, batch_idx: int) -> dict[str, float]:
    got: dict[str, float] = {}
    model.log_dict = lambda logs, **kw: got.update({k: float(v) for k, v in logs.items()})
    model.validation_step(batch, batch_idx)
    return got


@pytest.mark.parametrize("recipe", NAMES)
def test_every_recipe_validates_or_says_why_not(recipe, tmp_path):
    model = build_objective(recipe, tmp_path)
    if recipe in NO_VALIDATION:
        assert "training clips" in model.no_validation_reason()
        return
    assert model.no_validation_reason() is None
    model.eval()
    batch = make_batch(B=4, frames=4, px=64, audio_frames=128, mel=128)
    data = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text()).get("data") or {}
    k = (data.get("init_args") or {}).get("clips_per_video", 1)  # validation's K (val_clips)
    if k > 1:  # K clips per sample: [B, K, ...] (CrissCross's two views)
        batch.video = torch.stack([batch.video.roll(i, dims=2) for i in range(k)], dim=1)
        batch.audio = torch.stack([batch.audio.roll(i, dims=2) for i in range(k)], dim=1)
    batch.audio_mismatched = torch.tensor([False, True, False, True])  # AVC's loader flags
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        first, again = _logged(model, batch, 3), _logged(model, batch, 3)
    assert torch.equal(torch.get_rng_state(), rng)  # the training stream is untouched
    assert first == again and "val/loss" in first  # the same draws for the same batch
    assert all(k.startswith("val/") for k in first)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items())  # no state changed


def test_rank_local_gathers_nothing(monkeypatch):
    monkeypatch.setattr(contrastive.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(contrastive.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(contrastive.dist, "get_world_size", lambda: 2)
    assert contrastive.rank_and_world() == (1, 2)
    x = torch.randn(3, 4)
    with contrastive.rank_local():
        assert contrastive.rank_and_world() == (0, 1)
        assert contrastive.gather_with_grad(x) is x and contrastive.gather_plain(x) is x
    assert contrastive.rank_and_world() == (1, 2)  # restored on leaving


def test_xdc_validation_targets_are_the_nearest_centroids(tmp_path):
    model = build_objective("xdc", tmp_path).eval()
    batch = make_batch(B=6, frames=4, px=64, audio_frames=128, mel=128)
    with torch.no_grad():
        assert (model.nearest_clusters(torch.randn(3, 192), "audio") == -1).all()  # unclustered
        emb = model.embed_batches([batch])
        model.set_cluster_state(model.cluster(emb), epoch=0)
        feats = emb["feats"]["video"]
        ids = model.nearest_clusters(feats, "video")
        # the clustered clips themselves: nearest-centroid ids are their k-means assignments
        assert torch.equal(ids, model.assignments["video"])
        batch.key = [f"held-out/{i}" for i in range(6)]  # keys the clustering never saw
        keyed = model.compute_losses(batch)
        held = model.validation_losses(batch)
    assert float(keyed["known_video_targets"]) == 0.0 and float(keyed["loss"]) == 0.0
    assert float(held["known_video_targets"]) == 1.0 and float(held["loss"]) > 0.0
