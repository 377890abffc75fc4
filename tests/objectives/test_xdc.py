"""XDC: labels from k-means by key, cross-modal targets, re-clustering, checkpoint resume."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from avssl.losses.clustering import cluster_cross_entropy
from avssl.models.kmeans import assign, kmeans
from avssl.objectives.xdc import XDC
from tests.objectives.batches import make_batch

TINY = dict(size="tiny", depth=1, num_clusters=3, kmeans_backend="torch")


def _model(**kw) -> XDC:
    torch.manual_seed(0)
    return XDC(**{**TINY, **kw})


def _batches(n: int = 3, B: int = 4) -> list:
    out = []
    for i in range(n):
        b = make_batch(B=B, seed=i)
        b.key = [f"s/{i}_{j}" for j in range(B)]
        out.append(b)
    return out


def test_clustering_pass_marks_each_batch_as_a_graph_step(monkeypatch):
    """compile="graphs": the encoders run outside the training steps while clustering, so each
    batch of that pass is marked as a new CUDA-graph step; without graphs nothing is marked."""
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    _model(compile="graphs").embed_batches(_batches(n=3))
    assert len(marks) == 3
    marks.clear()
    _model().embed_batches(_batches(n=3))
    assert marks == []


@torch.no_grad()
def test_labels_agree_with_kmeans_of_the_features():
    model = _model()
    batches = _batches()
    model.recluster(batches, epoch=0)
    keys = [k for b in batches for k in b.key]
    assert model.cluster_keys == keys
    model.eval()
    for m, enc in (("audio", model.audio_encoder), ("video", model.video_encoder)):
        x = torch.cat([enc(getattr(b, m)) for b in batches])
        x = F.normalize(x, dim=-1)
        ref = kmeans(x, 3, num_iters=20, seed=0, backend="torch")
        assert model.targets(keys, m).tolist() == ref.assignments.tolist()
        # and each label is the nearest of the stored centroids
        assert model.targets(keys, m).tolist() == assign(x, model.centroids[m]).tolist()
        assert torch.bincount(model.targets(keys, m), minlength=3).min() > 0  # no empty cluster
    assert model.targets(["unknown/key"], "audio").tolist() == [-1]


def test_subset_limit_duplicates_and_missing_modality():
    model = _model(cluster_samples=6)
    batches = _batches()
    batches[0].audio_mask = torch.tensor([True, False, True, True])
    model.recluster(batches + batches, epoch=0)  # repeated keys are embedded once
    assert len(model.cluster_keys) == 6
    assert model.targets(["s/0_1"], "audio").tolist() == [-1]  # no audio
    assert model.targets(["s/0_1"], "video").item() >= 0
    assert model.targets(["s/2_0"], "video").tolist() == [-1]  # beyond the subset


@torch.no_grad()
def test_each_head_predicts_the_other_modalitys_clusters():
    model = _model().train()
    batches = _batches()
    model.recluster(batches, epoch=0)
    b = batches[1]
    out = model.compute_losses(b)
    v_logits = model.heads["video"](model.video_encoder(b.video))
    a_logits = model.heads["audio"](model.audio_encoder(b.audio))
    want_v = cluster_cross_entropy(v_logits, model.targets(b.key, "audio"))
    want_a = cluster_cross_entropy(a_logits, model.targets(b.key, "video"))
    assert float(out["video_predicts_audio"]) == pytest.approx(float(want_v), rel=1e-5)
    assert float(out["audio_predicts_video"]) == pytest.approx(float(want_a), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(want_v + want_a) / 2, rel=1e-5)
    # unknown keys: zero loss, no NaN
    b.key = ["x/1", "x/2", "x/3", "x/4"]
    assert float(model.compute_losses(b)["loss"]) == 0.0


@torch.no_grad()
def test_mdc_heads_also_predict_their_own_modalitys_clusters():
    """``within_weight`` (XDC's multi-head variant MDC at 1): a second head per encoder predicts
    that encoder's own clusters; the loss is half the sum of the cross terms and the weighted
    own terms. Without it there are no such heads (XDC)."""
    assert set(_model().heads) == {"audio", "video"}
    model = _model(within_weight=0.5).train()
    assert set(model.heads) == {"audio", "video", "audio_self", "video_self"}
    batches = _batches()
    model.recluster(batches, epoch=0)
    b = batches[2]
    out = model.compute_losses(b)
    fa, fv = model.audio_encoder(b.audio), model.video_encoder(b.video)
    want = {}
    for name, head, f, target in (
        ("audio_predicts_video", "audio", fa, "video"),
        ("video_predicts_audio", "video", fv, "audio"),
        ("audio_predicts_audio", "audio_self", fa, "audio"),
        ("video_predicts_video", "video_self", fv, "video"),
    ):
        logits = model.heads[head](f)
        want[name] = float(cluster_cross_entropy(logits, model.targets(b.key, target)))
        assert float(out[name]) == pytest.approx(want[name], rel=1e-5)
    cross = want["audio_predicts_video"] + want["video_predicts_audio"]
    own = want["audio_predicts_audio"] + want["video_predicts_video"]
    assert float(out["loss"]) == pytest.approx(0.5 * (cross + 0.5 * own), rel=1e-5)
    w = model.heads["video_self"].weight.clone()
    model.recluster(batches, epoch=1)  # the own-cluster heads are re-initialised too
    assert not torch.equal(w, model.heads["video_self"].weight)
    with pytest.raises(ValueError, match="within_weight must be >= 0"):
        _model(within_weight=-1.0)


def test_reclustering_drops_the_heads_optimizer_moments():
    """As DeepCluster's new top-layer optimiser: the fresh heads start without the AdamW
    moments of the last clustering's ids; the encoders keep theirs."""
    from types import SimpleNamespace

    from avssl.objectives.base import param_groups

    model = _model()
    batches = _batches()
    model.recluster(batches, epoch=0)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-3)
    model.compute_losses(batches[0])["loss"].backward()
    opt.step()
    heads = list(model.heads.parameters())
    encoder = next(model.audio_encoder.parameters())
    assert all(p in opt.state for p in heads) and encoder in opt.state
    model._trainer = SimpleNamespace(optimizers=[opt])
    model.recluster(batches, epoch=1)
    assert not any(p in opt.state for p in heads) and encoder in opt.state
    opt.zero_grad()
    model.compute_losses(batches[0])["loss"].backward()
    opt.step()  # the heads start again from step 1
    assert all(int(opt.state[p]["step"]) == 1 for p in heads)
    assert int(opt.state[encoder]["step"]) == 2


