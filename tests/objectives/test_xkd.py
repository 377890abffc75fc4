"""XKD: EMA teachers, centres, loss composition, shared backbone, export, checkpoint resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from avssl.losses.distillation import coral, dino_distill, mean_coral, mmd
from avssl.objectives._xkd_views import attention_pool, tokens_and_attention
from avssl.objectives.base import param_groups
from avssl.objectives.xkd import XKD, DINOHead
from tests.objectives.batches import make_batch

TINY = dict(
    size="tiny",
    depth=1,
    decoder_depth=1,
    head_hidden_dim=32,
    head_bottleneck_dim=16,
    head_out_dim=64,
    mask_ratio_audio=0.75,
    mask_ratio_video=0.75,
)


def _model(**kw) -> XKD:
    torch.manual_seed(0)
    return XKD(**{**TINY, **kw})


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_teacher_starts_as_a_frozen_copy_outside_the_optimizer():
    model = _model()
    for t, s in zip(model.teacher.parameters(), model.student().parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    optimised = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert not any(id(p) in optimised for p in model.teacher.parameters())


def test_ema_update_and_cosine_momentum(batch):
    model = _model()
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.5)
    model.compute_losses(batch)["loss"].backward()
    opt.step()
    t0, s1 = _params(model.teacher), _params(model.student())
    m = model.update_teacher(step=0, total_steps=100)
    assert m == pytest.approx(0.997)
    for t_new, t, s in zip(model.teacher.parameters(), t0, s1):
        assert torch.allclose(t_new, 0.997 * t + 0.003 * s, atol=1e-6)
    assert model.update_teacher(50, 100) == pytest.approx(0.9985)  # half-way on the cosine
    before = _params(model.teacher)
    assert model.update_teacher(100, 100) == pytest.approx(1.0)  # momentum 1: frozen
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))


def test_centres_follow_the_teacher_mean_in_training_only(batch):
    """The centres move when a training batch is committed (its loss was finite: the base
    class's ``training_step`` calls ``commit_state``), not in evaluation mode."""
    model = _model()
    ta = model._teacher_logits(batch.audio, "audio")
    tv = model._teacher_logits(batch.video, "video")
    model.eval().compute_losses(batch)
    model.commit_state()  # nothing staged in evaluation mode
    assert torch.equal(model.center_audio, torch.zeros(1, 64))
    model.train().compute_losses(batch)
    assert torch.equal(model.center_audio, torch.zeros(1, 64))  # staged, not yet applied
    model.commit_state()
    assert torch.allclose(model.center_audio, 0.1 * ta.mean(0, keepdim=True), atol=1e-6)
    assert torch.allclose(model.center_video, 0.1 * tv.mean(0, keepdim=True), atol=1e-6)


def test_centres_leave_out_clips_missing_a_modality(batch):
    model = _model().train()
    batch.audio_mask = torch.tensor([True, True, False, True])
    batch.audio[2] = 0.0  # the placeholder input of a clip without audio
    ta = model._teacher_logits(batch.audio, "audio")
    model.compute_losses(batch)
    model.commit_state()
    keep = torch.tensor([0, 1, 3])
    assert torch.allclose(model.center_audio, 0.1 * ta[keep].mean(0, keepdim=True), atol=1e-6)
    batch.audio_mask[:] = False  # no clip with both: the centres stay where they are
    before = model.center_audio.clone()
    model.compute_losses(batch)
    model.commit_state()
    assert torch.equal(model.center_audio, before)


def test_teacher_moves_once_per_optimizer_step(batch):
    """The teacher moves in ``optimizer_step``, which Lightning calls once per accumulation
    window, at the momentum of the step taken (its index before the step counts it); a step
    whose micro-batches were all skipped for non-finite losses (``last_step_skipped``, set by
    the base class while the step runs) moves no teacher."""
    from types import SimpleNamespace

    model = _model()
    calls = []
    model.update_teacher = lambda step, total: calls.append((step, total))  # type: ignore
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=8)
    model._trainer = trainer  # what the hook reads of the trainer
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for step, skipped in enumerate([False, False, True, False]):
        trainer.global_step = step
        model.last_step_skipped = skipped
        model.optimizer_step(0, step, opt, lambda: None)
    assert calls == [(0, 8), (1, 8), (3, 8)]


