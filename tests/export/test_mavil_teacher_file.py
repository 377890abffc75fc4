"""Export / ``load_encoder`` of a MAViL stage-2 checkpoint read its ``teacher_ckpt`` file again
(rebuilding the objective loaded the teacher from it), though the checkpoint holds
``teacher.*`` itself and only the student is exported: a teacher file since replaced or damaged
failed the export. Rebuilding from a checkpoint now reads no teacher file; training still does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avssl import export
from avssl.checkpoint_read import read_checkpoint
from avssl.export_ckpt import rebuild_objective
from tests.export.export_fakes import AUDIO_FRAMES, CROP, DATA, MEL_BINS, NUM_FRAMES

TINY = dict(size="tiny", depth=1, decoder_depth=1, fusion_depth=1, proj_dim=16,
            audio_frames=AUDIO_FRAMES, num_mel_bins=MEL_BINS, num_frames=NUM_FRAMES,
            img_size=CROP, mask_ratio_audio=0.75, mask_ratio_video=0.75)  # fmt: skip


def _mavil(seed: int, **overrides):
    from avssl.objectives.mavil import MAViL

    torch.manual_seed(seed)
    return MAViL(**{**TINY, **overrides})


def _save(obj, path: Path) -> Path:
    ckpt = {"state_dict": obj.state_dict(), "hyper_parameters": dict(obj.hparams),
            "global_step": 7, "epoch": 0}  # fmt: skip
    obj.on_save_checkpoint(ckpt)
    ckpt["avssl"]["data"] = DATA
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """(stage-2 objective, its checkpoint, the teacher file it was trained with)."""
    folder = tmp_path_factory.mktemp("mavil_teacher")
    teacher = _save(_mavil(1), folder / "stage1.ckpt")
    obj = _mavil(2, stage=2, teacher_ckpt=str(teacher)).eval()
    assert int(obj.teacher_loaded) == 1
    return obj, _save(obj, folder / "stage2.ckpt"), teacher


def _replace(teacher: Path, how: str, fake_objectives) -> None:
    from tests.export.export_fakes import fake_checkpoint

    if how == "another objective's checkpoint":
        torch.save(fake_checkpoint(fake_objectives.AudioOnly(), "AudioOnly"), teacher)
    elif how == "a stage-1 checkpoint of another architecture":
        _save(_mavil(3, fusion_depth=2), teacher)
    elif how == "a truncated file":
        teacher.write_bytes(teacher.read_bytes()[:5000])
    else:
        teacher.unlink(missing_ok=True)


HOWS = [
    "another objective's checkpoint",
    "a stage-1 checkpoint of another architecture",
    "a truncated file",
    "no file",
]


@pytest.mark.parametrize("how", HOWS)
def test_stage2_export_reads_no_teacher_file(stage2, fake_objectives, tmp_path, how):
    obj, ckpt, teacher = stage2
    original = teacher.read_bytes() if teacher.is_file() else None
    try:
        _replace(teacher, how, fake_objectives)
        export.export_checkpoint(ckpt, tmp_path / "bundle")
        bundle = export.load_encoder(tmp_path / "bundle")
        also = export.load_encoder(ckpt)  # a checkpoint loads directly too (eval of a .ckpt)
        for modality in ("audio", "video"):
            want = getattr(obj, f"{modality}_encoder").state_dict()
            for b in (bundle, also):
                got = getattr(b, modality).state_dict()
                assert all(torch.equal(got[k], want[k]) for k in want)
        assert "stage 2" in bundle.provenance["encoder"]["note"]
        # the teacher, built without its file, has the checkpoint's architecture and weights
        rebuilt, missing = rebuild_objective(read_checkpoint(ckpt), ckpt)
        assert not missing and int(rebuilt.teacher_loaded) == 1
        theirs = obj.teacher.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in rebuilt.teacher.state_dict().items())
    finally:
        if original is not None:
            teacher.write_bytes(original)


def test_training_still_loads_the_teacher_file(stage2, fake_objectives, tmp_path):
    """Outside a rebuild from a checkpoint (a run starting or resuming stage 2) the objective
    reads its teacher file as before: loaded, and a wrong file refused."""
    from avssl.objectives.mavil import MAViL

    obj, _, teacher = stage2
    again = _mavil(5, stage=2, teacher_ckpt=str(teacher))
    assert int(again.teacher_loaded) == 1
    assert all(torch.equal(v, obj.teacher.state_dict()[k])
               for k, v in again.teacher.state_dict().items())  # fmt: skip
    other = tmp_path / "other.ckpt"
    _replace(other, "another objective's checkpoint", fake_objectives)
    with pytest.raises(ValueError, match="not of MAViL stage 1"):
        MAViL(**{**TINY, "stage": 2, "teacher_ckpt": str(other)})
