"""MAViL on random batches: losses go down, masking of missing modalities, stage 2 teacher."""

from __future__ import annotations

import pytest
import torch

from avssl.losses.contrastive import info_nce
from avssl.objectives import _mavil_parts as parts
from avssl.objectives.base import param_groups
from tests.attention_spy import record_attention_masks
from tests.objectives.batches import make_batch

TERMS = ("recon_audio", "recon_video", "inter", "intra_audio", "intra_video")


def _train(model, batch, steps: int, lr: float = 2e-3) -> list[dict[str, float]]:
    """AdamW on one fixed batch with the same masks every step (RNG reseeded)."""
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=lr)
    history = []
    for _ in range(steps):
        torch.manual_seed(123)  # identical masks and views at every step
        losses = model.compute_losses(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v) for k, v in losses.items()})
    return history


def test_every_stage1_term_decreases_on_a_fixed_batch(tiny_mavil, batch):
    model = tiny_mavil(inter_weight=1.0, intra_weight=1.0)
    hist = _train(model, batch, steps=12)
    assert set(TERMS) <= set(hist[0])
    for term in (*TERMS, "loss"):
        assert hist[-1][term] < 0.8 * hist[0][term], (term, hist[0][term], hist[-1][term])


def test_every_trainable_parameter_gets_a_gradient(tiny_mavil, batch):
    model = tiny_mavil()  # DDP (find_unused_parameters=False) needs this
    model.compute_losses(batch)["loss"].backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert idle == []


def test_total_loss_is_the_weighted_sum(tiny_mavil, batch):
    model = tiny_mavil(inter_weight=0.3, intra_weight=0.2)
    torch.manual_seed(0)
    out = {k: float(v) for k, v in model.compute_losses(batch).items()}
    expected = (
        out["recon_audio"]
        + out["recon_video"]
        + 0.3 * out["inter"]
        + 0.2 * (out["intra_audio"] + out["intra_video"])
    )
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def test_zero_weights_drop_terms_and_heads(tiny_mavil, batch):
    model = tiny_mavil(inter_weight=0.0, intra_weight=0.0)
    out = model.compute_losses(batch)
    assert set(out) == {"recon_audio", "recon_video", "loss"}
    assert len(model.proj) == 0  # no unused parameters (DDP needs every one to get a gradient)


def test_masked_info_nce_matches_info_nce_and_ignores_invalid_rows():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    ones = torch.ones(6)
    ref = info_nce(a, b, temperature=0.1, symmetric=True)
    assert parts.masked_info_nce(a, b, ones, 0.1, gather=False) == pytest.approx(float(ref))
    valid = torch.tensor([1.0, 1, 0, 1, 0, 1])
    sub = info_nce(a[valid > 0], b[valid > 0], temperature=0.1)
    got = parts.masked_info_nce(a, b, valid, 0.1, gather=False)
    assert float(got) == pytest.approx(float(sub), rel=1e-5)
    a2 = a.clone()
    a2[2] = 100.0  # an invalid row changes nothing
    again = parts.masked_info_nce(a2, b, valid, 0.1, gather=False)
    assert float(again) == pytest.approx(float(got))
    assert float(parts.masked_info_nce(a, b, torch.zeros(6), 0.1, gather=False)) == 0.0


def test_missing_audio_is_excluded_from_audio_losses(tiny_mavil, batch):
    model = tiny_mavil(inter_weight=1.0, intra_weight=1.0)
    batch.audio_mask = torch.tensor([True, False, True, True])
    torch.manual_seed(5)
    ref = model.compute_losses(batch)
    batch.audio[1] = torch.randn_like(batch.audio[1]) * 10  # only the missing sample changes
    torch.manual_seed(5)
    out = model.compute_losses(batch)
    for term in ("recon_audio", "inter", "intra_audio"):
        assert float(out[term]) == pytest.approx(float(ref[term]), rel=1e-5), term


def test_missing_audio_placeholders_move_no_loss_and_no_gradient(tiny_mavil, batch):
    """Sample 1 has no audio: its placeholder tokens are no keys of the fusion, so no loss
    (recon_video included) and no gradient depends on what they hold."""
    model = tiny_mavil(inter_weight=1.0, intra_weight=1.0)
    batch.audio_mask = torch.tensor([True, False, True, True])

    def run():
        model.zero_grad()
        torch.manual_seed(5)
        out = model.compute_losses(batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in out.items()}, grads

    ref, ref_grads = run()
    batch.audio[1] = torch.randn_like(batch.audio[1]) * 10  # only the missing sample changes
    out, grads = run()
    for term in ref:
        torch.testing.assert_close(out[term], ref[term], rtol=1e-5, atol=1e-7, msg=term)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("missing", ["audio", "video"])