def test_a_checkpoint_holds_the_teacher_of_its_step(tmp_path):
    """ModelCheckpoint saves in its batch-end hook, which Lightning runs before the module's:
    the teacher of the checkpoint written at the last step is the one the run ends with (it was
    one EMA update behind)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from tests.objectives.test_base import FakeData

    model = _model(lr=1e-2, warmup_steps=0)
    every = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", max_steps=3, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[every],
    )  # fmt: skip
    trainer.fit(model, datamodule=FakeData(n=3))
    saved = torch.load(tmp_path / "epoch=0-step=3.ckpt", weights_only=True)["state_dict"]
    teacher = {f"teacher.{k}": v for k, v in model.teacher.state_dict().items()}
    assert teacher and all(torch.equal(saved[k], v) for k, v in teacher.items())
    before = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=True)["state_dict"]
    assert not all(torch.equal(before[k], v) for k, v in teacher.items())  # the EMA moved it


def test_loss_is_the_normalised_weighted_sum(batch):
    model = _model(recon_weight=5.0, kd_weight=1.0, align_weight=1.0)
    out = {k: float(v.detach()) for k, v in model.compute_losses(batch).items()}
    recon = (out["recon_audio"] + out["recon_video"]) / 2
    kd = (out["kd_video_to_audio"] + out["kd_audio_to_video"]) / 2
    assert out["loss"] == pytest.approx((5 * recon + kd + out["align"]) / 7, rel=1e-5)


def test_kd_targets_are_the_other_modalitys_teacher(batch):
    model = _model().eval()
    torch.manual_seed(3)
    out = model.compute_losses(batch)
    torch.manual_seed(3)  # same masks: reproduce the student logits
    _, s_a = model._student_branch(batch.audio, "audio", torch.ones(4))
    t_v = model._teacher_logits(batch.video, "video")
    want = dino_distill(s_a, t_v, model.center_video, 0.1, 0.1)  # video teacher T 0.1
    assert float(out["kd_video_to_audio"]) == pytest.approx(float(want), rel=1e-5)


def test_steps_lower_the_loss(batch):
    model = _model()
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=2e-3)
    hist = []
    for step in range(6):
        torch.manual_seed(7)
        loss = model.compute_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher(step, 100)
        hist.append(float(loss))
    assert hist[-1] < 0.8 * hist[0], hist


def test_shared_backbone_and_coral_variant(batch):
    model = _model(shared_backbone=True, align="coral")
    assert model.video_encoder.blocks is model.audio_encoder.blocks
    assert model.teacher["video"].blocks is model.teacher["audio"].blocks
    assert model.teacher["video"].blocks is not model.audio_encoder.blocks
    n_shared = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_sep = sum(p.numel() for p in _model().parameters() if p.requires_grad)
    assert n_shared < n_sep
    assert float(_align_of(model.eval(), batch)) > 0
    model.train()
    out = model.compute_losses(batch)
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.5)
    out["loss"].backward()
    opt.step()
    t0, s1 = _params(model.teacher), _params(model.student())
    m = model.update_teacher(0, 10)  # EMA through the shared modules
    assert any(not torch.equal(t, s) for t, s in zip(t0, s1))
    for t_new, t, s in zip(model.teacher.parameters(), t0, s1):
        assert torch.allclose(t_new, m * t + (1 - m) * s, atol=1e-6)


def _align_of(model: XKD, batch) -> torch.Tensor:
    """The model's ``align`` term, checked against its alignment loss on the student logits
    averaged with the same loss on the teacher logits (XKD's code), and its gradient against
    half the students' term alone (the teachers' term has none)."""
    torch.manual_seed(3)
    out = model.compute_losses(batch)
    grads = torch.autograd.grad(out["align"], list(model.audio_head.parameters()))
    torch.manual_seed(3)  # same masks: reproduce the student logits
    _, s_a = model._student_branch(batch.audio, "audio", torch.ones(4))
    _, s_v = model._student_branch(batch.video, "video", torch.ones(4))
    t_a, t_v = (
        model._teacher_logits(batch.audio, "audio"),
        model._teacher_logits(batch.video, "video"),
    )
    fns = {"mmd": mmd, "coral": coral, "mean_coral": mean_coral}
    fn = fns.pop(model.cfg["align"])
    students, teachers = fn(s_v, s_a), fn(t_v, t_a)
    for other in fns.values():  # the check tells the alignment losses apart
        assert float(students) != pytest.approx(float(other(s_v, s_a)), rel=1e-3)
    assert float(teachers) != pytest.approx(float(students), rel=1e-3)  # both terms count
    want = 0.5 * (students + teachers)
    assert float(out["align"]) == pytest.approx(float(want), rel=1e-5)
    want_grads = torch.autograd.grad(0.5 * students, list(model.audio_head.parameters()))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    return out["align"]


def test_align_averages_the_students_and_teachers_mmd(batch):
    assert float(_align_of(_model().eval(), batch)) > 0


def test_align_with_xkds_coral(batch):
    assert float(_align_of(_model(align="mean_coral").eval(), batch)) > 0


def test_export_teacher_or_student_and_bad_settings():
    model = _model()
    enc = model.export_encoders()
    assert enc["which"] == "teacher" and enc["audio"] is model.teacher["audio"]
    student = _model(export_which="student")
    enc = student.export_encoders()
    assert enc["which"] == "student"
    assert enc["audio"] is student.audio_encoder and enc["video"] is student.video_encoder
    with pytest.raises(ValueError, match=r"align must be one of \['coral', 'mean_coral', 'mmd'\]"):
        _model(align="kl")


def _fixed_local_views(model: XKD, batch):
    """Draws the model's local views once and makes ``model.local_views`` return them."""
    torch.manual_seed(11)
    views = model.local_views(batch.audio, batch.video)
    model.local_views = lambda audio, video, local=None: views  # type: ignore[method-assign]
    return views


