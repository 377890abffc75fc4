"""AVC (audio-visual correspondence) and CrissCross (SimSiam, sync/async) on random batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avssl.objectives.avc import AVC
from avssl.objectives.base import param_groups
from avssl.objectives.crisscross import CrissCross, simsiam_loss
from tests.objectives.batches import make_batch, train_steps

TINY = dict(size="tiny", depth=1)


def _two_clips(B: int = 4):
    b = make_batch(B=B)
    b.audio = torch.stack([b.audio, b.audio.flip(2)], dim=1)  # [B, K=2, 1, Ta, F]
    b.video = torch.stack([b.video, b.video.flip(3)], dim=1)  # [B, K=2, C, T, H, W]
    return b


# ---------------------------------------------------------------- AVC
@torch.no_grad()
def test_avc_targets_follow_the_loader_flags(batch):
    torch.manual_seed(0)
    model = AVC(**TINY)
    batch.audio_mismatched = torch.tensor([False, True, False, True])
    out = model.compute_losses(batch)
    logits = model.correspondence_logits(
        model.audio_encoder(batch.audio), model.video_encoder(batch.video)
    )
    want = F.cross_entropy(logits, torch.tensor([1, 0, 1, 0]))
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["positive_fraction"]) == pytest.approx(0.5)
    batch.audio_mismatched = None
    with pytest.raises(ValueError, match="audio_mode: mismatched"):
        model.compute_losses(batch)


@torch.no_grad()
def test_avc_batch_negatives_pair_each_video_with_the_next_audio(batch):
    torch.manual_seed(0)
    model = AVC(**TINY, negatives="batch")
    out = model.compute_losses(batch)
    fa, fv = model.audio_encoder(batch.audio), model.video_encoder(batch.video)
    pos = model.correspondence_logits(fa, fv)
    neg = model.correspondence_logits(fa[[3, 0, 1, 2]], fv)  # audio of the previous sample
    target = torch.tensor([1] * 4 + [0] * 4)
    want = F.cross_entropy(torch.cat([pos, neg]), target)
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["positive_fraction"]) == pytest.approx(0.5)


@torch.no_grad()
def test_avc_batch_negatives_from_the_same_video_are_left_out(batch):
    """A key drawn twice (or a batch of 1) would pair a video with its own audio as a
    'negative'; such pairs are not scored."""
    torch.manual_seed(0)
    model = AVC(**TINY, negatives="batch")
    batch.key = ["v/a", "v/a", "v/b", "v/c"]  # sample 1's negative would come from sample 0
    out = model.compute_losses(batch)
    fa, fv = model.audio_encoder(batch.audio), model.video_encoder(batch.video)
    pos = model.correspondence_logits(fa, fv)
    neg = model.correspondence_logits(fa[[3, 1, 2]], fv[[0, 2, 3]])  # not sample 1
    want = F.cross_entropy(torch.cat([pos, neg]), torch.tensor([1] * 4 + [0] * 3))
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["positive_fraction"]) == pytest.approx(4 / 7)
    one = make_batch(B=1)
    assert float(model.compute_losses(one)["positive_fraction"]) == 1.0  # no negative at all


def test_avc_hand_value_and_learning(batch):
    torch.manual_seed(0)
    model = AVC(**TINY, negatives="batch")
    for p in model.fusion[-1].parameters():
        torch.nn.init.zeros_(p)  # uniform prediction: CE = ln 2 for every pair
    with torch.no_grad():
        assert float(model.compute_losses(batch)["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    hist = train_steps(model, batch, param_groups(model, 0.0))
    assert hist[-1] < 0.9 * hist[0], hist


# ---------------------------------------------------------------- CrissCross
def test_simsiam_loss_hand_value_and_stop_gradient():
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 1.0]], requires_grad=True)  # orthogonal: D = 0
    p2 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    z1 = torch.tensor([[2.0, 2.0]], requires_grad=True)  # parallel: D = -1
    loss = simsiam_loss(p1, z1, p2, z2, torch.ones(1))
    assert float(loss) == pytest.approx(-0.5, abs=1e-6)
    loss.backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None
    # invalid rows are skipped
    two = simsiam_loss(torch.cat([p1, p1]), torch.cat([z1, z1]), torch.cat([p2, p2]),
                       torch.cat([z2, -z2]), torch.tensor([1.0, 0.0]))  # fmt: skip
    assert float(two) == pytest.approx(-0.5, abs=1e-6)


def test_crisscross_terms_and_pairs():
    torch.manual_seed(0)
    weights = dict(intra_weight=1.0, sync_weight=2.0, async_weight=0.5)
    model = CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8, **weights)
    b = _two_clips()
    out = model.compute_losses(b)
    with torch.no_grad():  # every term by hand from each clip index through the heads
        z, p = {}, {}
        for m, enc in (("audio", model.audio_encoder), ("video", model.video_encoder)):
            x = getattr(b, m)  # [B, K, ...]: each clip index through the heads on its own
            zs = [model.projector[m](enc(x[:, c])) for c in range(2)]  # K x [B, E]
            z[m] = torch.stack(zs, dim=1)  # [B, K, E]
            p[m] = torch.stack([model.predictor[m](zc) for zc in zs], dim=1)

        def term(m1: str, c1: int, m2: str, c2: int) -> float:
            args = (p[m1][:, c1], z[m1][:, c1], p[m2][:, c2], z[m2][:, c2], torch.ones(4))
            return float(simsiam_loss(*args))

        want = {  # intra: clip 1 vs clip 2 of a modality; sync: video k with audio k;
            # async: video 1 with audio 2 and video 2 with audio 1
            "intra": 0.5 * (term("video", 0, "video", 1) + term("audio", 0, "audio", 1)),
            "sync": 0.5 * (term("video", 0, "audio", 0) + term("video", 1, "audio", 1)),
            "async": 0.5 * (term("video", 0, "audio", 1) + term("video", 1, "audio", 0)),
        }
    for name, value in want.items():
        assert float(out[name]) == pytest.approx(value, rel=1e-4), name
    assert want["sync"] != pytest.approx(want["async"], rel=1e-3)  # the pairings differ here
    total = (want["intra"] + 2.0 * want["sync"] + 0.5 * want["async"]) / 3  # 3 terms on
    assert float(out["loss"]) == pytest.approx(total, rel=1e-4)
    torch.manual_seed(0)  # a term with weight 0 leaves the divisor: the mean of the other two
    two = CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8, async_weight=0)
    assert float(two.compute_losses(b)["loss"]) == pytest.approx(
        (want["intra"] + want["sync"]) / 2, rel=1e-4
    )
    for bad in (dict(intra_weight=-1.0), dict(intra_weight=0, sync_weight=0, async_weight=0)):
        with pytest.raises(ValueError, match="term weights"):
            CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8, **bad)
    with pytest.raises(ValueError, match="clips_per_video: 2"):
        model.compute_losses(make_batch())
    assert two.export_heads() is not None  # the sync term still aligns the modalities
    intra = dict(intra_weight=1.0, sync_weight=0, async_weight=0)
    alone = CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8, **intra)
    assert alone.export_heads() is None  # within-modal terms only: no audio-video space


def test_crisscross_heads_are_simsiams_with_per_view_batch_norm():
    torch.manual_seed(0)
    model = CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8)
    proj, pred = model.projector["video"], model.predictor["video"]
    norms = [m for m in proj if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 3 and norms[-1].affine is False and norms[0].affine is True
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in pred) == 1
    assert isinstance(pred[-1], torch.nn.Linear) and pred[-1].out_features == 32
    # training-mode batch statistics are per clip index: compute_losses sends each clip index
    # through the projector on its own, so changing clip 2 of every sample leaves clip 1's
    # projections as they were (one batch norm over both clips would move them)
    seen: list[torch.Tensor] = []
    proj.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    b = _two_clips()
    losses = model.compute_losses(b)
    b.video[:, 1] = torch.randn_like(b.video[:, 1]) * 3 + 1
    losses2 = model.compute_losses(b)
    assert [tuple(z.shape) for z in seen] == [(4, 32)] * 4  # 2 calls x 2 clip indices
    assert torch.allclose(seen[0], seen[2], atol=1e-5) and not torch.allclose(seen[1], seen[3])
    assert not torch.allclose(losses["intra"], losses2["intra"])
    with torch.no_grad():  # the same rows normalised together with clip 2's do differ
        feats = model.video_encoder(b.video.flatten(0, 1)).reshape(4, 2, -1)
        mixed = proj(feats.flatten(0, 1)).reshape(4, 2, -1)[:, 0]
    assert not torch.allclose(mixed, seen[0], atol=1e-3)
    plain = CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert torch.isfinite(plain.compute_losses(b)["loss"])
    with pytest.raises(ValueError, match="at least 2 samples"):  # BN cannot train on one row
        model.compute_losses(_two_clips(B=1))
    assert torch.isfinite(plain.compute_losses(_two_clips(B=1))["loss"])


def test_crisscross_predictors_learn_fixed_targets():
    # SimSiam's targets move while the encoders train, so the loss need not fall on a fixed
    # batch; with encoders and projectors frozen the targets are fixed and it must.
    torch.manual_seed(0)
    model = CrissCross(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8)
    model.requires_grad_(False).predictor.requires_grad_(True)
    hist = train_steps(model, _two_clips(), param_groups(model, 0.0), lr=1e-2, steps=8)
    assert hist[-1] < hist[0] - 0.2, hist


def test_crisscross_predictors_keep_a_fixed_learning_rate():
    """predictor_lr_scale: the predictors (and only they) train at scale x the peak rate with
    no warm-up and no decay (SimSiam's fixed predictor rate; CrissCross: 10x, constant); the
    rest follows the warm-up + cosine schedule; every parameter is in exactly one group."""
    kw = dict(**TINY, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8, warmup_steps=2)
    model = CrissCross(predictor_lr_scale=10.0, **kw)
    opt, sched = model.build_optimizer(1e-3, total_steps=10)
    pred = {id(p) for p in model.predictor.parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    fixed = [g for g in opt.param_groups if g.get("constant_lr")]
    assert {id(p) for g in fixed for p in g["params"]} == pred
    assert all(id(p) not in pred for g in opt.param_groups if g not in fixed for p in g["params"])
    history = []
    for _ in range(10):
        history.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for lrs in history:
        for g, lr in zip(opt.param_groups, lrs):
            if g.get("constant_lr"):
                assert lr == pytest.approx(1e-2)
    rest = [lrs[0] for lrs in history]  # a scheduled group: warm-up, then cosine to 0
    assert rest[0] == pytest.approx(5e-4) and rest[1] == pytest.approx(1e-3)
    assert rest[-1] < 1e-4
    plain = CrissCross(**kw)  # default: one schedule for all
    opt, _ = plain.build_optimizer(1e-3, total_steps=10)
    assert len(opt.param_groups) == 2 and not any(g.get("constant_lr") for g in opt.param_groups)
    with pytest.raises(ValueError, match="predictor_lr_scale"):
        CrissCross(predictor_lr_scale=0.0, **kw)