def test_a_batch_without_a_modality_leaves_its_encoder_untouched(tiny_mavil, batch, missing):
    """No clip has audio (or video): that encoder gets no gradient, and the other
    modality's reconstruction does not depend on its weights."""
    model = tiny_mavil(inter_weight=1.0, intra_weight=1.0)
    setattr(batch, missing, torch.zeros_like(getattr(batch, missing)))
    setattr(batch, f"{missing}_mask", torch.zeros(len(batch), dtype=torch.bool))
    enc = model.audio_encoder if missing == "audio" else model.video_encoder
    other = "recon_video" if missing == "audio" else "recon_audio"
    torch.manual_seed(1)
    out = model.compute_losses(batch)
    out["loss"].backward()
    assert sum(float(p.grad.abs().sum()) for p in enc.parameters() if p.grad is not None) == 0
    with torch.no_grad():
        for p in enc.patch_embed.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    assert float(model.compute_losses(batch)[other]) == float(out[other])


def test_complete_batches_use_the_unmasked_fusion(tiny_mavil, batch, monkeypatch):
    """Every clip with both modalities: no attention mask anywhere (SDPA's fast kernels) and
    bit-identical losses and gradients whether the batch carries all-True masks or none."""
    model = tiny_mavil(inter_weight=1.0, intra_weight=1.0)
    masks = record_attention_masks(monkeypatch)

    def run(b):
        model.zero_grad()
        torch.manual_seed(5)
        out = model.compute_losses(b)
        out["loss"].backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    with_masks, g1 = run(batch)  # all-True masks, as the loader gives
    assert masks and all(m is None for m in masks)
    batch.audio_mask = batch.video_mask = None
    without, g2 = run(batch)
    for term in with_masks:
        assert torch.equal(with_masks[term], without[term]), term
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_the_loaders_flag_picks_the_fusion_path(tiny_mavil, batch, monkeypatch):
    """The host-side flag the loader's collate sets decides; without it, host masks are read
    and masks on an accelerator go to the fusion."""
    model = tiny_mavil()
    a_ok, v_ok = torch.ones(4), torch.tensor([1.0, 1.0, 0.0, 1.0])
    batch.extra[parts.COMPLETE] = False
    assert parts.fusion_masks(batch, a_ok, v_ok) == (a_ok, v_ok)
    batch.extra[parts.COMPLETE] = True
    assert parts.fusion_masks(batch, a_ok, v_ok) == (None, None)
    batch.extra.pop(parts.COMPLETE)
    batch.video_mask = torch.tensor([True, True, False, True])
    assert parts.fusion_masks(batch, a_ok, v_ok) == (a_ok, v_ok)  # host masks, one missing
    batch.video_mask = torch.ones(4, dtype=torch.bool)
    assert parts.fusion_masks(batch, a_ok, v_ok) == (None, None)  # host masks, all True
    monkeypatch.setattr(parts, "modalities_complete", lambda b: None)  # device masks
    oks = parts.fusion_masks(batch, a_ok, v_ok)
    assert oks[0] is a_ok and oks[1] is v_ok
    torch.manual_seed(5)
    masked = model.compute_losses(batch)
    monkeypatch.setattr(parts, "modalities_complete", lambda b: True)
    torch.manual_seed(5)
    plain = model.compute_losses(batch)
    for term in plain:  # an all-True mask: the same values (another kernel)
        torch.testing.assert_close(masked[term], plain[term], rtol=1e-5, atol=1e-6)


def test_k_clips_per_sample_are_flattened(tiny_mavil):
    model = tiny_mavil()
    b = make_batch(B=2)
    b.video = torch.stack([b.video, b.video], dim=1)  # [B, K, C, T, H, W]
    b.audio = torch.stack([b.audio, b.audio], dim=1)  # [B, K, 1, Ta, F]
    audio, video, a_ok, v_ok = parts.flatten_inputs(b)
    assert audio.shape[0] == video.shape[0] == a_ok.shape[0] == 4
    assert torch.isfinite(model.compute_losses(b)["loss"])


