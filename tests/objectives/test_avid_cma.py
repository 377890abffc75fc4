"""AVID-CMA: agreement positives, negatives that avoid them, the positive-set term by hand,
starting from a Cross-AVID checkpoint, and its one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avssl.objectives.avid_cma import (
    AVIDCMA,
    _positive_nce,
    agreement_positives,
    negatives_avoiding,
)
from avssl.objectives.contrastive import AVContrastive
from tests.objectives.batches import make_batch

TINY = dict(size="tiny", depth=1, proj_dim=8, proj_hidden_dim=16, heads="avid",
            bank_negatives=5, temperature=0.1)  # fmt: skip


def test_agreement_positives_by_hand():
    # 4 samples; video puts 0~1 and 2~3 together, audio puts 0~2 and 1~3 together
    v = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [0.2, 1.0]]), dim=1)
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]), dim=1)
    sim_v, sim_a = v @ v.t(), a @ a.t()
    sims = {"consensus": torch.minimum(sim_v, sim_a), "union": torch.maximum(sim_v, sim_a),
            "video": sim_v, "audio": sim_a}  # fmt: skip
    for kind, sim in sims.items():
        got = agreement_positives(v, a, 2, kind, chunk=3)  # chunks of 3 rows: 2 products
        for i in range(4):
            others = [j for j in range(4) if j != i]
            want = sorted(sorted(others, key=lambda j: -float(sim[i, j]))[:2])
            assert got[i].tolist() == want, (kind, i)
    assert agreement_positives(v, a, 1, "video")[:, 0].tolist() == [1, 0, 3, 2]
    assert agreement_positives(v, a, 1, "audio")[:, 0].tolist() == [2, 3, 0, 1]
    with pytest.raises(ValueError, match="positives"):
        agreement_positives(v, a, 4)
    with pytest.raises(ValueError, match="agreement must be"):
        agreement_positives(v, a, 1, "both")


def test_negatives_avoid_the_anchor_and_its_positives():
    excluded = torch.tensor([[0, 3, 4, 9], [2, 5, 6, 7]])
    gen = torch.Generator().manual_seed(0)
    neg = negatives_avoiding(excluded, 12, 4000, gen)
    assert neg.shape == (2, 4000)
    for row, ex in zip(neg, excluded):
        allowed = set(range(12)) - set(ex.tolist())
        assert set(row.tolist()) == allowed  # every allowed row drawn, nothing else
        counts = torch.bincount(row, minlength=12)[sorted(allowed)].float()
        assert float(counts.min()) > 0.8 * 4000 / 8  # about uniform
    assert negatives_avoiding(torch.tensor([[0, 1, 2]]), 3, 5).shape == (1, 0)


def _cross_avid(tmp_path, **kw):
    """A Cross-AVID model whose bank holds 8 samples, saved as an avssl checkpoint."""
    torch.manual_seed(0)
    avid = AVContrastive(memory_bank=True, **{**TINY, **kw})
    batch = make_batch(B=8)
    batch.key = [f"s{i}" for i in range(8)]
    avid.train().compute_losses(batch)  # fills the bank rows of the 8 keys
    avid.commit_state()
    ckpt = {"state_dict": avid.state_dict(), "hyper_parameters": dict(avid.hparams)}
    avid.on_save_checkpoint(ckpt)
    path = tmp_path / "avid.ckpt"
    torch.save(ckpt, path)
    return avid, batch, path


def test_starts_from_cross_avid_and_scores_positive_sets_by_hand(tmp_path):
    avid, batch, path = _cross_avid(tmp_path)
    cma = AVIDCMA(avid_ckpt=str(path), positives=2, within_negatives=3, positive_weight=2.0,
                  **TINY)  # fmt: skip
    cma.check_before_fit(resuming=False)
    for k, v in avid.state_dict().items():
        assert torch.equal(cma.state_dict()[k], v), k
    assert cma.bank_index == avid.bank_index
    assert torch.equal(cma.bank["video"][:8], avid.bank["video"][:8])
    cma.find_positives()
    want_pos = agreement_positives(avid.bank["video"][:8], avid.bank["audio"][:8], 2)
    assert torch.equal(cma.positive_rows, want_pos)
    rows = torch.tensor([cma.bank_index[k] for k in batch.key])
    neg = cma._bank_negatives(rows, 8)  # avoids each anchor and its 2 positives
    for r, n in zip(rows.tolist(), neg):
        assert not set(n.tolist()) & ({r} | set(want_pos[r].tolist()))
    cma._bank_negatives = lambda rows, filled: neg  # the same negatives in the loss below
    cma.eval()
    with torch.no_grad():
        out = cma.compute_losses(batch)
        za, zv = cma.embed(batch.audio, batch.video)

    def by_hand(z, bank):  # mean over anchors and positives of -log softmax([pos, negs])
        total = 0.0
        for i, r in enumerate(rows.tolist()):
            zi = F.normalize(z[i], dim=0)
            negs = [float(zi @ bank[j]) / 0.1 for j in neg[i, :3].tolist()]
            for p in want_pos[r].tolist():
                s = float(zi @ bank[p]) / 0.1
                total += -(s - math.log(math.exp(s) + sum(math.exp(x) for x in negs)))
        return total / (len(rows) * 2)

    nce_pos = 0.5 * (by_hand(zv, cma.bank["video"]) + by_hand(za, cma.bank["audio"]))
    assert float(out["nce_pos"]) == pytest.approx(nce_pos, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(
        (float(out["nce_av"]) + 2.0 * nce_pos) / 3.0, rel=1e-4
    )
    ckpt: dict = {}
    cma.on_save_checkpoint(ckpt)  # the positive sets travel with a resumed run
    again = AVIDCMA(positives=2, **TINY)
    again.on_load_checkpoint(ckpt)
    assert torch.equal(again.positive_rows, want_pos)


def test_cma_trains_and_needs_a_cross_avid_checkpoint(tmp_path):
    avid, batch, path = _cross_avid(tmp_path)
    cma = AVIDCMA(avid_ckpt=str(path), positives=2, within_negatives=3, **TINY)
    cma.check_before_fit(resuming=False)
    cma.find_positives()
    opt = torch.optim.AdamW(cma.parameters(), lr=2e-3)
    hist = []
    for _ in range(6):
        out = cma.train().compute_losses(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append(float(out["nce_pos"].detach()))
    assert hist[-1] < hist[0]
    AVIDCMA(avid_ckpt=None, **TINY).check_before_fit(resuming=True)  # a resumed run has it
    with pytest.raises(ValueError, match="file not found; pass a Cross-AVID checkpoint"):
        AVIDCMA(avid_ckpt=str(tmp_path / "none.ckpt"), **TINY).check_before_fit(resuming=False)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint"):
        AVIDCMA(avid_ckpt=str(tmp_path / "text.ckpt"), **TINY).check_before_fit(False)
    vatt = AVContrastive(**TINY)
    ckpt = {"state_dict": vatt.state_dict(), "hyper_parameters": dict(vatt.hparams)}
    vatt.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "vatt.ckpt")
    with pytest.raises(ValueError, match="without an AVID memory bank, not of Cross-AVID"):
        AVIDCMA(avid_ckpt=str(tmp_path / "vatt.ckpt"), **TINY).check_before_fit(False)
    with pytest.raises(ValueError, match="proj_dim=8 differs"):
        AVIDCMA(avid_ckpt=str(path), **{**TINY, "proj_dim": 4}).check_before_fit(False)
    with pytest.raises(ValueError, match="agreement must be"):
        AVIDCMA(agreement="both", **TINY)


def test_positive_sets_are_found_again_every_quarter(tmp_path):
    """With ``resample_every: 0.25`` of 8 steps: found at the first step (none yet), then at
    steps 2, 4 and 6, once per step (accumulated batches of one step do not repeat it)."""
    from types import SimpleNamespace

    _, batch, path = _cross_avid(tmp_path)
    cma = AVIDCMA(avid_ckpt=str(path), positives=2, resample_every=0.25, **TINY)
    cma.check_before_fit(resuming=False)
    fake = SimpleNamespace(estimated_stepping_batches=8, global_step=0)
    cma._trainer = fake  # type: ignore[assignment]
    found = []
    for step in range(8):
        for _ in range(2):  # two accumulated batches per optimizer step
            fake.global_step = step
            before = cma.times_found
            cma.on_train_batch_start(batch, 0)
            if cma.times_found > before:
                found.append(step)
    assert found == [0, 2, 4, 6]
    cma._trainer = None
    out = cma.compute_losses(batch)
    assert float(out["positive_sets_found"]) == 4.0


def test_rows_without_a_memory_agree_with_no_row():
    """``valid``: a similarity with a missing memory does not count. Rows 1 and 4 have no audio
    (their audio rows are identical, as silence would make them): under consensus they have no
    positives (-1) and are nobody's; union falls back on their video; video ignores audio."""
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    a = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    a[4] = a[1].clone()  # the same "memory" for both silent clips
    has_a = torch.tensor([True, False, True, True, False, True])
    valid = (torch.ones(6, dtype=torch.bool), has_a)
    cons = agreement_positives(v, a, 2, "consensus", valid=valid)
    assert cons[1].tolist() == [-1, -1] and cons[4].tolist() == [-1, -1]
    assert not (cons[has_a] == 1).any() and not (cons[has_a] == 4).any()
    sim = torch.minimum(v @ v.t(), a @ a.t())
    for i in torch.nonzero(has_a).flatten().tolist():  # the others: the best of the valid rows
        others = [j for j in range(6) if j != i and has_a[j]]
        want = sorted(sorted(others, key=lambda j: -float(sim[i, j]))[:2])
        assert cons[i].tolist() == want
    union = agreement_positives(v, a, 2, "union", valid=valid)
    assert (union >= 0).all()
    sim_v = v @ v.t()
    want_1 = sorted(sorted([0, 2, 3, 4, 5], key=lambda j: -float(sim_v[1, j]))[:2])
    assert union[1].tolist() == want_1  # video similarity only
    assert torch.equal(agreement_positives(v, a, 2, "video", valid=valid),
                       agreement_positives(v, a, 2, "video"))  # fmt: skip
    assert (agreement_positives(v, a, 2, "audio", valid=valid)[[1, 4]] == -1).all()


