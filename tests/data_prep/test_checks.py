"""A prep that finds no clip is a user error; the closing hint fits the modalities converted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prep_helpers import place, write_text

from data_prep.__main__ import main

AS_HEAD = "# Segments csv\n# num_ytids=0\n# YTID, start_seconds, end_seconds, positive_labels\n"


def _empty_tree(case: str, root: Path, clip: Path) -> tuple[list[str], str]:
    """A dataset tree whose index lists no clip: (extra argv, what the error says it sought)."""
    place(clip, root / "clips" / "x_000001.mp4")
    splits = root / "splits"
    if case == "kinetics_folders":
        place(clip, root / "train" / "abseiling" / "a.mp4")  # not a Kinetics-Sounds class
        (root / "validate").mkdir()
        return [], f"Kinetics-Sounds classes (e.g. 'blowing nose' or 'blowing_nose') in {root}"
    if case == "kinetics_csvs":
        head = "label,youtube_id,time_start,time_end,split\n"
        write_text(splits / "train.csv", head + "abseiling,x,1,11,train\n")
        write_text(splits / "validate.csv", head)
        return ["--splits", str(splits)], f"Kinetics-Sounds classes in {splits / 'train.csv'}"
    if case == "vggsound":
        write_text(root / "vggsound.csv", "")
        return [], f"listed in {root / 'vggsound.csv'} (files named {{ytid}}_{{start:06d}}.*)"
    if case == "audioset":
        write_text(splits / "balanced_train_segments.csv", AS_HEAD)
        write_text(splits / "class_labels_indices.csv", "index,mid,display_name\n0,/m/a,A\n")
        return ["--splits", str(splits)], "segments listed in"
    if case == "ucf101":
        write_text(splits / "classInd.txt", "1 Circle\n")
        for k in (1, 2, 3):
            write_text(splits / f"trainlist0{k}.txt", "")
            write_text(splits / f"testlist0{k}.txt", "\r\n")
        return ["--splits", str(splits)], f"listed in {splits}/trainlist0k.txt and testlist0k"
    assert case == "hmdb51"
    for k in (1, 2, 3):
        write_text(splits / f"brush_hair_test_split{k}.txt", "")
    return ["--splits", str(splits)], f"videos listed in {splits}/<class>_test_split<k>.txt"


@pytest.mark.parametrize(
    "case", ["kinetics_folders", "kinetics_csvs", "vggsound", "audioset", "ucf101", "hmdb51"]
)
def test_no_clip_found_is_a_user_error(tmp_path, media, capsys, case):
    root = tmp_path / "root"
    extra, sought = _empty_tree(case, root, media["av"])
    dataset = "kinetics_sounds" if case.startswith("kinetics") else case
    out = tmp_path / "out"
    argv = ["--dataset", dataset, "--root", str(root), "--out", str(out), "--no-progress"]
    assert main([*argv, *extra]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "next:" not in captured.out, err
    start = f"data_prep: error: no clips found for dataset {dataset} in ROOT {root}: looked for "
    assert err[0].startswith(start) and sought in err[0], err[0]
    assert not (out / "manifest.json").exists()


ESC_CSV = "filename,fold,target,category,esc10,src_file,take\n1-1-A-0.wav,1,0,dog,True,1,A\n"


@pytest.mark.parametrize(
    "case,counts,hint",
    [
        ("esc50", (0, 1), "EVAL=esc50_linear ENCODER=<bundle> DATA="),
        ("sound_files", (0, 2), "(they need video); evaluate an encoder on it instead: make eval "
                                "EVAL=<protocol> ENCODER=<bundle> DATA="),
        ("silent_clips", (1, 0), "no converted clip has audio, and the pretraining recipes are "
                                 "all audio-visual (they need audio)"),
        ("clips", (2, 1), "make pretrain RECIPE=mavil DATA="),
    ],
)  # fmt: skip
def test_next_hint_fits_the_converted_modalities(tmp_path, media, capsys, case, counts, hint):
    root, out = tmp_path / "root", tmp_path / "out"
    dataset = "esc50" if case == "esc50" else "folder"
    if case == "esc50":
        place(media["wav"], root / "audio" / "1-1-A-0.wav")
        write_text(root / "meta" / "esc50.csv", ESC_CSV)
    elif case == "sound_files":
        place(media["wav"], root / "a.wav")
        place(media["wav"], root / "b.wav")
    else:
        place(media["noaudio"], root / "a.mp4")
        if case == "clips":
            place(media["mono"], root / "b.mp4")
    argv = ["--dataset", dataset, "--root", str(root), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("data_prep: next: ") and hint in printed[-1], printed[-1]
    assert printed[-1].endswith(f"DATA={out}")
    assert ("make pretrain" in printed[-1]) is (case == "clips")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_with_video"], manifest["num_with_audio"]) == counts
