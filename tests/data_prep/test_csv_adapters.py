"""ESC-50, VGGSound, AudioSet and Kinetics-Sounds adapters on fake trees with their traps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prep_helpers import place, read_shards, sample_json, write_text

from avssl.cli import UserError
from data_prep import prepare_dataset
from data_prep.audioset import collect as collect_audioset
from data_prep.common import Context
from data_prep.kinetics_sounds import CLASSES
from data_prep.kinetics_sounds import collect as collect_ks
from data_prep.vggsound import collect as collect_vgg

ESC_CSV = """filename,fold,target,category,esc10,src_file,take
1-100032-A-0.wav,1,0,dog,True,100032,A
1-100038-A-14.wav,1,1,chirping_birds,False,100038,A
2-100648-A-1.wav,2,1,chirping_birds,False,100648,A
5-9032-A-0.wav,5,0,dog,True,9032,A
"""


def test_esc50_audio_only(tmp_path, media):
    root = tmp_path / "ESC-50-master"
    for name in ("1-100032-A-0.wav", "1-100038-A-14.wav", "5-9032-A-0.wav"):
        place(media["wav"], root / "audio" / name)
    write_text(root / "meta" / "esc50.csv", ESC_CSV, crlf=True)
    out = tmp_path / "out"
    manifest = prepare_dataset("esc50", root, None, out, progress=False)
    assert manifest["classes"] == ["dog", "chirping_birds"]
    assert manifest["splits"] == {"fold1": 2, "fold2": 0, "fold3": 0, "fold4": 0, "fold5": 1}
    assert manifest["failures"][0]["key"] == "esc50/audio/2-100648-A-1"
    samples = read_shards(out)
    meta = sample_json(samples, "esc50/audio/5-9032-A-0")
    assert set(samples["esc50/audio/5-9032-A-0"]) == {"flac", "json"}
    assert meta["has_video"] is False and meta["has_audio"] is True
    assert (meta["label"], meta["fold"], meta["esc10"]) == (0, 5, True)
    assert meta["duration"] == pytest.approx(1.0, abs=0.01)


VGG_CSV = """---g-f_I2yQ,1,people marching,test
-0jeONf82dE,21,"cattle, bovinae cowbell",train
-0BIyqJj9ZU,30,"dog barking",train
zzzMissing1,40,"cattle, bovinae cowbell",test
"""


def test_vggsound_quoted_commas_and_names(tmp_path, media):
    root = tmp_path / "vgg"
    place(media["av"], root / "video" / "---g-f_I2yQ_000001.mp4")
    place(media["av"], root / "video" / "-0jeONf82dE_000021.mp4")
    place(media["av"], root / "video" / "-0BIyqJj9ZU_000030.mp4")
    write_text(root / "vggsound.csv", VGG_CSV)
    plan = collect_vgg(Context("vggsound", root, None, tmp_path / "out"))
    assert plan.classes == ["cattle, bovinae cowbell", "dog barking", "people marching"]
    by_key = {it.key: it for it in plan.items}
    item = by_key["vggsound/video/-0jeONf82dE_000021"]
    assert (item.label, item.label_name, item.extra) == (
        0,
        "cattle, bovinae cowbell",
        {"ytid": "-0jeONf82dE", "start": 21},
    )
    assert plan.splits["test"] == ["vggsound/video/---g-f_I2yQ_000001"]
    assert plan.failures[0]["key"] == "vggsound/zzzMissing1_000040"
    assert any("309" in note for note in plan.notes)


AS_CSV = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0RWZT-miFs, 420.000, 430.000, "/m/012xff"
--aE2O5G5WE, 0.000, 10.000, "/m/09x0r"
"""
AS_LABELS = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/012xff,"Toothbrush"\n'
AS_LABELS += '2,/t/dd00088,"Gush, water"\n'


def make_audioset(root: Path, media: dict, fmt: str) -> Path:
    meta = root / "meta"
    write_text(meta / "balanced_train_segments.csv", AS_CSV)
    write_text(meta / "eval_segments.csv", AS_CSV.replace("--aE2O5G5WE", "zz_missing_"))
    write_text(meta / "class_labels_indices.csv", AS_LABELS)
    for ytid, start in (("--PJHxphWEs", 30), ("-0RWZT-miFs", 420), ("--aE2O5G5WE", 0)):
        place(media["mono"], root / "clips" / fmt.format(ytid=ytid, start=start))
    return meta


def test_audioset_comments_spaces_multilabel_and_pattern(tmp_path, media):
    root = tmp_path / "as"
    meta = make_audioset(root, media, "{ytid}_{start}.mp4")
    plan = collect_audioset(Context("audioset", root, meta, tmp_path / "out"))
    assert plan.multilabel and plan.classes == ["Speech", "Toothbrush", "Gush, water"]
    assert "file name pattern: {ytid}_{start_int}" in plan.notes
    by_key = {it.key: it for it in plan.items}
    item = by_key["audioset/clips/--PJHxphWEs_30"]
    assert item.label == [0, 2] and item.label_name == ["Speech", "Gush, water"]
    assert item.extra["mids"] == ["/m/09x0r", "/t/dd00088"] and item.extra["start"] == 30.0
    assert set(plan.splits) == {"balanced_train_segments", "eval_segments"}
    assert len(plan.splits["balanced_train_segments"]) == 3
    assert len(plan.items) == 3 and plan.failures[0]["path"] == str(root / "zz_missing__0")


