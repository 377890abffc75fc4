"""bench/xkd_teacher.py: the teacher-target statistics of an XKD checkpoint, and its bad inputs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from avssl.objectives.xkd import XKD
from tests.test_recipes import build_tiny_shards

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "xkd_teacher.py"
PREP = {
    "num_frames": 4, "frame_stride": None, "target_fps": None, "crop_size": 64,
    "video_mean": [0.485, 0.456, 0.406], "video_std": [0.229, 0.224, 0.225],
    "fbank": {
        "sample_rate": 16000, "num_mel_bins": 128, "frame_shift_ms": 10.0,
        "frame_length_ms": 25.0, "target_frames": 128, "mean": -4.27, "std": 4.57,
        "norm": "audiomae",
    },
}  # fmt: skip
HP = dict(size="tiny", depth=1, num_frames=4, img_size=64, audio_frames=128, decoder_depth=1,
          head_hidden_dim=32, head_bottleneck_dim=16, head_out_dim=64)  # fmt: skip


def _script():
    spec = importlib.util.spec_from_file_location("xkd_teacher", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(path: Path, model: torch.nn.Module, objective: str) -> Path:
    torch.save(
        {
            "hyper_parameters": dict(model.hparams),
            "state_dict": model.state_dict(),
            "global_step": 7,
            "avssl": {"objective": objective, "data": PREP},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.getbasetemp())


def test_prints_entropies_of_checkpoint_and_random_init(shards, tmp_path, capsys):
    torch.manual_seed(1)
    model = XKD(**HP)
    ckpt = _save(tmp_path / "xkd.ckpt", model, "avssl.objectives.xkd.XKD")
    assert _script().main(["--ckpt", str(ckpt), "--data", str(shards), "--clips", "2"]) == 0
    out = capsys.readouterr().out
    assert f"ln 64 = {math.log(64):.3f} nats" in out and "(step 7), 2 clips of test1" in out
    lines = [line for line in out.splitlines() if "entropy" in line and ":" in line]
    assert [line.split(":")[0].split("] ")[1].split() for line in lines] == [
        ["checkpoint", "audio"], ["checkpoint", "video"],
        ["random", "init", "audio"], ["random", "init", "video"],
    ]  # fmt: skip
    values = [float(line.split("entropy ")[1].split(",")[0]) for line in lines]
    assert all(0.0 < v <= math.log(64) + 1e-3 for v in values)


def test_teacher_stats_against_a_hand_computed_distribution():
    class Fake:
        cfg = {"teacher_temp_audio": 0.5}
        center_audio = torch.zeros(1, 2)

        def _teacher_logits(self, x, modality):
            return torch.tensor([[0.0, math.log(3.0) * 0.5], [0.0, math.log(3.0) * 0.5]])

    class Batch:
        audio = torch.zeros(2, 1)

    stats = _script().teacher_stats(Fake(), Batch(), "audio")
    p = torch.tensor([0.25, 0.75])  # softmax([0, ln 3])
    assert stats["entropy"] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert stats["max_prob"] == pytest.approx(0.75, abs=1e-6)
    assert stats["spread"] == pytest.approx(0.0, abs=1e-7)


def test_bad_inputs_exit_1_with_a_message(shards, tmp_path, capsys):
    script = _script()
    with pytest.raises(SystemExit) as err:
        script.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--data", str(shards)])
    assert err.value.code == 1 and "no such file" in capsys.readouterr().err
    other = _save(tmp_path / "other.ckpt", XKD(**HP), "avssl.objectives.mavil.MAViL")
    assert script.main(["--ckpt", str(other), "--data", str(shards)]) == 1
    assert "is not an XKD checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        script.main(["--ckpt", str(other), "--data", str(tmp_path)])
    assert err.value.code == 1 and "no prepared shards" in capsys.readouterr().err
