"""bench/oracle_video.py: VATT with a class-label video side, exported and probed as the demo."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_recipes import build_tiny_shards

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "oracle_video.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.getbasetemp())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("oracle_video", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("video", ["oracle", "vit"])
def test_trains_exports_and_probes_both(shards, tmp_path, video) -> None:
    out = tmp_path / "oracle"
    proc = _run("--data", str(shards), "--video", video, "--steps", "3", "--out", str(out),
                "--config", "recipes/debug.yaml")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = re.search(rf"vatt, video {video}: 3 steps of 4 .* first 10 steps ([\d.]+), of the last "
                  r"10 ([\d.]+) \(ln 4 = 1.386\)", proc.stdout)  # fmt: skip
    assert m, proc.stdout[-3000:]
    assert all(0.0 < float(v) < 10.0 for v in m.groups())
    ckpt = torch.load(out / f"{video}.ckpt", weights_only=True)
    assert ckpt["avssl"]["objective"] == "avssl.objectives.contrastive.AVContrastive"
    assert ckpt["hyper_parameters"]["depth"] == 2  # recipes/debug.yaml came last
    random = json.loads((out / "eval-random" / "results.json").read_text())
    trained = json.loads((out / f"eval-{video}" / "results.json").read_text())
    assert random["summary"].keys() == trained["summary"].keys() == {"audio", "video", "joint"}
    if video == "oracle":  # the video encoder is never trained: the two bundles share it
        assert trained["summary"]["video"] == random["summary"]["video"]
    summary = (out / f"summary-{video}.md").read_text()
    assert f"vatt (video {video})-pretrained top-1" in summary and "| audio |" in summary


def test_the_oracle_loss_is_the_nce_of_audio_against_class_embeddings() -> None:
    from avssl.losses.contrastive import info_nce
    from avssl.objectives.contrastive import AVContrastive

    torch.manual_seed(0)
    model = AVContrastive(size="tiny", depth=1, audio_frames=32, num_frames=2, img_size=32,
                          proj_dim=8, proj_hidden_dim=0, drop_token=0.0)  # fmt: skip
    emb = torch.nn.Embedding(3, model.video_encoder.embed_dim)

    class Batch:
        audio = torch.randn(4, 1, 32, 128)
        video = torch.zeros(4, 3, 2, 0, 0)
        audio_mask = torch.ones(4, dtype=torch.bool)
        video_mask = torch.zeros(4, dtype=torch.bool)
        label = torch.tensor([0, 2, 1, 2])

    batch = Batch()
    got = _script().oracle_losses(model.train(), emb, batch)
    za = model.audio_proj(model.audio_encoder(batch.audio))
    zv = model.video_proj(emb(batch.label))
    assert got.item() == pytest.approx(info_nce(za, zv, temperature=0.07).item(), rel=1e-5)


def test_seen_label_is_wrong_for_a_fixed_fraction_of_clips() -> None:
    script = _script()
    keys = [f"synthetic/c{i}" for i in range(2000)]
    labels = [i % 10 for i in range(2000)]
    seen = [script.seen_label(k, y, 0.3, 10) for k, y in zip(keys, labels)]
    wrong = [s != y for s, y in zip(seen, labels)]
    assert 0.27 < sum(wrong) / len(wrong) < 0.33  # never the true class when wrong
    assert seen == [script.seen_label(k, y, 0.3, 10) for k, y in zip(keys, labels)]  # every epoch
    assert all(0 <= s < 10 for s in seen)
    assert [script.seen_label(k, y, 0.0, 10) for k, y in zip(keys, labels)] == labels
    assert all(s != y for s, y in zip((script.seen_label(k, y, 1.0, 10) for k, y in
                                       zip(keys, labels)), labels))  # fmt: skip
    assert script.seen_label("synthetic/x", -1, 1.0, 10) == -1  # unlabelled stays unlabelled


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/shards"], "no prepared shards"),
        (["--recipe", "nope"], "no recipes/nope.yaml"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--config", "/no/such.yaml"], "no such file"),
        (["--wrong", "1.5"], "--wrong must be in [0, 1]"),
        (["--wrong", "0.5", "--video", "vit"], "with --video oracle"),
    ],
)
def test_bad_inputs_exit_1_with_one_line(shards, args, message) -> None:
    if "--data" not in args:
        args = ["--data", str(shards), *args]
    proc = _run(*args)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_refuses_a_recipe_that_is_not_batch_nce(shards, tmp_path) -> None:
    proc = _run("--data", str(shards), "--recipe", "avid", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "avid is not a batch-NCE AVContrastive recipe" in proc.stderr


def test_refuses_multilabel_data_for_the_oracle(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"multilabel": True, "classes": ["a"]}))
    proc = _run("--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "is multi-label; the oracle needs one class per clip" in proc.stderr
