"""AVContrastive (VATT batch NCE / AVID memory bank) on random batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avssl.losses.contrastive import info_nce, mil_nce
from avssl.objectives._memory_bank import bank_negative_rows
from avssl.objectives._memory_bank import memory_nce as _memory_nce
from avssl.objectives.base import param_groups
from avssl.objectives.contrastive import AVContrastive
from tests.objectives.batches import make_batch, train_steps

TINY = dict(size="tiny", depth=1, proj_dim=16, proj_hidden_dim=32)


def _model(**kw) -> AVContrastive:
    torch.manual_seed(0)
    return AVContrastive(**{**TINY, **kw})


def ref_memory_nce(z, bank, rows, neg, t) -> float:
    """Loop reference: -log softmax of the positive among [positive, negatives]."""
    total = 0.0
    for i in range(len(z)):
        zi = z[i] / np.linalg.norm(z[i])
        logits = [float(zi @ bank[rows[i]]) / t] + [float(zi @ bank[j]) / t for j in neg[i]]
        m = max(logits)
        total += -(logits[0] - m - math.log(sum(math.exp(v - m) for v in logits)))
    return total / len(z)


@torch.no_grad()
def test_batch_loss_is_info_nce_of_the_projections(batch):
    model = _model().eval()
    out = model.compute_losses(batch)
    za, zv = model.embed(batch.audio, batch.video)
    want = info_nce(za, zv, temperature=0.07, symmetric=True)
    assert float(out["nce_av"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["temperature"]) == pytest.approx(0.07)


@torch.no_grad()
def test_missing_audio_rows_are_left_out(batch):
    model = _model().eval()
    batch.audio_mask = torch.tensor([True, False, True, True])
    out = model.compute_losses(batch)
    za, zv = model.embed(batch.audio, batch.video)
    keep = batch.audio_mask
    want = info_nce(za[keep], zv[keep], temperature=0.07)
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_steps_lower_the_loss(batch):
    for kw in (dict(), dict(memory_bank=True, bank_negatives=8)):
        model = _model(**kw).train()
        hist = train_steps(model, batch, param_groups(model, 0.0), 2e-3, 6)
        assert hist[-1] < 0.7 * hist[0], (kw, hist)


def test_learnable_temperature_gets_a_gradient(batch):
    fixed = _model()
    assert "log_inv_temp" not in dict(fixed.named_parameters())
    model = _model(learnable_temperature=True, temperature=0.1)
    assert float(model.temperature()) == pytest.approx(0.1)
    model.compute_losses(batch)["loss"].backward()
    assert model.log_inv_temp.grad is not None and model.log_inv_temp.grad.abs() > 0


def test_drop_token_feeds_a_subset_in_training_only(batch):
    model = _model(drop_token=0.5)
    seen = []
    hook = model.video_encoder.blocks[0].register_forward_hook(
        lambda m, i, o: seen.append(i[0].shape[1])
    )
    n = model.video_encoder.num_tokens(batch.video.shape)  # 2 x 2 x 2 = 8 tokens
    model.train().compute_losses(batch)
    model.eval().compute_losses(batch)
    hook.remove()
    assert seen == [n // 2, n]


def test_intra_terms_need_two_clips(batch):
    model = _model(intra_weight=1.0)
    with pytest.raises(ValueError, match="clips_per_video"):
        model.compute_losses(batch)
    b = make_batch()
    b.audio = torch.stack([b.audio, b.audio.flip(0)], dim=1)  # [B, K=2, 1, Ta, F]
    b.video = torch.stack([b.video, b.video.flip(0)], dim=1)  # [B, K=2, C, T, H, W]
    out = model.eval().compute_losses(b)
    total = out["nce_av"] + out["nce_aa"] + out["nce_vv"]
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)


@torch.no_grad()
def test_mil_clip_positives_pair_every_clip_of_a_sample():
    """clip_positives: mil: each audio clip against the bag of its sample's video clips (and
    the reverse), by mil_nce; differs from the per-slot NCE; equal to it with one clip; rows
    without audio left out; refused with the memory bank or an unknown value."""
    b = make_batch()
    b.audio = torch.stack([b.audio, b.audio.flip(0)], dim=1)  # [B, K=2, 1, Ta, F]
    b.video = torch.stack([b.video, b.video.roll(1, 0)], dim=1)  # [B, K=2, C, T, H, W]
    b.audio_mask = torch.tensor([True, False, True, True])
    model = _model(clip_positives="mil").eval()
    out = model.compute_losses(b)
    za, zv = model.embed(b.audio.flatten(0, 1), b.video.flatten(0, 1))
    za, zv = za.reshape(4, 2, -1), zv.reshape(4, 2, -1)
    keep = b.audio_mask
    terms = [mil_nce(zv[keep], za[keep][:, i], 0.07, symmetric=False) for i in range(2)]
    terms += [mil_nce(za[keep], zv[keep][:, i], 0.07, symmetric=False) for i in range(2)]
    assert float(out["nce_av"]) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    slot = _model().eval().compute_losses(b)
    assert float(slot["nce_av"]) != pytest.approx(float(out["nce_av"]), rel=1e-3)
    one = make_batch()
    assert float(model.compute_losses(one)["loss"]) == pytest.approx(
        float(_model().eval().compute_losses(one)["loss"]), rel=1e-5
    )
    with pytest.raises(ValueError, match="batch-mode option"):
        _model(clip_positives="mil", memory_bank=True)
    with pytest.raises(ValueError, match="clip_positives must be"):
        _model(clip_positives="all")


@torch.no_grad()
def test_sum_of_directions_is_vatts_symmetric_nce():
    """directions: sum (VATT's SymmetricNCE) adds the audio->video and video->audio NCEs, each
    averaged over its anchors, for the per-slot, MIL and intra-modal terms; refused with the
    memory bank or an unknown value."""
    b = make_batch()
    b.audio = torch.stack([b.audio, b.audio.flip(0)], dim=1)  # [B, K=2, 1, Ta, F]
    b.video = torch.stack([b.video, b.video.roll(1, 0)], dim=1)  # [B, K=2, C, T, H, W]
    model = _model(directions="sum", intra_weight=0.5).eval()
    out = model.compute_losses(b)
    za, zv = model.embed(b.audio.flatten(0, 1), b.video.flatten(0, 1))
    za, zv = za.reshape(4, 2, -1), zv.reshape(4, 2, -1)

    def both(x, y):  # the two directions, added
        return info_nce(x, y, 0.07, symmetric=False) + info_nce(y, x, 0.07, symmetric=False)

    want_av = (both(za[:, 0], zv[:, 0]) + both(za[:, 1], zv[:, 1])) / 2  # mean over clip slots
    want_aa, want_vv = both(za[:, 0], za[:, 1]), both(zv[:, 0], zv[:, 1])
    assert float(out["nce_av"]) == pytest.approx(float(want_av), rel=1e-5)
    assert float(out["nce_aa"]) == pytest.approx(float(want_aa), rel=1e-5)
    assert float(out["nce_vv"]) == pytest.approx(float(want_vv), rel=1e-5)
    total = want_av + 0.5 * (want_aa + want_vv)
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)
    mean = _model(intra_weight=0.5).eval().compute_losses(b)
    assert float(out["loss"]) == pytest.approx(2 * float(mean["loss"]), rel=1e-5)
    mil = _model(directions="sum", clip_positives="mil").eval().compute_losses(b)
    mil_mean = _model(clip_positives="mil").eval().compute_losses(b)
    assert float(mil["nce_av"]) == pytest.approx(2 * float(mil_mean["nce_av"]), rel=1e-5)
    with pytest.raises(ValueError, match="batch-mode option"):
        _model(directions="sum", memory_bank=True)
    with pytest.raises(ValueError, match="directions must be"):
        _model(directions="max")


# ---------------------------------------------------------------- AVID memory bank
def test_memory_nce_hand_value_and_loop_reference():
    z = torch.tensor([[2.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = _memory_nce(
        z, bank, torch.tensor([0]), torch.tensor([[1]]), torch.tensor(1.0), torch.ones(1)
    )
    assert float(got) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # logits [1, 0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, generator=g)
    bank = torch.nn.functional.normalize(torch.randn(9, 4, generator=g), dim=-1)
    rows = torch.tensor([0, 3, 5, 8, 2])
    neg = torch.randint(9, (5, 6), generator=g)
    got = _memory_nce(z, bank, rows, neg, torch.tensor(0.07), torch.ones(5))
    want = ref_memory_nce(z.numpy(), bank.numpy(), rows.numpy(), neg.numpy(), 0.07)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_bank_negatives_never_hold_the_anchors_own_row():
    torch.manual_seed(0)
    rows = torch.tensor([0, 4, 9, 4])
    neg = bank_negative_rows(rows, 10, 5000)
    assert neg.shape == (4, 5000) and neg.dtype == torch.long
    assert not (neg == rows[:, None]).any()  # the positive is never a negative
    for i, r in enumerate(rows.tolist()):  # every other row is drawn, about uniformly
        counts = torch.bincount(neg[i], minlength=10).float()
        assert counts[r] == 0 and counts.sum() == 5000
        others = torch.cat([counts[:r], counts[r + 1 :]])
        assert others.min() > 0.8 * 5000 / 9 and others.max() < 1.2 * 5000 / 9
    assert bank_negative_rows(torch.tensor([0]), 1, 8).shape == (1, 0)  # nothing to contrast
    model = _model(memory_bank=True, bank_negatives=16).train()  # through the objective
    b = make_batch(B=1)
    out = model.compute_losses(b)  # a one-row bank: no negatives, a zero loss, no error
    assert float(out["nce_av"]) == pytest.approx(0.0, abs=1e-6)


def test_bank_rows_grow_lazily_and_update_by_momentum():
    """A new key gets the next row, which joins the table when the batch is committed; a row's
    first memory is its feature (written before, valid after the commit), later ones move by
    momentum."""
    model = _model(memory_bank=True, bank_momentum=0.5)
    has = {"audio": torch.ones(2), "video": torch.ones(2)}
    f1 = {"audio": torch.tensor([[3.0, 0.0], [0.0, 2.0]]), "video": torch.ones(2, 2)}
    rows, new = model._bank_rows(["a", "b"])
    assert rows.tolist() == [0, 1] and new == ["a", "b"] and model.bank_index == {}
    usable = model._bank_stage(rows, 2, f1, has)
    assert torch.allclose(model.bank["audio"][:2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert usable["audio"][:2].all() and not model.bank_valid["audio"].any()  # not yet valid
    model._bank_pending = (new, rows, f1, has)
    model.commit_state()
    assert model.bank_index == {"a": 0, "b": 1} and model.bank_valid["audio"][:2].all()
    rows, new = model._bank_rows(["c", "a"])
    assert rows.tolist() == [2, 0] and new == ["c"] and len(model.bank_index) == 2
    one = {"audio": torch.ones(1), "video": torch.ones(1)}
    model._bank_update(
        torch.tensor([0]), {"audio": torch.tensor([[0.0, 5.0]]), "video": torch.ones(1, 2)}, one
    )
    s = 1 / math.sqrt(2)  # normalize(0.5 * [1, 0] + 0.5 * [0, 1])
    assert torch.allclose(model.bank["audio"][0], torch.tensor([s, s]), atol=1e-6)


def test_bank_state_round_trips_through_a_checkpoint(tmp_path, batch):
    """Keys, memories and their validity flags travel in the checkpoint; a bank saved before
    the flags existed counts its finite, non-zero rows as memories."""
    model = _model(memory_bank=True, bank_negatives=4).train()
    batch.audio_mask[1] = False  # a clip without audio: no audio memory
    model.compute_losses(batch)
    model.commit_state()
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt["avid_bank"], tmp_path / "bank.pt")
    loaded = torch.load(tmp_path / "bank.pt", weights_only=True)
    fresh = _model(memory_bank=True, bank_negatives=4)
    fresh.on_load_checkpoint({"avid_bank": loaded})
    assert fresh.bank_index == model.bank_index == {k: i for i, k in enumerate(batch.key)}
    for m in ("audio", "video"):
        assert torch.equal(fresh.bank[m], model.bank[m][: len(batch.key)])
    assert fresh.bank_valid["audio"].tolist() == [True, False, True, True]
    assert fresh.bank_valid["video"].tolist() == [True] * 4
    old = {k: v for k, v in loaded.items() if not k.endswith("_valid")}  # an older checkpoint
    old["video"] = old["video"].clone()
    old["video"][2] = float("nan")
    fresh.on_load_checkpoint({"avid_bank": old})
    assert fresh.bank_valid["audio"].tolist() == [True, False, True, True]  # an all-zero row
    assert fresh.bank_valid["video"].tolist() == [True, True, False, True]


@pytest.mark.parametrize("cross, within", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 1.0)])
def test_avid_variants_weigh_cross_and_within_modal_memory_terms(batch, cross, within):
    """Cross-AVID (1 / 0), Self-AVID (0 / 1), Joint-AVID (1 / 1): the loss is the weighted mean
    of the cross-modal terms (each modality against the other's memories) and the within-modal
    ones (against its own), weights normalised by their sum as AVID's code does."""
    model = _model(memory_bank=True, bank_negatives=6, cross_weight=cross, within_weight=within)
    model.train()
    model.compute_losses(batch)  # fills the bank: the next batch has memories to compare with
    model.commit_state()
    bank = {m: b.clone() for m, b in model.bank.items()}
    torch.manual_seed(5)  # the same negative draws below
    out = model.compute_losses(batch)
    torch.manual_seed(5)
    neg = bank_negative_rows(torch.arange(len(batch)), len(batch), 6)
    with torch.no_grad():
        za, zv = model.embed(batch.audio, batch.video)  # no DropToken: the same features
    rows, t, ok = torch.arange(len(batch)), torch.tensor(0.07), torch.ones(len(batch))
    term = {
        (q, m): float(_memory_nce(z, bank[m], rows, neg, t, ok))
        for q, z in (("audio", za), ("video", zv))
        for m in ("audio", "video")
    }
    nce_av = 0.5 * (term["video", "audio"] + term["audio", "video"])
    nce_within = 0.5 * (term["video", "video"] + term["audio", "audio"])
    assert float(out["nce_av"]) == pytest.approx(nce_av, rel=1e-4)
    assert ("nce_within" in out) == (within > 0)
    if within > 0:
        assert float(out["nce_within"]) == pytest.approx(nce_within, rel=1e-4)
    want = (cross * nce_av + within * nce_within) / (cross + within)
    assert float(out["loss"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("cross, within", [(0.0, 0.0), (-1.0, 1.0), (1.0, -0.5)])
def test_avid_weights_reject_bad_values(cross, within):
    with pytest.raises(ValueError, match="cross_weight and within_weight"):
        _model(memory_bank=True, cross_weight=cross, within_weight=within)


def test_avid_weights_need_the_memory_bank():
    with pytest.raises(ValueError, match="memory_bank: true"):
        _model(memory_bank=False, within_weight=1.0)


@pytest.mark.parametrize("heads", ["mlp", "fac"])
def test_vatt_memorises_a_fixed_batch(heads):
    """The NCE, its projections and their gradients are wired so that a fixed batch of 8
    audio-video pairs is learned (DropToken on, as VATT): the loss falls to a quarter. This
    separates a broken loss from one that does not find a correspondence across clips."""
    model = _model(drop_token=0.5, heads=heads).train()
    losses = train_steps(model, make_batch(B=8, seed=3), model.parameters(), 1e-3, 40)
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0], losses


def test_fac_heads_are_mmv_vatt_heads(batch):
    # VATT's audio-video heads (MMV's FAC): video Linear-BN-ReLU-Linear-BN, audio one Linear
    model = _model(heads="fac").train()
    assert isinstance(model.audio_proj, torch.nn.Linear) and model.audio_proj.out_features == 16
    layers = list(model.video_proj)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in layers if isinstance(m, torch.nn.Linear))
    za, zv = model.embed(batch.audio, batch.video)
    assert za.shape == zv.shape == (len(batch), 16)
    # in training the video embeddings are standardised over the batch (what keeps them apart)
    assert zv.mean(0).abs().max() < 1e-5
    assert torch.allclose(zv.std(0, unbiased=False), torch.ones(16), atol=1e-2)
    out = model.compute_losses(batch)
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="heads: fac needs at least 2 samples"):
        model.compute_losses(make_batch(B=1))
    with pytest.raises(ValueError, match="heads must be one of mlp, fac, avid"):
        _model(heads="bn")


def test_avid_heads_are_avids_mlp(batch):
    # AVID's code: Linear-ReLU-Linear-ReLU-Linear on both modalities, hidden proj_hidden_dim
    model = _model(heads="avid", memory_bank=True, bank_negatives=8)
    for head in (model.audio_proj, model.video_proj):
        layers = list(head)
        assert [type(m).__name__ for m in layers] == ["Linear", "ReLU"] * 2 + ["Linear"]
        assert [m.out_features for m in layers if isinstance(m, torch.nn.Linear)] == [32, 32, 16]
    out = model.train().compute_losses(batch)
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="heads: avid needs proj_hidden_dim > 0"):
        _model(heads="avid", proj_hidden_dim=0)