def test_local_views_teachers_see_the_local_view_students_both(batch):
    model = _model(local_views=True).eval()
    local_a, local_v = _fixed_local_views(model, batch)
    assert local_a.shape == (4, 1, 16, 32)  # 64 fbank frames / 4; one 16-frame patch
    assert local_v.shape == (4, 3, 2, 16, 16)  # 4 frames / 4 -> one tubelet of 2; 32 / 1.16 -> 16
    seen = []
    for name in ("audio", "video"):
        model.teacher[name].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    torch.manual_seed(3)
    out = model.compute_losses(batch)
    assert seen == [local_a.shape, local_v.shape]
    torch.manual_seed(3)  # same masks: the global (masked) student views
    _, s_a = model._student_branch(batch.audio, "audio", torch.ones(4))
    _, s_v = model._student_branch(batch.video, "video", torch.ones(4))
    l_a = model.audio_head(model.audio_encoder(local_a))
    l_v = model.video_head(model.video_encoder(local_v))
    t_a = model._teacher_logits(local_a, "audio")
    t_v = model._teacher_logits(local_v, "video")
    want_a = (dino_distill(s_a, t_v, model.center_video, 0.1, 0.1)
              + dino_distill(l_a, t_v, model.center_video, 0.1, 0.1)) / 2  # fmt: skip
    want_v = (dino_distill(s_v, t_a, model.center_audio, 0.1, 0.07)
              + dino_distill(l_v, t_a, model.center_audio, 0.1, 0.07)) / 2  # fmt: skip
    assert float(out["kd_video_to_audio"]) == pytest.approx(float(want_a), rel=1e-5)
    assert float(out["kd_audio_to_video"]) == pytest.approx(float(want_v), rel=1e-5)
    students = mmd(torch.cat([s_v, l_v]), torch.cat([s_a, l_a]))
    want_align = 0.5 * (students + mmd(t_v, t_a))
    assert float(out["align"]) == pytest.approx(float(want_align), rel=1e-5)
    # the local branch trains the students: kd alone reaches the patch embeddings through it
    model.zero_grad()
    out["kd_video_to_audio"].backward()
    assert model.audio_encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_local_audio_view_takes_xkds_rescaling_by_option(batch):
    plain, resized = _model(local_views=True), _model(local_views=True, local_audio_resize=True)
    torch.manual_seed(4)
    a_plain, v_plain = plain.local_views(batch.audio, batch.video)
    torch.manual_seed(4)
    a_resized, v_resized = resized.local_views(batch.audio, batch.video)
    assert a_resized.shape == a_plain.shape and torch.equal(v_resized, v_plain)
    assert not torch.allclose(a_resized, a_plain)  # the same windows, rescaled
    out = resized.train().compute_losses(batch)
    assert torch.isfinite(out["loss"])


