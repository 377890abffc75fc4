"""Damaged shard tars (avssl.data.shards): a tar cut in the middle of a member, at a member
boundary or with an unreadable header gives only the complete samples before the damage; the
sample the damage cut is read as a corrupt sample (skipped and counted by the loader), and
the damage is logged, so nothing is lost silently."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import pytest

from avssl.data.datamodule import AVDataModule, make_eval_loader
from avssl.data.shards import ShardError, ShardReader, index_tar, scan_tar, shard_keys
from tests.data.conftest import samples_of

KEYS = ["set/a/s0", "set/b/s1", "set/b/s2"]
SIZES = {"mp4": 1500, "flac": 700, "json": 90}  # not multiples of the 512-byte block


def make_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """A shard of three samples (mp4, flac, json members); returns their members."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, key in enumerate(KEYS):
            samples[key] = {}
            for ext, size in SIZES.items():
                data = bytes((i * 31 + j * 7 + len(ext)) % 251 for j in range(size + i))
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                samples[key][ext] = data
    return samples


def members(path: Path) -> list[tuple[str, int, int]]:
    """(key, data start, data end) of every member, in tar order."""
    with tarfile.open(path) as tar:
        return [(m.name.split(".")[0], m.offset_data, m.offset_data + m.size) for m in tar]


def cut(src: Path, dst: Path, at: int) -> Path:
    dst.write_bytes(src.read_bytes()[:at])
    return dst


@pytest.fixture
def shard(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "shard-000000.tar"
    return path, make_tar(path)


def test_a_cut_in_a_member_drops_its_sample_and_reads_it_as_corrupt(shard, tmp_path, caplog):
    path, want = shard
    flac = [(k, a, b) for k, a, b in members(path)][4]  # s1's flac
    assert flac[0] == KEYS[1]
    broken = cut(path, tmp_path / "cut.tar", (flac[1] + flac[2]) // 2)
    with caplog.at_level(logging.WARNING, logger="avssl.data.shards"):
        index = index_tar(str(broken))
    assert [k for k, _ in index] == KEYS[:1]  # the cut sample is not in the index
    assert any("damaged" in r.getMessage() and KEYS[1] in r.getMessage() for r in caplog.records)
    # no sidecar: the keys come from the tar, with the cut sample, which reads as corrupt
    assert shard_keys(str(broken)) == KEYS[:2]
    reader = ShardReader()
    assert reader.read(str(broken), KEYS[0]) == {"__key__": KEYS[0], **want[KEYS[0]]}
    with pytest.raises(ShardError, match="cut by a damaged shard"):
        reader.read(str(broken), KEYS[1])
    with pytest.raises(ShardError, match="not found in a damaged shard"):
        reader.read(str(broken), KEYS[2])  # lost after the damage (a sidecar would list it)
    reader.close()


def test_every_cut_gives_only_complete_samples(shard, tmp_path):
    """Cut at every member boundary (and a byte either side) and inside every member: the
    index holds exactly the original members of complete samples; every sample whose data
    lies before the cut is either indexed or named as the damaged one; an intact end (a cut
    among the zero blocks after the last member) loses nothing."""
    path, want = shard
    spans = members(path)
    sample_end = {k: max(b for kk, _, b in spans if kk == k) for k in KEYS}
    points = {b + d for _, a, b in spans for d in (-1, 0, 1)} | {(a + b) // 2 for _, a, b in spans}
    points |= {a - 512 for _, a, _ in spans[1:]}  # at a header
    last_block = (spans[-1][2] + 511) // 512 * 512  # where the end-of-archive block starts
    reader = ShardReader()
    for at in sorted(p for p in points if 0 < p < last_block):
        broken = cut(path, tmp_path / f"cut{at}.tar", at)
        found = scan_tar(str(broken))
        assert found.problem is not None, at
        got = [k for k, _ in found.samples] + ([found.damaged] if found.damaged else [])
        assert got == KEYS[: len(got)], at
        before = [k for k in KEYS if sample_end[k] <= at]
        assert set(before) <= set(got) and len(got) <= len(before) + 1, at
        for key, _ in found.samples:
            assert reader.read(str(broken), key) == {"__key__": key, **want[key]}, at
    for at in (last_block + 1, last_block + 512, last_block + 1024, path.stat().st_size):
        found = scan_tar(str(cut(path, tmp_path / f"end{at}.tar", at)))
        assert found.problem is None and found.damaged is None, at
        assert [k for k, _ in found.samples] == KEYS, at
    reader.close()


def test_an_unreadable_header_ends_the_index_with_the_sample_before_it_damaged(shard, tmp_path):
    path, want = shard
    data = bytearray(path.read_bytes())
    header = next(a for k, a, _ in members(path) if k == KEYS[2]) - 512
    data[header : header + 512] = b"\x07" * 512  # s2's first header is garbage
    broken = tmp_path / "garbled.tar"
    broken.write_bytes(bytes(data))
    found = scan_tar(str(broken))
    assert found.problem is not None and found.damaged == KEYS[1]  # it may lack members
    assert [k for k, _ in found.samples] == KEYS[:1]


def test_intact_shards_are_indexed_whole(synth):
    for tar in sorted((synth / "shards").glob("*.tar")):
        found = scan_tar(str(tar))
        assert found.problem is None and found.damaged is None
        assert [k for k, _ in found.samples] == json.loads(tar.with_suffix(".json").read_text())[
            "keys"
        ]


@pytest.mark.parametrize("sidecar", [False, True])
def test_the_loader_skips_and_counts_the_samples_a_cut_shard_lost(synth, tmp_path, caplog, sidecar):
    """A prepared set whose second shard is cut in the middle of its third sample's mp4:
    evaluation reads every other sample and counts the cut one (and, where the sidecar lists
    them, the ones after the cut) as skipped; a warning names the damage."""
    out = tmp_path / "prepared"
    shutil.copytree(synth, out, ignore=shutil.ignore_patterns("raw"))
    tar = out / "shards" / "shard-000001.tar"
    keys = json.loads(tar.with_suffix(".json").read_text())["keys"]
    spans = members(tar)
    mp4 = [(k, a, b) for k, a, b in spans if k == keys[2]][0]
    cut(tar, tar, (mp4[1] + mp4[2]) // 2)
    if not sidecar:
        tar.with_suffix(".json").unlink()
    lost = keys[2:] if sidecar else keys[2:3]
    args = dict(num_frames=2, frame_stride=2, crop_size=16, train_split=None)
    prep = AVDataModule(str(out), **args).preprocessing()
    with caplog.at_level(logging.WARNING):
        batches = list(make_eval_loader(str(out), None, prep, batch_size=3))
    assert [k for b in batches for k in b.extra["skipped_keys"]] == lost
    read = [k for b in batches for k in b.key]
    assert read == [k for k in (s["__key__"] for s in samples_of(synth)) if k not in keys[2:]]
    assert any("damaged" in r.getMessage() and str(tar) in r.getMessage() for r in caplog.records)