def test_audioset_explicit_pattern_end_to_end(tmp_path, media):
    root = tmp_path / "as"
    meta = make_audioset(root, media, "Y{ytid}.mp4")
    out = tmp_path / "out"
    manifest = prepare_dataset(
        "audioset",
        root,
        meta,
        out,
        progress=False,
        pattern="Y{ytid}",
        csv="balanced_train_segments.csv",
    )
    assert manifest["multilabel"] is True and manifest["num_samples"] == 3
    assert manifest["splits"] == {"balanced_train_segments": 3}
    meta_json = sample_json(read_shards(out), "audioset/clips/Y--PJHxphWEs")
    assert meta_json["label"] == [0, 2] and meta_json["ytid"] == "--PJHxphWEs"
    with pytest.raises(UserError, match="--pattern"):
        prepare_dataset("audioset", root, meta, tmp_path / "o2", pattern="{nope}", progress=False)


def test_audioset_no_known_file_name_pattern_is_user_error(tmp_path, media):
    root = tmp_path / "as"
    meta = make_audioset(root, media, "clip-{ytid}-{start}.mp4")
    with pytest.raises(UserError) as info:
        collect_audioset(Context("audioset", root, meta, tmp_path / "out"))
    assert str(info.value) == (
        f"no known file-name pattern matched the files in ROOT {root} (e.g. "
        "clip---PJHxphWEs-30.mp4; tried {ytid}_{start_int} {ytid}_{start:.3f} "
        "{ytid}_{start_int}_{end_int} {ytid}_{start:.3f}_{end:.3f} {ytid}_{start_int:06d} "
        "{ytid}_{start_ms}_{end_ms} {ytid} Y{ytid}); pass --pattern (syntax in "
        "data_prep/README.md)"
    )
    plan = collect_audioset(
        Context(
            "audioset", root, meta, tmp_path / "out", options={"pattern": "clip-{ytid}-{start_int}"}
        )
    )
    assert len(plan.items) == 3 and len(plan.failures) == 1  # zz_missing_ only


def test_audioset_unknown_mid_is_user_error(tmp_path, media):
    root = tmp_path / "as"
    meta = make_audioset(root, media, "{ytid}.mp4")
    write_text(meta / "eval_segments.csv", AS_CSV.replace("/m/012xff", "/m/unknown"))
    with pytest.raises(UserError, match="eval_segments.csv:5: label /m/unknown"):
        collect_audioset(Context("audioset", root, meta, tmp_path / "out"))


def test_kinetics_sounds_folders_and_lists(tmp_path, media):
    assert len(CLASSES) == 32 and CLASSES == sorted(CLASSES)
    root = tmp_path / "k400"
    place(media["av"], root / "train" / "playing_bagpipes" / "abc_000001_000011.mp4")
    place(media["av"], root / "train" / "tap dancing" / "def_000002_000012.mp4")
    place(media["av"], root / "train" / "abseiling" / "ghi_000003_000013.mp4")  # not KS
    place(media["av"], root / "validate" / "tickling" / "jkl_000004_000014.mp4")
    plan = collect_ks(Context("kinetics_sounds", root, None, tmp_path / "out"))
    assert len(plan.items) == 3
    assert plan.splits["val"] == ["kinetics_sounds/validate/tickling/jkl_000004_000014"]
    labels = {it.label_name: it.label for it in plan.items}
    assert labels["playing bagpipes"] == CLASSES.index("playing bagpipes")
    lists = tmp_path / "lists"
    train = ["playing_bagpipes/abc_000001_000011.mp4", "tap_dancing/zzz_000001_000011.mp4"]
    write_text(lists / "train.txt", json.dumps(train))
    write_text(lists / "val.txt", "tickling/jkl_000004_000014.mp4\n", crlf=True)
    plan = collect_ks(Context("kinetics_sounds", root, lists, tmp_path / "out"))
    assert len(plan.items) == 2 and len(plan.splits["val"]) == 1
    assert plan.failures[0]["key"] == "kinetics_sounds/train/tap_dancing/zzz_000001_000011"


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("-0jeONf82dE_21.mp4", "{ytid}_{start}"),
        ("-0jeONf82dE_000021_000031.mp4", "{ytid}_{start:06d}_{end:06d}"),
        ("-0jeONf82dE_21_31.mp4", "{ytid}_{start}_{end}"),
    ],
)
def test_vggsound_mirror_file_names_are_detected(tmp_path, media, name, pattern):
    root = tmp_path / "vgg"
    place(media["av"], root / "clips" / name)
    write_text(root / "vggsound.csv", VGG_CSV)
    plan = collect_vgg(Context("vggsound", root, None, tmp_path / "out"))
    assert f"file name pattern: {pattern}" in plan.notes
    assert [it.key for it in plan.items] == [f"vggsound/clips/{Path(name).stem}"]
    assert len(plan.failures) == 3  # the other rows' files are missing, and counted


def test_vggsound_explicit_pattern_with_end(tmp_path, media):
    root = tmp_path / "vgg"
    place(media["av"], root / "v" / "clip--0BIyqJj9ZU-30-40.mp4")
    write_text(root / "vggsound.csv", VGG_CSV)
    ctx = Context(
        "vggsound", root, None, tmp_path / "out", options={"pattern": "clip-{ytid}-{start}-{end}"}
    )
    plan = collect_vgg(ctx)
    assert [it.key for it in plan.items] == ["vggsound/v/clip--0BIyqJj9ZU-30-40"]
    ctx = Context("vggsound", root, None, tmp_path / "out", options={"pattern": "{ytid}_{stop}"})
    with pytest.raises(UserError, match="does not fit"):
        collect_vgg(ctx)