def test_heads_are_reinitialised_and_too_many_clusters_are_capped():
    model = _model()
    batches = _batches()
    model.recluster(batches, epoch=0)
    w = model.heads["audio"].weight.detach().clone()
    model.recluster(batches, epoch=1)
    assert not torch.equal(w, model.heads["audio"].weight) and model.cluster_epoch == 1
    capped = _model(num_clusters=20)
    with pytest.warns(UserWarning, match="num_clusters=20"):
        capped.recluster(batches, epoch=0)
    assert sorted(set(capped.assignments["audio"].tolist())) == list(range(12))  # 12 samples
    with pytest.raises(ValueError, match="k-means needs >= 2"):
        _model().recluster(_batches(n=1, B=1), epoch=0)


class _Data(pl.LightningDataModule):
    """Two fixed training batches; ``eval_loader`` as AVDataModule's (records its calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 4
        self.save_hyperparameters({"train_split": "train1"})
        self.batches = _batches(n=2)
        self.eval_calls: list[str] = []

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)

    def eval_loader(self, split: str, num_clips: int = 1, batch_size: int | None = None):
        self.eval_calls.append(split)
        return list(self.batches)


def _trainer(tmp_path, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_epochs=epochs,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip


@pytest.mark.slow
def test_cluster_state_resumes_from_a_checkpoint(tmp_path):
    model, data = _model(recluster_every=2), _Data()
    trainer = _trainer(tmp_path, 1)
    trainer.fit(model, datamodule=data)
    assert data.eval_calls == ["train1"] and model.cluster_epoch == 0
    ckpt = tmp_path / "xdc.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["xdc"]
    fresh, data2 = _model(recluster_every=2), _Data()
    _trainer(tmp_path, 2).fit(fresh, datamodule=data2, ckpt_path=str(ckpt))  # epoch 1
    assert data2.eval_calls == []  # interval of 2 epochs not reached: no re-clustering
    assert fresh.cluster_keys == saved["keys"] == model.cluster_keys
    assert fresh.cluster_epoch == 0
    for m in ("audio", "video"):
        assert torch.equal(fresh.assignments[m], model.assignments[m])
        assert torch.equal(fresh.centroids[m], model.centroids[m])
    _trainer(tmp_path, 3).fit(fresh, datamodule=data2)  # epoch 2 re-clusters
    assert data2.eval_calls == ["train1"] and fresh.cluster_epoch == 2


def _ddp_worker(rank: int, port: int, out: dict) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    import avssl.objectives.xdc as xdc

    received: list = []
    gather = xdc._gather_embeddings
    xdc._gather_embeddings = lambda emb: received.append(gather(emb)) or received[-1]
    model = _model()
    model.recluster(_batches()[rank::2], epoch=0)  # rank 0: batches 0, 2; rank 1: batch 1
    out[rank] = {
        "received": None if received[0] is None else len(received[0]["keys"]),
        "keys": model.cluster_keys,
        "audio": model.assignments["audio"].tolist(),
        "head": model.heads["video"].weight.detach().clone(),
    }
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_share_one_clustering_of_all_their_samples():
    import torch.multiprocessing as mp

    from tests.ranks import free_port, run_ranks

    out = mp.Manager().dict()
    run_ranks(_ddp_worker, (free_port(), out))
    single = _model()
    batches = _batches()
    single.recluster([batches[0], batches[2], batches[1]], epoch=0)  # rank order
    assert out[0]["keys"] == out[1]["keys"] == single.cluster_keys
    # only rank 0 clusters, so only it receives every rank's features
    assert out[0]["received"] == len(single.cluster_keys) and out[1]["received"] is None
    assert out[0]["audio"] == out[1]["audio"] == single.assignments["audio"].tolist()
    assert torch.equal(out[0]["head"], out[1]["head"])  # heads re-initialised identically


@torch.no_grad()
def test_validation_gives_no_target_from_a_missing_modality():
    """Validation clips take the nearest centroid of the *other* modality's current features
    as target; a clip without audio has no audio features, so its video head gets no target
    (the clustering leaves such samples out too), whatever the placeholder fbank looks like."""
    model = _model().eval()
    batches = _batches()
    model.recluster(batches, epoch=0)
    b = batches[1]
    b.key = [f"held-out/{i}" for i in range(4)]
    b.audio_mask = torch.tensor([True, False, True, True])
    out = model.validation_losses(b)
    fa, fv = model.audio_encoder(b.audio), model.video_encoder(b.video)
    want = model.nearest_clusters(fa, "audio")
    want[1] = -1  # no audio: no audio cluster
    v_logits = model.heads["video"](fv)
    assert float(out["video_predicts_audio"]) == pytest.approx(
        float(cluster_cross_entropy(v_logits, want)), rel=1e-5
    )
    assert float(out["known_audio_targets"]) == pytest.approx(0.75)
