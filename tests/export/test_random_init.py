"""``avssl export --random-init``: the checkpoint's architecture without its trained weights."""

from __future__ import annotations

import json

import torch

import avssl
from avssl import export
from tests.export.export_fakes import AUDIO_FRAMES, MEL_BINS


def test_random_init_bundle_has_same_architecture_other_weights(save_fake, tmp_path, capsys):
    _, ckpt = save_fake("TwoTower", seed=1, depth=2)
    trained, fresh = tmp_path / "trained", tmp_path / "fresh"
    assert export.main(["--ckpt", str(ckpt), "--out", str(trained)]) == 0
    assert export.main(["--ckpt", str(ckpt), "--out", str(fresh), "--random-init"]) == 0
    cfg_t = json.loads((trained / "config.json").read_text())
    cfg_f = json.loads((fresh / "config.json").read_text())
    assert cfg_f["audio"] == cfg_t["audio"] and cfg_f["video"] == cfg_t["video"]
    assert cfg_f["preprocessing"] == cfg_t["preprocessing"]
    assert cfg_f["provenance"]["random_init"] is True
    assert cfg_f["provenance"]["encoder"]["which"] == "random initialisation"
    assert "random_init" not in cfg_t["provenance"]

    a, b = avssl.load_encoder(trained), avssl.load_encoder(fresh)
    x = torch.randn(2, 1, AUDIO_FRAMES, MEL_BINS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (a.audio(x) - b.audio(x)).abs().max() > 1e-3
    # seeded: a second random-init export is identical
    again = tmp_path / "again"
    assert export.main(["--ckpt", str(ckpt), "--out", str(again), "--random-init"]) == 0
    c = avssl.load_encoder(again)
    with torch.no_grad():
        assert torch.equal(b.audio(x), c.audio(x))
