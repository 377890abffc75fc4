"""make demo: recipe choice and reuse or rebuild of the synthetic shards (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avssl import demo
from avssl.data.synthetic import META_NAME, META_VERSION


def _fake_shards(root: Path, version: int | None) -> Path:
    shards = root / "shards" / "synthetic"
    (shards / "raw").mkdir(parents=True)
    (shards / "manifest.json").write_text("{}")
    if version is not None:
        (shards / "raw" / META_NAME).write_text(json.dumps({"version": version}))
    return shards


@pytest.mark.parametrize("version,rebuilt", [(META_VERSION, False), (None, False), (1, True)])
def test_prep_rebuilds_only_shards_of_an_older_generator(tmp_path, monkeypatch, version, rebuilt):
    shards = _fake_shards(tmp_path, version)
    monkeypatch.setattr(demo, "SHARDS", shards)
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(demo.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    demo._prep()
    if rebuilt:
        assert not shards.exists()  # the stale folder was removed before data_prep ran
        assert calls and calls[0][1:5] == ["-m", "data_prep", "--dataset", "synthetic"]
    else:
        assert (shards / "manifest.json").is_file() and calls == []


def test_demo_rejects_unknown_and_stage2_recipes():
    for bad in ("nope", "mavil_stage2"):
        with pytest.raises(SystemExit, match="unknown or unusable recipe"):
            demo.main(["--recipe", bad])
