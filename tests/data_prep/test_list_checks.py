"""What the adapters do with lists and folders that disagree with the data: an audio copy beside
the video, two spellings of one key, a pattern only later rows match, class folders spelled with
spaces, clips listed twice, official sizes, and index files that are not what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prep_helpers import place, write_text

from avssl.cli import UserError
from data_prep.__main__ import main
from data_prep.audioset import collect as collect_audioset
from data_prep.checks import consistency_notes
from data_prep.common import Context, Plan, index_media
from data_prep.esc50 import collect as collect_esc50
from data_prep.kinetics_sounds import collect as collect_ks
from data_prep.ucf101 import OFFICIAL_SPLITS
from data_prep.ucf101 import collect as collect_ucf
from data_prep.vggsound import collect as collect_vgg

AS_LABELS = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0ytgt,"Toothbrush"\n'
AS_HEAD = "# Segments csv\n# num_ytids=1\n# YTID, start_seconds, end_seconds, positive_labels\n"


def test_a_video_wins_over_an_audio_copy_of_the_same_clip(tmp_path, media):
    root = tmp_path / "vgg"
    place(media["wav"], root / "audio" / "abc_000010.wav")  # sorts before video/
    place(media["av"], root / "video" / "abc_000010.mp4")
    place(media["wav"], root / "audio" / "solo_000020.wav")  # only an audio file: kept
    assert index_media(root)["abc_000010"] == root / "video" / "abc_000010.mp4"
    assert index_media(root)["solo_000020"] == root / "audio" / "solo_000020.wav"
    write_text(root / "vggsound.csv", "abc,10,dog barking,train\n")
    plan = collect_vgg(Context("vggsound", root, None, tmp_path / "out"))
    assert [it.path for it in plan.items] == [root / "video" / "abc_000010.mp4"]
    meta = tmp_path / "meta"
    write_text(meta / "class_labels_indices.csv", AS_LABELS)
    write_text(meta / "eval_segments.csv", AS_HEAD + 'abc, 10.000, 20.000, "/m/09x0r"\n')
    plan = collect_audioset(Context("audioset", root, meta, tmp_path / "out"))
    assert [it.path for it in plan.items] == [root / "video" / "abc_000010.mp4"]  # not audio-only


def test_a_second_spelling_of_a_missing_clips_key_is_reported(tmp_path, media):
    present = place(media["av"], tmp_path / "kick" / "x_b_kick_0.avi")
    plan = Plan("hmdb51", ["kick"])
    assert plan.add("kick/x.b_kick_0.avi", tmp_path / "kick" / "x.b_kick_0.avi", ["train1"]) is None
    assert plan.add("kick/x_b_kick_0.avi", present, ["train1"]) is None  # same key
    reasons = [f["reason"] for f in plan.failures]
    assert reasons[0] == "missing on disk"
    assert reasons[1].startswith(f"same key as {tmp_path / 'kick' / 'x.b_kick_0.avi'}")
    assert plan.add("kick/x.b_kick_0.avi", tmp_path / "kick" / "x.b_kick_0.avi", ["test1"]) is None
    assert len(plan.failures) == 2  # the same missing file listed again: reported once


def test_audioset_pattern_found_beyond_the_first_rows(tmp_path, media):
    root, meta = tmp_path / "as", tmp_path / "meta"
    write_text(meta / "class_labels_indices.csv", AS_LABELS)
    rows = "".join(f'bal{i:05d}, 0.000, 10.000, "/m/09x0r"\n' for i in range(600))
    write_text(meta / "balanced_train_segments.csv", AS_HEAD + rows)  # none of them on disk
    write_text(meta / "eval_segments.csv", AS_HEAD + 'evalclip01, 30.000, 40.000, "/m/0ytgt"\n')
    place(media["mono"], root / "eval" / "evalclip01_30.000.mp4")
    plan = collect_audioset(Context("audioset", root, meta, tmp_path / "out"))
    assert "file name pattern: {ytid}_{start:.3f}" in plan.notes
    assert [it.key for it in plan.items] == ["audioset/eval/evalclip01_30_000"]
    assert "class_labels_indices.csv lists 2 classes (AudioSet: 527)" in plan.notes


def test_kinetics_lists_with_underscores_find_class_folders_with_spaces(tmp_path, media):
    root, lists = tmp_path / "k400", tmp_path / "lists"
    place(media["av"], root / "train" / "tap dancing" / "def_000002_000012.mp4")
    place(media["av"], root / "val" / "Playing Bagpipes" / "abc_000001_000011.mp4")
    write_text(lists / "train.txt", "tap_dancing/def_000002_000012.mp4\n")
    write_text(lists / "val.txt", "playing_bagpipes/abc_000001_000011.mp4\n")
    plan = collect_ks(Context("kinetics_sounds", root, lists, tmp_path / "out"))
    assert not plan.failures
    assert plan.splits == {
        "train": ["kinetics_sounds/train/tap dancing/def_000002_000012"],
        "val": ["kinetics_sounds/val/Playing Bagpipes/abc_000001_000011"],
    }


def test_clips_listed_twice_or_in_train_and_test_are_noted(tmp_path, media):
    root = tmp_path / "vgg"
    for name in ("abc_000030", "def_000040"):
        place(media["av"], root / "video" / f"{name}.mp4")
    csv = 'abc,30,"cattle, bovinae cowbell",train\nabc,30,dog barking,test\n'
    csv += "def,40,dog barking,train\n"
    write_text(root / "vggsound.csv", csv)
    plan = collect_vgg(Context("vggsound", root, None, tmp_path / "out"))
    item = next(it for it in plan.items if it.key == "vggsound/video/abc_000030")
    assert item.label_name == "cattle, bovinae cowbell"  # the first listing's label is kept
    notes = consistency_notes(plan)
    assert notes == [
        "1 listing(s) give a clip a second label; the first is kept (e.g. "
        "vggsound/video/abc_000030: 'cattle, bovinae cowbell', not 'dog barking')",
        "1 clip(s) are in both train and test (e.g. vggsound/video/abc_000030)",
    ]


def test_split_sizes_are_compared_with_the_official_lists():
    plan = Plan("ucf101", ["A"], splits={name: [] for name in OFFICIAL_SPLITS})
    plan.splits["train1"] = [f"ucf101/A/{i}" for i in range(3)]
    notes = consistency_notes(plan, OFFICIAL_SPLITS)
    assert len(notes) == 6
    assert notes[0] == (
        "train1: 3 clips found, the official list has 9,537 (a subset, another list version, "
        "or clips missing on disk: see the failures)"
    )
    plan.splits = {k: [f"ucf101/A/{k}_{i}" for i in range(n)] for k, n in OFFICIAL_SPLITS.items()}
    assert consistency_notes(plan, OFFICIAL_SPLITS) == []


def test_esc50_folds_in_both_lists_are_noted():
    plan = Plan("esc50", ["dog"], splits={f"fold{k}": [] for k in range(1, 6)})
    plan.splits["fold1"] = ["esc50/audio/a"]
    plan.splits["fold4"] = ["esc50/audio/a"]
    assert consistency_notes(plan) == ["1 clip(s) are in both fold1 and fold4 (e.g. esc50/audio/a)"]


def _ucf_lists(lists: Path, train_label: str) -> None:
    write_text(lists / "classInd.txt", "1 YoYo\n")
    for k in (1, 2, 3):
        write_text(lists / f"trainlist0{k}.txt", f"YoYo/v_YoYo_g01_c01.avi {train_label}\n")
        write_text(lists / f"testlist0{k}.txt", "YoYo/v_YoYo_g02_c01.avi\n")


def test_bad_index_files_are_one_line_errors(tmp_path, media, capsys):
    root = tmp_path / "data"
    place(media["av"], root / "UCF-101" / "YoYo" / "v_YoYo_g01_c01.avi")
    _ucf_lists(root / "ucfTrainTestlist", "x7")
    with pytest.raises(UserError, match=r"trainlist01.txt:1: label 'x7' of 'YoYo/v_YoYo_g01_c01"):
        collect_ucf(Context("ucf101", root, None, tmp_path / "out"))
    esc = tmp_path / "esc"
    header = "filename,fold,target,category,esc10,src_file,take\n"
    write_text(esc / "meta" / "esc50.csv", header + "1-1-A-0.wav,6,0,dog,True,1,A\n")
    with pytest.raises(UserError, match=r"esc50.csv:2: fold must be 1..5 .* got 6"):
        collect_esc50(Context("esc50", esc, None, tmp_path / "out"))
    meta = tmp_path / "meta"
    write_text(meta / "class_labels_indices.csv", "index,mid,display_name\nzero,/m/0,Speech\n")
    with pytest.raises(UserError, match="class_labels_indices.csv:2: index 'zero' is not"):
        collect_audioset(Context("audioset", root, meta, tmp_path / "out"))
    lists = tmp_path / "lists"
    write_text(lists / "train.txt", '["tickling/a.mp4",')
    write_text(lists / "val.txt", "tickling/b.mp4\n")
    with pytest.raises(UserError, match="train.txt: not a valid JSON list"):
        collect_ks(Context("kinetics_sounds", root, lists, tmp_path / "out"))
    csvs = tmp_path / "csvs"
    write_text(csvs / "train.csv", "label,youtube_id,time_start,time_end\ntickling,a,ten,20\n")
    write_text(csvs / "validate.csv", "label,youtube_id,time_start,time_end\n")
    with pytest.raises(UserError, match="train.csv:2: time_start/time_end are not numbers"):
        collect_ks(Context("kinetics_sounds", root, csvs, tmp_path / "out"))
    vgg = tmp_path / "vgg"
    vgg.mkdir()
    (vgg / "vggsound.csv").write_bytes("abc,1,caf\xe9 noise,train\n".encode("latin-1"))
    args = ["--dataset", "vggsound", "--root", str(vgg), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vggsound.csv: not UTF-8 text" in err[0]


def test_the_notes_reach_the_manifest(tmp_path, media):
    root = tmp_path / "vgg"
    place(media["av"], root / "video" / "abc_000030.mp4")
    write_text(root / "vggsound.csv", "abc,30,dog,train\nabc,30,dog,test\n")
    out = tmp_path / "out"
    args = ["--dataset", "vggsound", "--root", str(root), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    notes = json.loads((out / "manifest.json").read_text())["notes"]
    assert "1 clip(s) are in both train and test (e.g. vggsound/video/abc_000030)" in notes