def test_local_views_centres_follow_the_local_teacher(batch):
    model = _model(local_views=True).train()
    local_a, local_v = _fixed_local_views(model, batch)
    t_a = model._teacher_logits(local_a, "audio")
    model.compute_losses(batch)
    model.commit_state()
    assert torch.allclose(model.center_audio, 0.1 * t_a.mean(0, keepdim=True), atol=1e-6)


def test_loader_spec_follows_the_options_and_whole_patches():
    model = _model(local_views=True, patch_size=16, tubelet_size=4, local_crop_scale=[0.1, 0.3],
                   local_grey_p=0.3, local_gain_db=2.5)  # fmt: skip
    spec = model.local_view_spec(num_frames=32, crop_size=112, audio_frames=400)
    assert (spec.frames, spec.size, spec.audio_frames) == (8, 96, 96)  # XKD's 32 -> 8, 112 -> 96
    aug = spec.augment
    assert aug["crop_scale"] == [0.1, 0.3] and aug["grey_p"] == 0.3 and aug["jitter"] == 0.4
    assert (aug["gain_db"], aug["gain_p"], aug["hue"], aug["flip_p"]) == (2.5, 1.0, 0.2, 0.5)
    spec.check(32, 400)  # a view the loader accepts
    assert _model(local_views=True, local_source="device").local_view_spec(32, 112, 400) is None
    assert _model().local_view_spec(32, 112, 400) is None  # no local views at all


def test_teachers_see_the_loaders_local_views(batch):
    from avssl.data.batch import AVBatch

    model = _model(local_views=True, local_blur_p=0.0).eval()
    torch.manual_seed(5)
    local = AVBatch(
        video=torch.randn(4, 3, 2, 16, 16), audio=torch.randn(4, 1, 16, 32), key=batch.key,
        video_mask=batch.video_mask, audio_mask=batch.audio_mask,
    )  # fmt: skip
    batch.local = local
    seen = []
    for name in ("audio", "video"):
        model.teacher[name].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    out = model.compute_losses(batch)
    assert torch.equal(seen[0], local.audio) and torch.equal(seen[1], local.video)
    assert torch.isfinite(out["loss"])
    # the device steps XKD keeps for the loader's views: blur and the audio's resize crop
    model = _model(local_views=True, local_blur_p=1.0, local_audio_resize=True)
    local.video = torch.randn(4, 3, 2, 48, 48)  # XKD's kernel: 48 // 20 * 2 + 1 = 5 taps
    got_a, got_v = model.local_views(batch.audio, batch.video, local)
    assert got_a.shape == local.audio.shape and got_v.shape == local.video.shape
    assert not torch.allclose(got_a, local.audio) and got_v.std() < local.video.std()


def test_batches_without_local_views_fall_back_to_the_device_cut(batch, caplog):
    model = _model(local_views=True)
    assert batch.local is None
    with caplog.at_level("INFO"):
        a, v = model.local_views(batch.audio, batch.video, batch.local)
        model.local_views(batch.audio, batch.video, None)
    assert a.shape == (4, 1, 16, 32) and v.shape == (4, 3, 2, 16, 16)
    assert caplog.text.count("local views cut from the global view") == 1  # said once


