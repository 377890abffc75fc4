"""recall_at_k and cross_modal on hand-made cases with known answers, ties and permutations."""

from __future__ import annotations

import numpy as np
import pytest

from avssl.evaluators.retrieval import class_ranks, cross_modal, recall_at_k

S = 1 / np.sqrt(2)


def test_recall_at_k_hand_case():
    gallery = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    g_y = [0, 1, 1, 0]
    queries = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    q_y = [1, 0, 0]
    # q0: best class-1 item g1 (0.8), g0 (1.0) ahead -> rank 2; q1: g3 (0.8) behind g2 -> 2;
    # q2: g0 itself -> 1
    assert class_ranks(queries, q_y, gallery, g_y, device="cpu").tolist() == [2, 2, 1]
    got = recall_at_k(queries, q_y, gallery, g_y, ks=(1, 2, 5), device="cpu")
    assert got == pytest.approx({"R@1": 100 / 3, "R@2": 100.0, "R@5": 100.0})


def test_recall_ties_count_against_the_query_in_any_order():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query, q_y = np.array([[1.0, 0.0]]), [1]
    for g_y in ([0, 1, 1], [1, 0, 1]):  # right and wrong item tie at sim 1, either order
        assert recall_at_k(query, q_y, gallery, g_y, ks=(1, 2), device="cpu") == {
            "R@1": 0.0,
            "R@2": 100.0,
        }
    absent = recall_at_k(query, [7], gallery, [0, 1, 1], ks=(1, 3), device="cpu")
    assert absent == {"R@1": 0.0, "R@3": 0.0}  # no item of the class: never a hit


def test_recall_matches_topk_definition_without_ties():
    rng = np.random.default_rng(0)
    g, gy = rng.normal(size=(200, 8)), rng.integers(0, 5, 200)
    q, qy = rng.normal(size=(50, 8)), rng.integers(0, 5, 50)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    order = np.argsort(-(qn @ gn.T), axis=1)
    for k in (1, 5, 20):
        hits = [(gy[order[i, :k]] == qy[i]).any() for i in range(50)]
        assert recall_at_k(q, qy, g, gy, ks=(k,), device="cpu")[f"R@{k}"] == pytest.approx(
            100 * np.mean(hits)
        )


def test_cross_modal_hand_case():
    audio = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    video = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = cross_modal(audio, video, ks=(1, 2, 5), device="cpu")
    # a2v ranks: [2 (tie with v1), 3 (ties with v0 and v2 ahead), 3 (three-way tie)]
    # v2a ranks: [1, 3, 2]
    assert got == pytest.approx(
        {
            "a2v_R@1": 0.0,
            "a2v_R@2": 100 / 3,
            "a2v_R@5": 100.0,
            "a2v_medr": 3.0,
            "v2a_R@1": 100 / 3,
            "v2a_R@2": 200 / 3,
            "v2a_R@5": 100.0,
            "v2a_medr": 2.0,
        }
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_results_do_not_depend_on_input_order(dtype):
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(12, 3)).astype(float)  # small integers: many exact ties
    audio = np.concatenate([base, base[:6]])  # duplicates -> ties
    video = np.concatenate([base[::-1], base[6:]]) + rng.integers(0, 2, size=(18, 3))
    audio[audio.sum(1) == 0] += 1  # no zero rows
    video[np.abs(video).sum(1) == 0] += 1
    audio, video = audio.astype(dtype), video.astype(dtype)
    labels = rng.integers(0, 3, 18)
    ref = cross_modal(audio, video, ks=(1, 5), device="cpu")
    ref_r = recall_at_k(audio, labels, video, labels, ks=(1, 3), device="cpu")
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(18)
        assert cross_modal(audio[p], video[p], ks=(1, 5), device="cpu") == ref
        q = np.random.default_rng(seed + 10).permutation(18)
        assert (
            recall_at_k(audio[p], labels[p], video[q], labels[q], ks=(1, 3), device="cpu") == ref_r
        )


def test_cross_modal_scores_video_to_audio_in_its_own_space_when_given():
    rng = np.random.default_rng(5)
    a, v, a2, v2 = (rng.normal(size=(30, 6)) for _ in range(4))
    got = cross_modal(a, v, ks=(1, 5), device="cpu", v2a=(a2, v2))
    one, other = (cross_modal(*x, ks=(1, 5), device="cpu") for x in ((a, v), (a2, v2)))
    assert got == {**one, **{k: x for k, x in other.items() if k.startswith("v2a")}}
    assert got != one


def test_cross_modal_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        cross_modal(np.ones((3, 4)), np.ones((3, 5)))


def test_non_finite_features_are_errors_not_hits():
    """A NaN compares false with everything: a NaN query used to rank its class first (R@1
    100 %) and a NaN pair to get rank 0 (R@1 100 %, median rank 0)."""
    nan_queries = np.full((2, 2), np.nan)
    with pytest.raises(ValueError, match=r"query_x has 2 row\(s\) with NaN or infinite values"):
        recall_at_k(nan_queries, [0, 1], np.eye(2), [0, 1], device="cpu")
    audio = np.eye(3)
    audio[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or infinite values \(first: 1\)"):
        cross_modal(audio, np.eye(3), device="cpu")