def test_export_returns_the_student_encoders(tiny_mavil):
    model = tiny_mavil()
    out = model.export_encoders()
    assert out["audio"] is model.audio_encoder and out["video"] is model.video_encoder
    assert out["which"] == "student" and "stage 1" in out["note"]
    assert out["audio"].config()["modality"] == "audio"


def test_visualize_gives_three_panels_per_modality(tiny_mavil, batch):
    images = tiny_mavil().visualize(batch)
    assert images["audio"].shape == (3, 32, 3 * 64 + 2 * 2)  # [3, F, 3 Ta + gaps]
    assert images["video"].shape == (3, 3 * 32 + 2 * 2, 4 * 32 + 3 * 2)  # rows x frames
    for img in images.values():
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def _stage1_ckpt(model, path) -> str:
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    return str(path)


def test_stage2_teacher_is_loaded_frozen_and_its_features_are_learned(tiny_mavil, batch, tmp_path):
    stage1 = tiny_mavil()
    ckpt = _stage1_ckpt(stage1, tmp_path / "s1.ckpt")
    model = tiny_mavil(stage=2, teacher_ckpt=ckpt, inter_weight=0.0, intra_weight=0.0)
    assert int(model.teacher_loaded) == 1
    for name, p in stage1.audio_encoder.state_dict().items():
        assert torch.equal(model.teacher.audio.state_dict()[name], p)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    trainable = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert not trainable & {id(p) for p in model.teacher.parameters()}
    before = [p.clone() for p in model.teacher.parameters()]
    model.train()
    assert not model.teacher.training
    hist = _train(model, batch, steps=10)
    for term in ("recon_audio", "recon_video"):
        assert hist[-1][term] < 0.8 * hist[0][term], term
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))
    assert "teacher.audio.blocks.0.attn.qkv.weight" in model.state_dict()
    assert "stage 2" in model.export_encoders()["note"]


def test_stage2_targets_are_the_teachers_fusion_outputs(tiny_mavil, batch, tmp_path):
    stage1 = tiny_mavil().eval()
    model = tiny_mavil(stage=2, teacher_ckpt=_stage1_ckpt(stage1, tmp_path / "s1.ckpt"))
    ta, tv = model.teacher_targets(batch.audio, batch.video)
    ra, rv = stage1.fusion(
        stage1.audio_encoder.forward_features(batch.audio),
        stage1.video_encoder.forward_features(batch.video),
    )
    assert torch.allclose(ta, ra) and torch.allclose(tv, rv)
    assert ta.shape == (4, 4 * 2, 192)  # Na = (64/16) x (32/16) tokens, D = 192 (tiny)
    batch.audio[1] = torch.randn_like(batch.audio[1]) * 10  # sample 1 has no audio
    oks = (torch.tensor([1.0, 0.0, 1.0, 1.0]), None)
    _, tv2 = model.teacher_targets(batch.audio, batch.video, oks)
    alone = stage1.fusion.forward_single(
        stage1.video_encoder.forward_features(batch.video), "video"
    )
    torch.testing.assert_close(tv2[1], alone[1])  # its video targets ignore the placeholders
    torch.testing.assert_close(tv2[[0, 2, 3]], tv[[0, 2, 3]])


def test_stage2_errors(tiny_mavil, tmp_path):
    with pytest.raises(ValueError, match="teacher_ckpt"):
        tiny_mavil(stage=2)
    other = tiny_mavil(fusion_depth=2)
    path = _stage1_ckpt(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="fusion_depth=2 differs"):
        tiny_mavil(stage=2, teacher_ckpt=path)
    missing = tiny_mavil(stage=2, teacher_ckpt=str(tmp_path / "nope.ckpt"))  # export still works
    assert int(missing.teacher_loaded) == 0
    with pytest.raises(RuntimeError, match="nope.ckpt was not found"):
        missing.on_fit_start()


def test_inter_term_does_not_contrast_a_video_with_itself(batch, tiny_mavil):
    """Two rows of one video: the inter-modal InfoNCE drops their cross pairs as negatives."""
    model = tiny_mavil().eval()
    torch.manual_seed(5)
    before = float(model.compute_losses(batch)["inter"])
    batch.key = [batch.key[0], batch.key[0], *batch.key[2:]]
    torch.manual_seed(5)  # the same masks
    assert float(model.compute_losses(batch)["inter"]) != pytest.approx(before, rel=1e-4)