def test_attention_pooling_of_the_teacher(batch):
    model = _model(teacher_pooling="attention", depth=2).eval()
    enc = model.teacher["video"]
    tokens, weights = tokens_and_attention(enc, batch.video)
    want = model.teacher["video_head"](attention_pool(tokens, weights))
    got = model._teacher_logits(batch.video, "video")
    assert torch.allclose(got, want, atol=1e-6)
    plain = model.teacher["video_head"](enc(batch.video))
    assert not torch.allclose(got, plain, atol=1e-4)  # the weighting changes the targets
    assert torch.isfinite(model.compute_losses(batch)["loss"])


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(local_temporal_ratio=0.5), "local_temporal_ratio"),
        (dict(local_spatial_ratio=0), "local_spatial_ratio"),
        (dict(local_crop_scale=[0.5, 0.2]), "local_crop_scale"),
        (dict(local_crop_scale=[0.0, 0.4]), "local_crop_scale"),
        (dict(local_crop_scale=[0.1]), "local_crop_scale"),
        (dict(local_grey_p=1.5), "local_grey_p"),
        (dict(local_blur_p=-0.1), "local_blur_p"),
        (dict(teacher_pooling="cls"), "teacher_pooling"),
        (dict(local_jitter=-0.1), "local_jitter"),
        (dict(local_jitter_p=1.5), "local_jitter_p"),
        (dict(local_hue=0.7), "local_hue"),
        (dict(local_gain_db=-1), "local_gain_db"),
        (dict(local_source="gpu"), "local_source must be one of"),
    ],
)
def test_bad_local_view_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        _model(**bad)


def test_xkd_recipes_use_local_views_and_attention_pooling():
    import yaml

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for name in ("xkd", "xkd_shared"):
        args = yaml.safe_load((recipes / f"{name}.yaml").read_text())["model"]["init_args"]
        assert args["local_views"] is True and args["teacher_pooling"] == "attention", name
        assert args["local_temporal_ratio"] == 4 and args["local_crop_scale"] == [0.08, 0.4]
        assert args["head_norm"] is True  # XKD's projector norm3
        assert args["local_audio_resize"] is True  # XKD's local audio randcrop
        assert args["local_source"] == "loader"  # own crop of the frame, colour and volume
        assert (args["local_jitter"], args["local_jitter_p"], args["local_hue"]) == (0.4, 1, 0.2)
        assert (args["decoder_dim"], args["decoder_depth"], args["decoder_heads"]) == (384, 4, 12)
        demo = yaml.safe_load((recipes / "demo" / f"{name}.yaml").read_text())["model"]
        assert demo["init_args"]["decoder_dim"] is None  # the demo's decoders follow tiny


