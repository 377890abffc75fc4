"""knn_predict against a slow NumPy reference, hand-made ties, the faiss path and chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avssl.evaluators import knn
from avssl.evaluators.knn import knn_evaluate, knn_predict


def knn_reference(xtr, ytr, xte, k, temperature, num_classes):
    """Slow reference: cosine similarity, k most similar (ties -> lower index), exp(sim/T)."""
    xtr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    xte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    scores = np.zeros((len(xte), num_classes))
    gaps = np.full(len(xte), np.inf)  # similarity gap between the k-th and (k+1)-th neighbour
    for i, q in enumerate(xte):
        sims = [float(np.dot(q, t)) for t in xtr]
        order = sorted(range(len(xtr)), key=lambda j: (-sims[j], j))
        for j in order[:k]:
            scores[i, ytr[j]] += math.exp(sims[j] / temperature)
        if k < len(order):
            gaps[i] = sims[order[k - 1]] - sims[order[k]]
    return scores, gaps


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(7, 16))
    ytr, yte = rng.integers(0, 7, 300), rng.integers(0, 7, 60)
    xtr = means[ytr] + 1.5 * rng.normal(size=(300, 16))
    xte = means[yte] + 1.5 * rng.normal(size=(60, 16))
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("k", [1, 5, 20, 300, 400])
def test_matches_numpy_reference_exactly(data, k):
    xtr, ytr, xte, _ = data
    ref, _ = knn_reference(xtr, ytr, xte, k, 0.07, 7)
    got = knn_predict(xtr, ytr, xte, k=k, temperature=0.07, num_classes=7, device="cpu")
    assert got.dtype == torch.float64 and got.shape == (60, 7)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9)
    assert np.array_equal(got.numpy().argmax(1), ref.argmax(1))


def test_chunked_equals_unchunked(data, monkeypatch):
    xtr, ytr, xte, _ = data
    whole = knn_predict(xtr, ytr, xte, k=20, device="cpu")
    monkeypatch.setattr(knn, "row_chunk", lambda n, budget=0: 7)
    chunked = knn_predict(xtr, ytr, xte, k=20, device="cpu")
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=0)  # BLAS blocking may differ
    assert torch.equal(whole.argmax(1), chunked.argmax(1))


def test_ties_take_the_lower_index_and_known_scores():
    e = math.exp(1 / 0.07)
    train = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])  # first 3 identical dirs
    labels = np.array([2, 1, 0, 1])
    query = np.array([[5.0, 0.0]])
    for backend in ("torch", "faiss"):
        k1 = knn_predict(train, labels, query, k=1, backend=backend, device="cpu")
        assert k1[0].tolist() == pytest.approx([0.0, 0.0, e], rel=1e-5)  # index 0 -> class 2
        k2 = knn_predict(train, labels, query, k=2, backend=backend, device="cpu")
        assert k2[0].tolist() == pytest.approx([0.0, e, e], rel=1e-5)
        k4 = knn_predict(train, labels, query, k=4, num_classes=4, backend=backend, device="cpu")
        assert k4[0].tolist() == pytest.approx([e, e + 1.0, e, 0.0], rel=1e-5)  # exp(0/T) = 1
    # equal class scores resolve to the lower class id in the metrics
    res = knn_evaluate(train, labels, query, np.array([1]), ks=(2,), temperature=0.07)
    assert res[2]["pred"].tolist() == [1] and res[2]["top1"] == 100.0


def test_faiss_path_matches_reference(data):
    xtr, ytr, xte, _ = data
    ref, gaps = knn_reference(xtr, ytr, xte, 20, 0.07, 7)
    got = knn_predict(
        xtr.astype(np.float32), ytr, xte.astype(np.float32), k=20, num_classes=7, backend="faiss"
    )
    clear = gaps > 1e-5  # float32 cannot order neighbours closer than that
    assert clear.sum() >= 55
    assert np.array_equal(got.numpy().argmax(1)[clear], ref.argmax(1)[clear])
    np.testing.assert_allclose(got.numpy()[clear], ref[clear], rtol=1e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="D=3"):
        knn_predict(np.ones((4, 2)), np.zeros(4), np.ones((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        knn_predict(np.ones((2, 2)), np.array([0, -1]), np.ones((1, 2)))


def test_bf16_candidates_give_the_float32_answer(data, monkeypatch):
    xtr, ytr, xte, _ = data
    ref, gaps = knn_reference(xtr, ytr, xte, 5, 0.07, 7)
    x32, q32 = xtr.astype(np.float32), xte.astype(np.float32)
    got = knn_predict(x32, ytr, q32, k=5, num_classes=7, backend="bf16")
    clear = gaps > 1e-5
    assert np.array_equal(got.numpy().argmax(1)[clear], ref.argmax(1)[clear])
    np.testing.assert_allclose(got.numpy()[clear], ref[clear], rtol=1e-3)
    # near-duplicates: bf16 cannot separate the candidates, so the rows fall back to float32
    calls = []
    real = knn._neighbours_torch
    monkeypatch.setattr(
        knn, "_neighbours_torch", lambda a, b, k: calls.append(len(b)) or real(a, b, k)
    )
    noise = 1e-3 * np.random.default_rng(0).normal(size=(120, 16))
    dup = (x32[:1] + noise).astype(np.float32)  # 120 items in one direction
    labels = ytr[:120]
    bf = knn_predict(dup, labels, q32[:10], k=5, num_classes=7, backend="bf16")
    assert sum(calls) > 0
    torch.testing.assert_close(
        bf, knn_predict(dup, labels, q32[:10], k=5, num_classes=7, backend="torch", device="cpu")
    )


def test_auto_backend_choice(monkeypatch):
    big = torch.zeros(1 << 12, 8), torch.zeros(1 << 12, 8)
    monkeypatch.setattr(knn, "cpu_has_bf16", lambda: True)
    assert knn._choose("auto", torch.device("cpu"), *big, 20) == "bf16"
    assert knn._choose("auto", torch.device("cpu"), *big, 200) == "torch"
    assert knn._choose("auto", torch.device("cpu"), big[0].double(), big[1], 20) == "torch"
    assert knn._choose("auto", torch.device("cuda"), *big, 20) == "torch"
    monkeypatch.setattr(knn, "cpu_has_bf16", lambda: False)
    assert knn._choose("auto", torch.device("cpu"), *big, 20) == "torch"
    assert knn._choose("faiss", torch.device("cpu"), *big, 20) == "faiss"
    with pytest.raises(ValueError, match="backend"):
        knn._choose("gpu", torch.device("cpu"), *big, 20)


def test_faiss_backend_without_faiss_is_an_error(monkeypatch):
    """Asking for faiss where it is not installed names the package, not an AttributeError."""
    monkeypatch.setattr(knn, "faiss", None)
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="faiss-cpu package, which is not installed"):
        knn_predict(x, np.arange(4), x, k=1, backend="faiss")
    auto = knn_predict(x, np.arange(4), x, k=1, backend="auto", device="cpu")
    assert auto.argmax(1).tolist() == [0, 1, 2, 3]


def test_non_finite_features_are_errors():
    """A NaN training row used to vote with NaN weight; a NaN query got arbitrary top-1."""
    x = np.eye(4)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"train_x has 1 row\(s\) with NaN or infinite"):
        knn_predict(x, np.arange(4), np.eye(4))
    with pytest.raises(ValueError, match=r"test_x has 1 row\(s\) with NaN or infinite"):
        knn_predict(np.eye(4), np.arange(4), x[2:3])


def test_class_ids_beyond_num_classes_are_errors():
    """Used to stop in scatter_add_'s "index 3 is out of bounds" RuntimeError."""
    with pytest.raises(ValueError, match=r"train_y has class id 4, but num_classes is 3"):
        knn_predict(np.eye(5), np.arange(5), np.eye(5)[:2], num_classes=3)
