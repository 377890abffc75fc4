"""evaluation/*.yaml: every protocol loads, says what the papers do, and bad files fail clearly."""

from __future__ import annotations

import pytest

from avssl.cli import UserError
from avssl.evaluators.protocols import find_protocol, known_protocols, load_protocol

REQUIRED = [
    "ucf101_linear",
    "hmdb51_linear",
    "ucf101_knn",
    "hmdb51_knn",
    "ucf101_retrieval",
    "hmdb51_retrieval",
    "esc50_linear",
    "vggsound_av_retrieval",
    "audioset_av_retrieval",
    "vggsound_linear",
    "kinetics_sounds_linear",
    "audioset_linear",
    "synthetic_linear",
    "synthetic_knn",
    "synthetic_retrieval",
    "synthetic_av_retrieval",
    "folder_linear",
    "folder_knn",
    "folder_av_retrieval",
]


def test_all_protocols_load():
    names = known_protocols()
    assert set(REQUIRED) <= set(names)
    for name in names:
        p = load_protocol(name)
        assert p.name == name == find_protocol(name).stem


@pytest.mark.parametrize("name", ["ucf101_linear", "hmdb51_linear", "synthetic_linear"])
def test_three_official_splits(name):
    p = load_protocol(name)
    assert [(s.train, s.test) for s in p.splits] == [
        (["train1"], "test1"),
        (["train2"], "test2"),
        (["train3"], "test3"),
    ]
    assert p.type == "linear" and p.classifier["val_fraction"] == 0.2
    assert len(p.classifier["lambdas"]) >= 5


def test_esc50_leave_one_fold_out():
    p = load_protocol("esc50_linear")
    folds = {f"fold{i}" for i in range(1, 6)}
    assert [s.test for s in p.splits] == sorted(folds)
    for s in p.splits:
        assert set(s.train) == folds - {s.test}
    assert p.kinds == ["audio"]


def test_knn_and_retrieval_settings():
    knn = load_protocol("ucf101_knn").classifier
    assert knn["k"] == [20, 200] and knn["temperature"] == 0.07
    assert load_protocol("hmdb51_retrieval").classifier["ks"] == [1, 5, 10, 20, 50]
    av = load_protocol("vggsound_av_retrieval")
    assert av.type == "cross_modal" and av.classifier["ks"] == [1, 5, 10]
    assert load_protocol("kinetics_sounds_linear").kinds == ["audio", "video", "joint"]
    as_av = load_protocol("audioset_av_retrieval")
    assert as_av.type == "cross_modal" and as_av.classifier["ks"] == [1, 5, 10]
    assert [s.test for s in as_av.splits] == ["eval_segments"]
    vgg = load_protocol("vggsound_linear")
    assert [(s.train, s.test) for s in vgg.splits] == [(["train"], "test")]
    assert vgg.type == "linear" and vgg.kinds == ["audio", "video", "joint"]


def test_folder_protocols():
    """``DATASET=folder``: data_prep's train -> test split; retrieval over every clip."""
    lin, knn = load_protocol("folder_linear"), load_protocol("folder_knn")
    for p in (lin, knn):
        assert p.dataset == "folder" and p.data is None
        assert [(s.train, s.test) for s in p.splits] == [(["train"], "test")]
        assert p.kinds == ["audio", "video", "joint"] and p.clips_per_video == 10
    assert lin.type == "linear" and lin.classifier["val_fraction"] == 0.2
    assert lin.classifier["lambdas"] == load_protocol("ucf101_linear").classifier["lambdas"]
    assert knn.classifier == load_protocol("ucf101_knn").classifier
    av = load_protocol("folder_av_retrieval")
    assert av.type == "cross_modal" and [s.test for s in av.splits] == ["all"]
    assert av.classifier == load_protocol("vggsound_av_retrieval").classifier


def test_audioset_multilabel_probe():
    p = load_protocol("audioset_linear")
    assert p.type == "linear_multilabel" and p.metrics == ["mAP", "mAUC", "d_prime"]
    assert [(s.train, s.test) for s in p.splits] == [(["balanced_train_segments"], "eval_segments")]
    assert p.kinds == ["audio", "video", "joint"] and p.classifier["val_fraction"] == 0.2
    assert len(p.classifier["lambdas"]) >= 5 and "solver" not in p.classifier


def test_unknown_protocol_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown protocol 'ucf202_linear'.*ucf101_linear"):
        load_protocol("ucf202_linear")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "name: x\ndataset: d\nmodality: video\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: knn}\nclips: 3\n",
            "unknown key.*clips",
        ),
        (
            "name: x\ndataset: d\nmodality: sound\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: knn}\n",
            "modality",
        ),
        (
            "name: x\ndataset: d\nmodality: video\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: knn, temprature: 0.1}\n",
            "unknown key.*temprature",
        ),
        (
            "name: x\ndataset: d\nmodality: video\nsplits: [{test: b}]\n"
            "classifier: {type: linear}\n",
            "needs a 'train' split",
        ),
        (
            "name: x\ndataset: d\nmodality: video\nsplits: [{train: b, test: b}]\n"
            "classifier: {type: svm}\n",
            "classifier.type",
        ),
        (
            "name: x\ndataset: d\nmodality: video\nsplits: [{train: a, test: a}]\n"
            "classifier: {type: knn}\n",
            "also a train split",
        ),
        (
            "name: x\ndataset: d\nmodality: audio\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: linear_multilabel, solver: sklearn}\n",
            "unknown key.*solver.*for linear_multilabel",
        ),
        (
            "name: x\ndataset: d\nmodality: audio\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: linear_multilabel}\nmetrics: [mAP, top1]\n",
            r"metrics \['top1'\] do not apply to linear_multilabel",
        ),
        (
            "name: x\ndataset: d\nmodality: audio\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: linear}\nmetrics: [mAP]\n",
            r"metrics \['mAP'\] do not apply to linear",
        ),
        (
            "name: x\ndataset: d\nmodality: audio\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: linear_multilabel, val_fraction: 1.5}\n",
            "val_fraction",
        ),
        (
            "name: x\ndataset: d\nmodality: audio\nsplits: [{train: a, test: b}]\n"
            "classifier: {type: retrieval}\nclip_aggregation: mean_scores\n",
            "mean_scores for linear/linear_multilabel/knn",
        ),
    ],
)
def test_bad_protocol_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        load_protocol(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
