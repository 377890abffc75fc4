"""Manifests, splits, stats and shard sidecars are written as UTF-8: avssl.data.shards reads
them as UTF-8 whatever the locale (here a plain C/ASCII locale, without Python's UTF-8 mode
or C-locale coercion)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

KEY = "ucf101/Café/v_Café_g01_c01"
CHILD = """
import json, locale, sys
from avssl.data.shards import resolve, shard_keys
src = resolve(sys.argv[1])
print(json.dumps({
    "encoding": locale.getpreferredencoding(False),
    "classes": src.classes,
    "split": src.split_keys("train"),
    "stats": src.stats(),
    "keys": shard_keys(src.shards[0]),
    "via_tar": resolve(src.shards[0]).classes,
}))
"""


def test_metadata_is_read_as_utf8_in_an_ascii_locale(tmp_path: Path):
    out = tmp_path / "prepared"
    (out / "shards").mkdir(parents=True)
    (out / "splits").mkdir()
    with tarfile.open(out / "shards" / "shard-000000.tar", "w") as tar:
        info = tarfile.TarInfo("sample0.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    manifest = {"dataset": "ucf101", "classes": ["Café", "Naïve"], "shards": []}
    manifest["shards"] = [{"file": "shards/shard-000000.tar", "num_samples": 1}]
    for path, text in {
        out / "manifest.json": json.dumps(manifest, ensure_ascii=False),
        out / "splits" / "train.txt": KEY + "\n",
        out / "stats.json": json.dumps({"mean": -4.0, "std": 4.0, "note": "µ"}, ensure_ascii=False),
        out / "shards" / "shard-000000.json": json.dumps({"keys": [KEY]}, ensure_ascii=False),
    }.items():
        path.write_bytes(text.encode("utf-8"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIO"))}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(out)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert "utf" not in got["encoding"].lower().replace("-", "")  # the locale is not UTF-8
    assert got["classes"] == got["via_tar"] == ["Café", "Naïve"]
    assert got["split"] == got["keys"] == [KEY]
    assert got["stats"]["note"] == "µ"