def test_negatives_avoiding_ignores_padding():
    """Entries >= filled pad a short positive set: they exclude nothing, and no draw leaves
    range(filled) or hits a real excluded row."""
    excluded = torch.tensor([[1, 4, 12, 12], [0, 2, 5, 7]])  # row 0: 2 real, 2 padding
    gen = torch.Generator().manual_seed(0)
    neg = negatives_avoiding(excluded, 10, 3000, gen)
    assert int(neg.max()) < 10 and int(neg.min()) >= 0
    assert not set(neg[0].tolist()) & {1, 4} and not set(neg[1].tolist()) & {0, 2, 5, 7}


def test_positive_nce_leaves_out_missing_positives_by_hand():
    """A -1 pick and a positive without a memory are not averaged over; an anchor left with no
    positive is not in the mean; negatives without a memory are not in the softmax."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    usable = torch.tensor([True, True, False, True])
    pos = torch.tensor([[-1, 3], [-1, 2]])  # anchor 1: its only positive holds no memory
    neg = torch.tensor([[1, 2], [0, 3]])  # anchor 0's negative 2 holds none
    got = _positive_nce(z, bank, pos, neg, torch.tensor(1.0), torch.ones(2), usable)
    s, n = 0.8, 0.0  # anchor 0: positive row 3 (cos 0.8), negative row 1 (cos 0)
    want = -(s - math.log(math.exp(s) + math.exp(n)))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_cma_positive_sets_skip_samples_without_audio(tmp_path):
    """From a Cross-AVID bank where samples 1 and 4 had no audio: they get no positive set
    under consensus, are in nobody's, and the loss is finite and trains."""
    torch.manual_seed(0)
    avid = AVContrastive(memory_bank=True, **TINY)
    batch = make_batch(B=8)
    batch.key = [f"s{i}" for i in range(8)]
    batch.audio_mask[[1, 4]] = False
    batch.audio[[1, 4]] = 0.0
    avid.train().compute_losses(batch)
    avid.commit_state()
    ckpt = {"state_dict": avid.state_dict(), "hyper_parameters": dict(avid.hparams)}
    avid.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "avid.ckpt")
    cma = AVIDCMA(avid_ckpt=str(tmp_path / "avid.ckpt"), positives=2, within_negatives=3, **TINY)
    cma.check_before_fit(resuming=False)
    cma.find_positives()
    pos = cma.positive_rows
    assert (pos[[1, 4]] == -1).all() and not (pos[[0, 2, 3, 5, 6, 7]] < 0).any()
    assert not ((pos == 1) | (pos == 4)).any()
    neg = cma._bank_negatives(torch.arange(8), 8)
    assert int(neg.max()) < 8 and int(neg.min()) >= 0
    out = cma.train().compute_losses(batch)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["nce_pos"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in cma.parameters() if p.grad is not None)
