"""Decoder, joint decoder and fusion layers: shapes, mask tokens, split, learning."""

from __future__ import annotations

import torch

from avssl.losses.reconstruction import masked_mse
from avssl.models import AudioViT, VideoViT
from avssl.models.decoder import JointDecoder, TransformerDecoder
from avssl.models.fusion import JointFusion
from avssl.models.layers import set_fused_attention
from avssl.models.masking import random_masking, tube_masking
from tests.attention_spy import record_attention_masks


def test_decoder_shapes_and_mask_token_positions() -> None:
    torch.manual_seed(0)
    enc = AudioViT("tiny", depth=1, input_size=(64, 32))
    dec = TransformerDecoder(192, enc.patch_dim, embed_dim=64, depth=1, num_heads=4, grid=(4, 2))
    x = torch.randn(2, 1, 64, 32)
    grid = enc.grid_size(x.shape)
    keep, mask, ids_restore = random_masking(2, 8, 0.75)
    pred = dec(enc.forward_features(x, keep), ids_restore, grid)
    assert pred.shape == (2, 8, 256)
    # without masking, the decoder takes the full sequence
    assert dec(enc.forward_features(x), None, grid).shape == (2, 8, 256)
    # another grid works (positions computed on the fly)
    x2 = torch.randn(2, 1, 32, 32)
    keep2, _, ids2 = random_masking(2, 4, 0.5)
    assert dec(enc.forward_features(x2, keep2), ids2, enc.grid_size(x2.shape)).shape == (2, 4, 256)
    # the masked positions' inputs are the mask token: changing visible features changes preds
    # at masked positions only through attention, so with zero blocks they would be equal
    dec0 = TransformerDecoder(192, 256, embed_dim=64, depth=0, num_heads=4)
    vis = torch.randn(2, 2, 192)
    p1 = dec0(vis, ids_restore, grid)
    p2 = dec0(vis + 1.0, ids_restore, grid)
    m = mask.bool()
    torch.testing.assert_close(p1[m], p2[m])
    assert not torch.allclose(p1[~m], p2[~m])


def test_joint_decoder_splits_modalities() -> None:
    torch.manual_seed(0)
    dec = JointDecoder({"audio": 32, "video": 48}, {"audio": 256, "video": 768}, 64, 2, 4)
    ka, _, ra = random_masking(2, 8, 0.75)
    kv, _, rv = tube_masking(2, (2, 2, 2), 0.5)
    out = dec(
        {
            "audio": (torch.randn(2, 2, 32), ra, (4, 2)),
            "video": (torch.randn(2, 4, 48), rv, (2, 2, 2)),
        }
    )
    assert out["audio"].shape == (2, 8, 256) and out["video"].shape == (2, 8, 768)


def test_fusion_joint_and_single() -> None:
    torch.manual_seed(0)
    fusion = JointFusion(32, depth=2, num_heads=4, single_norms=True)
    a, v = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    fa, fv = fusion(a, v)
    assert fa.shape == (2, 5, 32) and fv.shape == (2, 3, 32)
    # joint attention: video tokens change the audio outputs
    fa2, _ = fusion(a, v + torch.randn_like(v))
    assert not torch.allclose(fa, fa2)
    # single-modality pass == joint pass with only that modality present, its own final norm
    # (CAV-MAE): the joint norm's weights do not move it; given the joint norm's, it is that pass
    single = fusion.forward_single(a, "audio")
    assert single.shape == (2, 5, 32)
    with torch.no_grad():
        fusion.norm.weight.mul_(2.0)
    torch.testing.assert_close(fusion.forward_single(a, "audio"), single)
    assert not torch.allclose(fusion(a, v[:, :0])[0], single)
    fusion.norm_single["audio"].load_state_dict(fusion.norm.state_dict())
    torch.testing.assert_close(fusion.forward_single(a, "audio"), fusion(a, v[:, :0])[0])


def test_fusion_default_uses_every_parameter() -> None:
    """Without single-modality norms, forward() gives every parameter a gradient (DDP-safe)."""
    fusion = JointFusion(32, depth=1, num_heads=4)
    fa, fv = fusion(torch.randn(2, 5, 32), torch.randn(2, 3, 32))
    (fa.sum() + fv.pow(2).sum()).backward()
    assert all(p.grad is not None for p in fusion.parameters())
    # one modality alone: the joint pass with the other modality's sequence empty
    a, v = torch.randn(1, 4, 32), torch.randn(1, 2, 32)
    torch.testing.assert_close(fusion.forward_single(v, "video"), fusion(a[:, :0], v)[1])
    torch.testing.assert_close(fusion.forward_single(a, "audio"), fusion(a, v[:, :0])[0])


