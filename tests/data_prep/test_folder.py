"""The ``folder`` adapter: its stratified train/test split, and reruns after the tree changed.

A rerun may reuse a finished shard only when every sample it holds would be written the same
way now: same key, label, label name and extra fields, not only the same keys (a ROOT moved
elsewhere keeps its shards).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prep_helpers import place, read_shards, sample_json

from avssl.cli import UserError
from data_prep.__main__ import main
from data_prep.common import Context
from data_prep.folder import collect, stratified_split


def _argv(root: Path, out: Path, layout: str) -> list[str]:
    return ["--dataset", "folder", "--root", str(root), "--out", str(out), "--shard-size", "3",
            "--layout", layout, "--no-progress"]  # fmt: skip


def _tree(root: Path, clip: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        for i in range(n):
            place(clip, root / cls / f"{cls}{i}.mp4")
    return root


def _labels_match_manifest(out: Path) -> dict[str, int]:
    """Asserts that every stored label is the manifest's id of the clip's folder."""
    classes = json.loads((out / "manifest.json").read_text())["classes"]
    samples = read_shards(out)
    labels = {}
    for key in samples:
        meta = sample_json(samples, key)
        folder = key.split("/")[1]
        assert (meta["label"], meta["label_name"]) == (classes.index(folder), folder), key
        labels[key] = meta["label"]
    return labels


def test_rerun_reconverts_shards_whose_labels_changed(tmp_path, media, capsys):
    """A class folder that sorts first shifts every label id; the shards keep their keys."""
    root = _tree(tmp_path / "root", media["mono"], {"birds": 3, "cars": 3, "dogs": 3})
    out = tmp_path / "out"
    assert main(_argv(root, out, "classes")) == 0
    before = _labels_match_manifest(out)
    assert before["folder/cars/cars0"] == 1
    place(media["mono"], root / "aaa" / "a0.mp4")
    (root / "birds" / "birds2.mp4").unlink()  # shards 1 and 2 keep their keys: cars, dogs
    capsys.readouterr()
    assert main(_argv(root, out, "classes")) == 0
    assert "skipping" not in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["classes"] == [
        "aaa", "birds", "cars", "dogs"
    ]  # fmt: skip
    after = _labels_match_manifest(out)
    assert after["folder/cars/cars0"] == 2 and after["folder/dogs/dogs2"] == 3
    assert main(_argv(root, out, "classes")) == 0  # nothing changed: every shard reused
    assert "skipping 3 of 3 shards" in capsys.readouterr().err


def test_rerun_from_a_moved_root_keeps_the_shards(tmp_path, media, capsys):
    """The same clips under another ROOT: same keys and labels, nothing converted again."""
    root = _tree(tmp_path / "root", media["mono"], {"birds": 2, "cars": 2})
    out = tmp_path / "out"
    assert main(_argv(root, out, "classes")) == 0
    moved = root.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(_argv(moved, out, "classes")) == 0
    assert "skipping 2 of 2 shards" in capsys.readouterr().err  # shard size 3
    assert sorted(_labels_match_manifest(out).values()) == [0, 0, 1, 1]


def test_rerun_with_another_layout_relabels(tmp_path, media, capsys):
    root = _tree(tmp_path / "root", media["mono"], {"birds": 2, "cars": 2})
    out = tmp_path / "out"
    assert main(_argv(root, out, "flat")) == 0
    samples = read_shards(out)
    assert {sample_json(samples, k)["label"] for k in samples} == {-1}
    capsys.readouterr()
    assert main(_argv(root, out, "classes")) == 0
    assert "skipping" not in capsys.readouterr().err
    labels = _labels_match_manifest(out)
    assert sorted(labels.values()) == [0, 0, 1, 1]


def test_sidecar_without_plan_digest_is_unfinished(tmp_path, media, capsys):
    """A sidecar of an older version (no ``planned_digest``) does not mark a finished shard."""
    root = _tree(tmp_path / "root", media["mono"], {"birds": 2, "cars": 2})
    out = tmp_path / "out"
    assert main(_argv(root, out, "classes")) == 0
    side_path = out / "shards" / "shard-000000.json"
    side = json.loads(side_path.read_text())
    assert len(side["planned_digest"]) == 64
    del side["planned_digest"]
    side_path.write_text(json.dumps(side))
    capsys.readouterr()
    assert main(_argv(root, out, "classes")) == 0
    assert "skipping 1 of 2 shards" in capsys.readouterr().err
    assert "planned_digest" in json.loads(side_path.read_text())


def test_rerun_retries_a_failed_clip_only_when_its_file_changed(tmp_path, media, capsys):
    """A clip repaired in place is converted by the next run; one still broken is not."""
    root = _tree(tmp_path / "root", media["mono"], {"birds": 2})
    bad = place(media["truncated"], root / "birds" / "birds9.mp4")
    out = tmp_path / "out"
    argv = [*_argv(root, out, "classes"), "--max-failures", "1"]
    assert main(argv) == 0
    side = json.loads((out / "shards" / "shard-000000.json").read_text())
    state = [bad.stat().st_size, bad.stat().st_mtime_ns]
    assert side["failed_files"] == {"folder/birds/birds9": state}
    capsys.readouterr()
    assert main(argv) == 0  # a permanently broken file does not re-encode its shard
    captured = capsys.readouterr()
    assert "skipping 1 of 1 shards" in captured.err and "failed 1 " in captured.out
    place(media["long"], bad)  # a good copy put back
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "skipping" not in captured.err and "converted 3, failed 0 " in captured.out
    assert "converting again 1 finished shard(s)" in captured.err
    assert sample_json(read_shards(out), "folder/birds/birds9")["num_frames"] == 100
    assert json.loads((out / "shards" / "shard-000000.json").read_text())["failed_files"] == {}


@pytest.mark.parametrize("sidecar", ["file_was_missing", "older_version"])
def test_rerun_retries_failures_the_sidecar_cannot_vouch_for(tmp_path, media, capsys, sidecar):
    """A failed clip recorded as missing whose file exists now, or a sidecar without
    ``failed_files``: converted again once, then reused while the file stays the same."""
    root = _tree(tmp_path / "root", media["mono"], {"birds": 1})
    place(media["zero"], root / "birds" / "empty.mp4")
    out = tmp_path / "out"
    argv = [*_argv(root, out, "flat"), "--max-failures", "1"]
    assert main(argv) == 0
    side_path = out / "shards" / "shard-000000.json"
    side = json.loads(side_path.read_text())
    if sidecar == "file_was_missing":
        side["failed_files"]["folder/birds/empty"] = None
    else:
        del side["failed_files"]
    side_path.write_text(json.dumps(side))
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "converting again 1 finished shard(s)" in captured.err and "failed 1 " in captured.out
    mtime = (root / "birds" / "empty.mp4").stat().st_mtime_ns
    assert json.loads(side_path.read_text())["failed_files"] == {"folder/birds/empty": [0, mtime]}
    assert main(argv) == 0
    assert "skipping 1 of 1 shards" in capsys.readouterr().err


def _collect(root: Path, **options) -> dict[str, list[str]]:
    return collect(Context("folder", root, None, root.parent / "out", options=options)).splits


def test_classes_get_a_seeded_stratified_split(tmp_path, media):
    root = _tree(tmp_path / "root", media["mono"], {"a": 10, "b": 5, "c": 2, "d": 1})
    place(media["mono"], root / "loose.mp4")  # no class: only in 'all'
    splits = _collect(root, layout="classes")
    assert set(splits) == {"all", "train", "test"} and len(splits["all"]) == 19
    test = {c: [k for k in splits["test"] if k.split("/")[1] == c] for c in "abcd"}
    train = {c: [k for k in splits["train"] if k.split("/")[1] == c] for c in "abcd"}
    assert {c: len(v) for c, v in test.items()} == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert {c: len(v) for c, v in train.items()} == {"a": 8, "b": 4, "c": 1, "d": 1}
    assert "folder/loose" not in splits["train"] + splits["test"]
    assert _collect(root, layout="classes") == splits  # reproducible
    other = _collect(root, layout="classes", split_seed=1)
    assert other["test"] != splits["test"] and len(other["test"]) == len(splits["test"])
    half = _collect(root, layout="classes", test_fraction=0.5)
    assert len(half["test"]) == 5 + 3 + 1  # 0.5 n per class, halves rounded up: 5, 3, 1
    assert set(splits["test"]) <= set(half["test"])  # the first clips of the same hash order


def test_stratified_split_orders_by_seeded_hash():
    keys = {"x": [f"k{i}" for i in range(6)], "y": ["y0"]}
    train, test = stratified_split(keys, 0.5, 3)
    assert len(test) == 3 and "y0" in train and set(train) | set(test) == {*keys["x"], "y0"}
    assert train == [k for k in [*keys["x"], "y0"] if k in train]  # the given order
    assert stratified_split(keys, 0.5, 3) == (train, test)


def test_written_splits_and_manifest_note(tmp_path, media):
    root = _tree(tmp_path / "root", media["mono"], {"birds": 3, "cars": 2})
    out = tmp_path / "out"
    assert main(_argv(root, out, "classes")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"all": 5, "train": 3, "test": 2}
    assert any(
        "stratified by class, test fraction 0.2, split seed 0" in n for n in manifest["notes"]
    )
    train = (out / "splits" / "train.txt").read_text().split()
    test = (out / "splits" / "test.txt").read_text().split()
    assert sorted(train + test) == sorted((out / "splits" / "all.txt").read_text().split())
    assert {k.split("/")[1] for k in test} == {"birds", "cars"}


def test_flat_layout_writes_only_all(tmp_path, media):
    root = _tree(tmp_path / "root", media["mono"], {"birds": 2})
    assert set(_collect(root, layout="flat")) == {"all"}
    with pytest.raises(UserError, match="--test-fraction needs class folders"):
        _collect(root, layout="flat", test_fraction=0.3)
    with pytest.raises(UserError, match=r"--test-fraction must be within \(0, 1\), got 1.0"):
        _collect(root, layout="classes", test_fraction=1.0)