@torch.no_grad()
def test_two_entries_of_one_video_are_not_each_others_negatives(batch):
    """The contrastive terms take the batch's keys: the same inputs give another loss when two
    rows are one video, the same loss when every key differs."""
    model = _model().eval()
    before = float(model.compute_losses(batch)["nce_av"])
    batch.key = ["v/x", "v/y", "v/z", "v/w"]
    assert float(model.compute_losses(batch)["nce_av"]) == pytest.approx(before, rel=1e-6)
    batch.key = ["v/x", "v/y", "v/x", "v/w"]
    assert float(model.compute_losses(batch)["nce_av"]) != pytest.approx(before, rel=1e-4)


# ---------------------------------------------------------------- AVID: a missing modality
def test_memory_nce_leaves_out_rows_without_a_memory():
    """``usable``: a drawn negative whose row holds no memory is not in the softmax, an anchor
    whose own row holds none is not in the mean (loop reference with them removed)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, generator=g)
    bank = torch.nn.functional.normalize(torch.randn(9, 4, generator=g), dim=-1)
    rows = torch.tensor([0, 3, 5, 8, 2])
    neg = torch.randint(9, (5, 6), generator=g)
    usable = torch.tensor([True, True, True, True, False, True, False, True, True])
    usable[neg[1, 0]] = False  # at least one drawn negative is left out
    got = _memory_nce(z, bank, rows, neg, torch.tensor(0.07), torch.ones(5), usable)
    keep = [i for i in range(5) if usable[rows[i]]]
    kept_negs = [[j for j in neg[i].tolist() if usable[j]] for i in range(5)]
    zs, rs = z.numpy(), rows.numpy()
    per = [ref_memory_nce(zs[i : i + 1], bank.numpy(), rs[i : i + 1], [kept_negs[i]], 0.07)
           for i in keep]  # fmt: skip
    want = sum(per) / len(keep)
    assert float(got) == pytest.approx(want, rel=1e-5)
    all_ok = _memory_nce(z, bank, rows, neg, torch.tensor(0.07), torch.ones(5), torch.ones(9) > 0)
    plain = _memory_nce(z, bank, rows, neg, torch.tensor(0.07), torch.ones(5))
    assert torch.equal(all_ok, plain)  # nothing left out: the same loss


def test_clips_without_audio_or_video_write_no_memory_of_it(batch):
    """A clip without audio (the loader's all-zero fbank) gets no audio memory: before, its row
    held the embedding of silence, the same for every such clip, drawn as a negative and (in
    AVID-CMA) perfectly 'agreeing' with every other silent clip. Same for a missing video."""
    model = _model(memory_bank=True, bank_negatives=8, heads="avid").train()
    b = make_batch(B=6)
    b.audio_mask[[1, 4]] = False
    b.audio[[1, 4]] = 0.0
    b.video_mask[2] = False
    b.video[2] = 0.0
    model.compute_losses(b)
    model.commit_state()
    assert model.bank_valid["audio"][:6].tolist() == [True, False, True, True, False, True]
    assert model.bank_valid["video"][:6].tolist() == [True, True, False, True, True, True]
    assert torch.equal(model.bank["audio"][[1, 4]], torch.zeros(2, 16))  # never written
    assert torch.equal(model.bank["video"][2], torch.zeros(16))
    again = make_batch(B=6, seed=1)  # the same keys, now with audio: the memory starts
    model.compute_losses(again)
    model.commit_state()
    assert model.bank_valid["audio"][:6].all()
    assert torch.isfinite(model.bank["audio"][:6]).all()


# ---- the memory bank's gather across 2 gloo processes -----------------------------------------


def _bank_gather_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    from avssl.objectives._memory_bank import gather_keys_and_tensors

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        g = torch.Generator().manual_seed(0)  # the same global batch on every rank
        z = torch.randn(world * 3, 4, generator=g).to(torch.bfloat16)
        ok = torch.tensor([1.0, 0.0, 1.0] * world)
        keys = [f"k{i}" for i in range(world * 3)]
        mine = slice(rank * 3, (rank + 1) * 3)
        got_keys, got = gather_keys_and_tensors(
            keys[mine], {"audio": z[mine], "audio_ok": ok[mine]}
        )
        assert got_keys == keys
        assert got["audio"].dtype == torch.bfloat16 and torch.equal(got["audio"], z)
        assert got["audio_ok"].shape == (world * 3,) and torch.equal(got["audio_ok"], ok)
    finally:
        dist.destroy_process_group()


def test_bank_gather_across_two_gloo_processes_is_the_whole_batch() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_bank_gather_worker, args=(2, port), nprocs=2, join=True)
