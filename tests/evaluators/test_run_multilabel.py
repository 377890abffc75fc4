"""``avssl eval`` on multi-label (AudioSet-layout) shards: the ``audioset_linear`` protocol end to
end, and the one-line error of a single-label classifier on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avssl import cli
from avssl.evaluators.features import MODALITIES, extract_features
from avssl.evaluators.retrieval import cross_modal
from avssl.evaluators.run import main
from avssl.export import load_encoder
from tests.evaluators.test_run import _args

pytestmark = pytest.mark.slow

CLASSES = ["Circle", "Square", "Triangle", "Even", "Never"]


@pytest.fixture(scope="module")
def audioset_data(synthetic_data, tmp_path_factory) -> Path:
    """The 12 synthetic clips as AudioSet segments: 9 in balanced_train_segments, 3 in
    eval_segments; labels {shape class} + "Even" for clips 0 and 2 of each class (so eval,
    clip 3, has none); "Never" has no positive anywhere."""
    import data_prep

    root = tmp_path_factory.mktemp("audioset")
    meta, clips = root / "meta", root / "clips"
    meta.mkdir()
    clips.mkdir()
    files = sorted((synthetic_data / "raw" / "UCF-101").rglob("*.mp4"))
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.parent.name, []).append(f)
    rows: dict[str, list[str]] = {"balanced_train_segments": [], "eval_segments": []}
    mids = [f"/m/{i:03d}" for i in range(len(CLASSES))]
    for c, name in enumerate(sorted(by_class)):
        for j, f in enumerate(by_class[name][:4]):
            ytid = f"syn{c:02d}clip{j:02d}"
            shutil.copy(f, clips / f"{ytid}_0.mp4")
            labels = [mids[c]] + ([mids[3]] if j % 2 == 0 else [])
            split = "eval_segments" if j == 3 else "balanced_train_segments"
            rows[split].append(f'{ytid}, 0.000, 10.000, "{",".join(labels)}"')
    head = "# Segments csv\n# num_ytids=0\n# YTID, start_seconds, end_seconds, positive_labels\n"
    for split, lines in rows.items():
        (meta / f"{split}.csv").write_text(head + "\n".join(lines) + "\n")
    index = "".join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(zip(mids, CLASSES)))
    (meta / "class_labels_indices.csv").write_text("index,mid,display_name\n" + index)
    out = root / "shards"
    data_prep.prepare_dataset("audioset", clips, meta, out, progress=False, log=lambda m: None)
    return out


def test_audioset_linear_protocol(audioset_data, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args("audioset_linear", tiny_bundle, audioset_data, out, tmp_path / "cache")
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    rounds = res["rounds"]
    assert [(r["kind"], r["split"]) for r in rounds] == [
        (k, "eval") for k in ("audio", "video", "joint")
    ]
    want_test = {"audio": 2, "video": 3, "joint": 2}  # one eval clip has no audio: left out
    for r in rounds:
        assert (r["n_train"], r["n_test"]) == (9, want_test[r["kind"]])
        assert r["test"] == "eval_segments"
        assert set(r["metrics"]) == {"mAP", "mAUC", "d_prime"}
        assert 0 < r["metrics"]["mAP"] <= 100 and str(r["lambda"]) in r["val_mAP"]
        # "Even" and "Never" have no positive in eval: left out of mAP, counted (and a third
        # class in the audio and joint rounds, whose only positive is the clip without audio)
        skipped = 2 if r["kind"] == "video" else 3
        assert (r["n_classes"], r["n_skipped_ap"], r["n_skipped_auc"]) == (5, skipped, skipped)
        ap = r["per_class_ap"]
        assert ap[3] is None and ap[4] is None and sum(a is None for a in ap) == skipped
        scored = [a for a in ap if a is not None]
        assert all(0 < a <= 1 for a in scored)
        assert r["metrics"]["mAP"] == pytest.approx(100 * sum(scored) / len(scored))
        assert "confusion" not in r
    assert res["summary"]["audio"]["mAP"] == rounds[0]["metrics"]["mAP"]
    md = (out / "results.md").read_text()
    assert "| features | split | train -> test | n train/test | mAP | mAUC | d-prime |" in md
    assert "balanced_train_segments -> eval_segments" in md and "one-vs-rest" in md
    assert "Scored: audio/eval: AP of 2, AUC of 2 of 5 classes; video/eval: AP of 3" in md
    assert "2 of 5 classes have no positive in eval_segments" in md
    assert (out / "per_class_ap_joint.png").read_bytes()[:4] == b"\x89PNG"
    assert "| audio | eval |" in capsys.readouterr().out


def test_audioset_av_retrieval_needs_no_single_label(audioset_data, tiny_bundle, tmp_path):
    """Cross-modal retrieval matches item i with item i: it runs on the multi-label eval set."""
    out = tmp_path / "out"
    args = _args("audioset_av_retrieval", tiny_bundle, audioset_data, out, tmp_path / "cache")
    assert main(args) == 0
    (r,) = json.loads((out / "results.json").read_text())["rounds"]
    assert r["test"] == "eval_segments" and r["n_test"] == 3
    assert (r["n_items"], r["n_without_both"]) == (2, 1)  # one eval clip has no audio
    keys = (audioset_data / "splits" / "eval_segments.txt").read_text().split()
    kw = dict(num_clips=1, cache_dir=tmp_path / "cache", progress=False, device="cpu")
    fs = extract_features(load_encoder(tiny_bundle), str(audioset_data), keys, MODALITIES, **kw)
    both = fs.mask("audio") & fs.mask("video")
    assert both.tolist().count(True) == 2
    want = cross_modal(fs.get("audio")[both], fs.get("video")[both], (1, 5, 10))
    assert r["metrics"] == pytest.approx(want)


def test_single_label_classifier_on_multilabel_data(audioset_data, tiny_bundle, tmp_path, capsys):
    text = (
        "name: as_knn\ndataset: audioset\nmodality: audio\n"
        "splits: [{name: eval, train: balanced_train_segments, test: eval_segments}]\n"
        "classifier: {type: knn, k: [3]}\n"
    )
    (tmp_path / "as_knn.yaml").write_text(text)
    args = _args(str(tmp_path / "as_knn.yaml"), tiny_bundle, audioset_data, tmp_path / "o", "")
    assert cli.main(["eval", *args, "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is multi-label: linear/kNN/retrieval need one class" in err
    assert "linear_multilabel" in err