def test_head_norm_standardises_each_clips_logits():
    torch.manual_seed(0)
    x = torch.randn(5, 32)
    plain = DINOHead(32, 64, 16, 128)
    normed = DINOHead(32, 64, 16, 128, hidden_norm=True, out_norm=True)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.modules())
    hidden = [m for m in normed.mlp if isinstance(m, torch.nn.LayerNorm)]
    assert len(hidden) == 2 and all(m.normalized_shape == (64,) for m in hidden)
    out = normed(x)
    assert torch.allclose(out.mean(dim=1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out.std(dim=1, unbiased=False), torch.ones(5), atol=1e-3)
    assert plain(x).abs().max() <= 1.0 + 1e-6  # plain: cosines
    normed.out_norm = torch.nn.Identity()  # without the output norm: cosines again
    assert normed(x).abs().max() <= 1.0 + 1e-6
    model = _model(head_norm=True)
    assert isinstance(model.audio_head.out_norm, torch.nn.LayerNorm)
    assert isinstance(model.teacher["video_head"].out_norm, torch.nn.LayerNorm)
    assert not list(model.audio_head.out_norm.parameters())  # no affine: nothing to train


class _Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 4
        self.batches = [make_batch(seed=i) for i in range(4)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)


def _trainer(tmp_path, steps: int) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_steps=steps,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip


@pytest.mark.slow
def test_checkpoint_resumes_teachers_and_centres(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path, 2)
    trainer.fit(model, datamodule=_Data())
    assert model.ema_momentum == pytest.approx(0.9985)  # EMA after step 2 of 2 uses step 1
    assert model.center_audio.abs().sum() > 0
    ckpt = tmp_path / "xkd.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in saved) and "center_video" in saved
    fresh = _model(base_lr=1.0)  # different init args do not matter for the state
    torch.manual_seed(99)
    for p in fresh.parameters():
        p.data.normal_()
    _trainer(tmp_path, 2).fit(fresh, datamodule=_Data(), ckpt_path=str(ckpt))  # no new step
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_local_views_take_the_global_position_table_resized():
    """XKD's interpolate_pos_encoding: a local view's tokens (8 of 32 frames at 96 of 112 px,
    1 s of 4 s of audio) get the global grid's table resized to theirs, in the students and
    the teachers; the global view keeps its own. Other objectives keep the prefix positions."""
    import torch.nn.functional as F

    from avssl.models.pos_embed import sincos_pos_embed
    from avssl.objectives.mavil import MAViL

    model = _model(tubelet_size=4, num_frames=32, img_size=112, audio_frames=400,
                   num_mel_bins=128)  # fmt: skip
    glob, local = (8, 7, 7), (2, 6, 6)
    table = sincos_pos_embed(glob, 192)[0].double().T.reshape(1, 192, *glob)  # [1, D, 8, 7, 7]
    want = F.interpolate(table, size=local, mode="trilinear", align_corners=False)
    want = want.reshape(192, -1).T[None].float()  # [1, 72, D]
    for enc in (model.video_encoder, model.teacher["video"]):
        torch.testing.assert_close(enc.pos_embed_for(local), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(enc.pos_embed_for(glob), sincos_pos_embed(glob, 192))
    a_table = sincos_pos_embed((25, 8), 192)[0].double().T.reshape(1, 192, 25, 8)
    a_want = F.interpolate(a_table, size=(6, 8), mode="bicubic", align_corners=False)
    a_want = a_want.reshape(192, -1).T[None].float()
    for enc in (model.audio_encoder, model.teacher["audio"]):
        torch.testing.assert_close(enc.pos_embed_for((6, 8)), a_want, rtol=0, atol=1e-6)
    assert model.export_encoders()["video"].config()["pos_for_smaller_grid"] == "interpolate"
    prefix = _model(tubelet_size=4, num_frames=32, img_size=112, pos_for_smaller_grid="prefix")
    first = sincos_pos_embed(glob, 192)[0].view(*glob, 192)[:2, :6, :6].reshape(1, -1, 192)
    torch.testing.assert_close(prefix.video_encoder.pos_embed_for(local), first)
    mavil = MAViL(size="tiny", depth=1, decoder_depth=1, fusion_depth=1, tubelet_size=4,
                  num_frames=32, img_size=112)  # fmt: skip
    torch.testing.assert_close(mavil.video_encoder.pos_embed_for(local), first)


@pytest.mark.parametrize("shared", [False, True])
def test_per_tensor_clipping_leaves_the_decoders_alone(batch, shared):
    """``clip_grad_per_param`` clips the students' encoders and heads (XKD_Net.clip_gradients),
    not the decoders: their gradients stay as the backward pass left them."""
    model = _model(clip_grad_per_param=0.3, shared_backbone=shared).train()
    (model.compute_losses(batch)["loss"] * 100.0).backward()  # gradients large enough to clip
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    decoders = [n for n in before if n.startswith(("audio_decoder.", "video_decoder."))]
    assert any(float(before[n].norm()) > 0.3 for n in decoders)
    students = {id(p) for p in model.student().parameters()}
    assert not any(id(p) in students for n, p in model.named_parameters() if n in decoders)
    model._micro_batches = model._finite_micro_batches = 1
    model.on_before_optimizer_step(torch.optim.SGD(model.parameters(), lr=0.0))
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if name in decoders:
            assert torch.equal(p.grad, before[name]), name
        else:
            assert float(p.grad.norm()) <= 0.3 * (1 + 1e-4), name
            if float(before[name].norm()) <= 0.3:
                assert torch.equal(p.grad, before[name]), name
    assert any(float(before[n].norm()) > 0.3 for n, p in model.named_parameters()
               if id(p) in students and n in before)  # fmt: skip


def test_default_clip_params_are_all_parameters(tiny_mavil):
    model = tiny_mavil()
    assert [id(p) for p in model.clip_params()] == [id(p) for p in model.parameters()]