def test_encoder_decoder_reconstruction_learns() -> None:
    """A few AdamW steps lower the masked norm-pix MSE on a fixed batch."""
    torch.manual_seed(0)
    enc = VideoViT("tiny", depth=1, num_frames=4, img_size=32)
    dec = TransformerDecoder(192, enc.patch_dim, embed_dim=64, depth=1, num_heads=4)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(4, 3, 4, 32, 32)
    grid = enc.grid_size(x.shape)
    keep, mask, ids_restore = tube_masking(4, grid, 0.5, generator=torch.Generator().manual_seed(0))
    target = enc.patchify(x)
    losses = []
    for _ in range(10):
        loss = masked_mse(dec(enc.forward_features(x, keep), ids_restore, grid), target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0]  # 1.02 -> 0.91 when written


def test_fusion_key_mask_hides_a_missing_modality() -> None:
    """A clip without audio: its video outputs are those of the video tokens alone, whatever
    its audio placeholders hold; the other clips are untouched (the same values as unmasked)."""
    torch.manual_seed(0)
    fusion = JointFusion(32, depth=2, num_heads=4)
    a, v = torch.randn(3, 5, 32), torch.randn(3, 4, 32)
    audio_ok = torch.tensor([True, False, True])
    fa, fv = fusion(a, v, audio_ok=audio_ok, video_ok=torch.ones(3, dtype=torch.bool))
    alone = fusion.forward_single(v[1:2], "video")  # single_norms off: the joint norm
    torch.testing.assert_close(fv[1:2], alone)
    a2 = a.clone()
    a2[1] = torch.randn(5, 32) * 10
    fa2, fv2 = fusion(a2, v, audio_ok=audio_ok.float())  # 0/1 floats as flatten_inputs gives
    torch.testing.assert_close(fv2, fv)
    ra, rv = fusion(a, v)  # clips with both modalities: as without a mask
    torch.testing.assert_close(fa[[0, 2]], ra[[0, 2]])
    torch.testing.assert_close(fv[[0, 2]], rv[[0, 2]])
    assert not torch.allclose(rv[1], fv[1])  # unmasked, the placeholders did count


def test_fusion_missing_modality_sends_its_tokens_no_gradient() -> None:
    torch.manual_seed(0)
    fusion = JointFusion(32, depth=1, num_heads=4)
    a = torch.randn(2, 5, 32, requires_grad=True)
    v = torch.randn(2, 4, 32, requires_grad=True)
    fa, fv = fusion(a, v, audio_ok=torch.tensor([True, False]))
    (fa.square().sum() + fv.square().sum()).backward()  # even a loss that uses every output
    assert a.grad is not None and v.grad is not None
    assert float(a.grad[1].abs().max()) == 0.0 and float(a.grad[0].abs().max()) > 0
    assert float(v.grad.abs().sum()) > 0


def test_fusion_clip_with_neither_modality_stays_finite_and_paths_agree() -> None:
    torch.manual_seed(0)
    fusion = JointFusion(32, depth=1, num_heads=4)
    a, v = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    oks = (torch.tensor([True, False]), torch.tensor([False, False]))
    fa, fv = fusion(a, v, *oks)
    assert torch.isfinite(fa).all() and torch.isfinite(fv).all()
    set_fused_attention(fusion, False)  # the naive softmax path masks the same keys
    na, nv = fusion(a, v, *oks)
    torch.testing.assert_close(na, fa)
    torch.testing.assert_close(nv, fv)


def test_fusion_without_masks_passes_no_attention_mask(monkeypatch) -> None:
    """None masks (every clip has both modalities): SDPA gets ``attn_mask=None`` (its flash
    kernel on a GPU) and the values are those of the maskless call."""
    torch.manual_seed(0)
    fusion = JointFusion(32, depth=2, num_heads=4)
    a, v = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    seen = record_attention_masks(monkeypatch)
    ref = fusion(a, v)
    out = fusion(a, v, None, None)
    assert len(seen) == 4 and all(m is None for m in seen)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    fusion(a, v, torch.ones(2, dtype=torch.bool), None)
    assert seen[-1] is not None and seen[-1].shape == (2, 1, 1, 9)
