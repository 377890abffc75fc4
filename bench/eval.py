"""Evaluator benchmark (``make bench``): avssl's kNN and linear probe against scikit-learn.

Same data, same run: ``--n-train`` x ``--dim`` training and ``--n-test`` test features drawn as
class means + Gaussian noise (so accuracy is meaningful, not 100 %), then

- kNN: ``avssl.evaluators.knn.knn_predict`` (k = 20, T = 0.07) against scikit-learn's
  ``KNeighborsClassifier(algorithm="brute", metric="cosine")`` with the same vote weights
  ``exp(cos / T)`` (a callable of the cosine distance);
- probe: ``avssl.evaluators.linear_probe.fit_predict`` at one L2 strength against
  ``LogisticRegression(solver="lbfgs", C=1 / (lambda * N))`` on the same standardised features,
  with the same tolerance; then, for information, the probe with its full held-out sweep;
- multi-label probe (``--multilabel``, AudioSet's shape by default: 20k x 768 train, 527
  classes): ``avssl.evaluators.linear_probe.fit_predict_multilabel`` at one L2 strength against
  one ``LogisticRegression`` per class (one-vs-rest, ``C = 1 / (lambda * N)``, the same
  features), both scored by mAP; then the probe with its held-out sweep.

Prints times, top-1 accuracies, agreement of the predictions and speed-ups (target: >= 3x with
the same accuracy). ``--quick`` runs a small smoke version (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def make_data(n_train: int, n_test: int, dim: int, classes: int, sigma: float, seed: int):
    """Class means ~ N(0, I) plus N(0, sigma^2 I) noise, float32; balanced random labels."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim), dtype=np.float32)

    def draw(n: int):
        y = rng.integers(0, classes, n)
        return means[y] + sigma * rng.standard_normal((n, dim), dtype=np.float32), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return xtr, ytr, xte, yte


def timed(fn):
    """(result, (wall seconds, process CPU seconds)); a shared machine stretches wall time more
    than CPU time, so both are reported."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def make_multilabel(n_train: int, n_test: int, dim: int, classes: int, signal: float, seed: int):
    """Multi-hot targets with Zipf-like class frequencies ``0.3 / (c + 1)^0.9`` (0.3 down to
    0.001 and ~2.9 labels per sample at 527 classes; AudioSet's are as skewed, ~2.7 labels per
    clip), features = signal * (sum of the present classes' prototypes ~ N(0, I)) + N(0, I)
    noise, float32."""
    rng = np.random.default_rng(seed)
    freq = (0.3 / np.arange(1, classes + 1) ** 0.9).astype(np.float32)
    protos = rng.standard_normal((classes, dim), dtype=np.float32)

    def draw(n: int):
        y = (rng.random((n, classes), dtype=np.float32) < freq).astype(np.float32)
        return signal * (y @ protos) + rng.standard_normal((n, dim), dtype=np.float32), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return xtr, ytr, xte, yte


def bench_multilabel(xtr, ytr, xte, yte, lam: float, tol: float, device: str, sweep: bool):
    from sklearn.linear_model import LogisticRegression

    from avssl.evaluators.linear_probe import fit_predict_multilabel, standardize
    from avssl.evaluators.multilabel import mean_average_precision

    fit = lambda **kw: fit_predict_multilabel(xtr, ytr, xte, tol=tol, device=device, **kw)  # noqa: E731
    ours, t_ours = timed(lambda: fit(lambdas=[lam]))
    a, b = (t.numpy() for t in standardize(torch.from_numpy(xtr), torch.from_numpy(xte)))
    keep = ytr.any(0) & ~ytr.all(0)  # sklearn needs both labels in a class's training targets

    def sk():
        scores = np.zeros(yte.shape, dtype=np.float64)
        for c in np.flatnonzero(keep):
            clf = LogisticRegression(C=1.0 / (lam * len(ytr)), max_iter=500, tol=tol)
            scores[:, c] = clf.fit(a, ytr[:, c]).decision_function(b)
        return scores

    scores_sk, t_sk = timed(sk)
    cols = torch.from_numpy(keep)
    map_o = mean_average_precision(ours[:, cols], torch.from_numpy(yte)[:, cols])
    map_s = mean_average_precision(
        torch.from_numpy(scores_sk)[:, cols], torch.from_numpy(yte)[:, cols]
    )
    (t_o, c_o), (t_s, c_s) = t_ours, t_sk
    name = f"one-vs-rest (lambda={lam:g})"
    print(f"  avssl   {name:<28} {t_o:8.2f} s ({c_o:7.1f} CPU s)   mAP {map_o:6.2f} %")
    print(f"  sklearn {name:<28} {t_s:8.2f} s ({c_s:7.1f} CPU s)   mAP {map_s:6.2f} %")
    print(
        f"  -> speed-up {t_s / max(t_o, 1e-9):.2f}x wall, {c_s / max(c_o, 1e-9):.2f}x CPU time, "
        f"mAP difference {map_o - map_s:+.2f} points ({int(keep.sum())} classes scored)"
    )
    res = {
        "avssl_s": t_o,
        "sklearn_s": t_s,
        "avssl_cpu_s": c_o,
        "sklearn_cpu_s": c_s,
        "speedup": t_s / max(t_o, 1e-9),
        "avssl_mAP": map_o,
        "sklearn_mAP": map_s,
    }
    if sweep:
        (scores, info), (t_sweep, _) = timed(lambda: fit(return_info=True))
        m = mean_average_precision(scores, torch.from_numpy(yte))
        print(
            f"  avssl one-vs-rest probe with its {len(info['lambdas'])}-value held-out sweep + "
            f"refit: {t_sweep:.2f} s, chose lambda {info['lambda']:g}, mAP {m:.2f} %"
        )
        res.update(sweep_s=t_sweep, sweep_mAP=m, sweep_lambda=info["lambda"])
    return res


def bench_knn(xtr, ytr, xte, yte, k: int, temperature: float, device: str) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    from avssl.evaluators import knn
    from avssl.evaluators.knn import knn_predict

    x, q = torch.from_numpy(xtr), torch.from_numpy(xte)
    print(f"  avssl backend: {knn._choose('auto', torch.device(device), x, q, k)}")
    ours, t_ours = timed(lambda: knn_predict(xtr, ytr, xte, k, temperature, device=device))
    pred_ours = ours.argmax(1).numpy()

    def weights(dist: np.ndarray) -> np.ndarray:  # cosine distance = 1 - cosine similarity
        return np.exp((1.0 - dist) / temperature)

    clf = KNeighborsClassifier(k, weights=weights, algorithm="brute", metric="cosine", n_jobs=-1)
    pred_sk, t_sk = timed(lambda: clf.fit(xtr, ytr).predict(xte))
    return _compare("kNN", t_ours, t_sk, pred_ours, pred_sk, yte)


def bench_probe(xtr, ytr, xte, yte, lam: float, tol: float, device: str, sweep: bool) -> dict:
    from sklearn.linear_model import LogisticRegression

    from avssl.evaluators.linear_probe import fit_predict

    ours, t_ours = timed(lambda: fit_predict(xtr, ytr, xte, lambdas=[lam], tol=tol, device=device))

    def sk():
        def prep(x, mean=None, std=None):  # the same L2 normalisation + standardisation
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            return (
                x,
                x.mean(0) if mean is None else mean,
                (np.maximum(x.std(0), 1e-6) if std is None else std),
            )

        a, mean, std = prep(xtr)
        b = prep(xte, mean, std)[0]
        clf = LogisticRegression(C=1.0 / (lam * len(ytr)), solver="lbfgs", max_iter=500, tol=tol)
        return clf.fit((a - mean) / std, ytr).predict((b - mean) / std)

    pred_sk, t_sk = timed(sk)
    res = _compare(f"probe (lambda={lam:g})", t_ours, t_sk, ours.argmax(1).numpy(), pred_sk, yte)
    if sweep:
        (scores, info), (t_sweep, _) = timed(
            lambda: fit_predict(xtr, ytr, xte, tol=tol, device=device, return_info=True)
        )
        acc = 100.0 * float((scores.argmax(1).numpy() == yte).mean())
        print(
            f"  avssl probe with its {len(info['lambdas'])}-value held-out sweep + refit: "
            f"{t_sweep:.2f} s, chose lambda {info['lambda']:g}, top-1 {acc:.2f} %"
        )
        res.update(sweep_s=t_sweep, sweep_top1=acc, sweep_lambda=info["lambda"])
    return res


def _compare(name: str, tt_ours: tuple, tt_sk: tuple, p_ours, p_sk, y) -> dict:
    acc_o = 100.0 * float((p_ours == y).mean())
    acc_s = 100.0 * float((p_sk == y).mean())
    agree = 100.0 * float((p_ours == p_sk).mean())
    (t_ours, c_ours), (t_sk, c_sk) = tt_ours, tt_sk
    ratio = t_sk / max(t_ours, 1e-9)
    print(f"  avssl   {name:<22} {t_ours:8.2f} s ({c_ours:7.1f} CPU s)   top-1 {acc_o:6.2f} %")
    print(f"  sklearn {name:<22} {t_sk:8.2f} s ({c_sk:7.1f} CPU s)   top-1 {acc_s:6.2f} %")
    print(
        f"  -> speed-up {ratio:.2f}x wall, {c_sk / max(c_ours, 1e-9):.2f}x CPU time (target >= "
        f"3x), top-1 difference {acc_o - acc_s:+.2f} points, predictions agree on {agree:.2f} %"
    )
    return {
        "avssl_s": t_ours,
        "sklearn_s": t_sk,
        "avssl_cpu_s": c_ours,
        "sklearn_cpu_s": c_sk,
        "speedup": ratio,
        "avssl_top1": acc_o,
        "sklearn_top1": acc_s,
        "agreement": agree,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (5k x 64, 10 classes)")
    ap.add_argument("--n-train", type=int, help="default 100000 (multi-label: 20000)")
    ap.add_argument("--n-test", type=int, help="default 10000 (multi-label: 18000)")
    ap.add_argument("--dim", type=int, help="default 768")
    ap.add_argument("--classes", type=int, help="default 100 (multi-label: 527)")
    ap.add_argument("--sigma", type=float, help="noise std, class means ~ N(0, I) (5.5; quick 3)")
    ap.add_argument(
        "--lam", type=float, help="L2 strength of the probe comparison (1e-4; multi-label 1e-3)"
    )
    ap.add_argument("--tol", type=float, default=1e-4, help="gradient tolerance of both probes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-sweep", action="store_true", help="skip the timing of the full sweep")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--multilabel",
        action="store_true",
        help="compare the one-vs-rest multi-label probe instead (AudioSet's shape: 20k x 768, "
        "527 classes, 18k test, unless sizes are given)",
    )
    ap.add_argument("--signal", type=float, help="multi-label prototype scale (0.2; quick 0.3)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    sizes = {  # (n_train, n_test, dim, classes, lam, signal, sigma) unless given
        (False, False): (100_000, 10_000, 768, 100, 1e-4, None, 5.5),
        (False, True): (5000, 500, 64, 10, 1e-4, None, 3.0),
        (True, False): (20_000, 18_000, 768, 527, 1e-3, 0.2, None),
        (True, True): (2000, 1000, 64, 20, 1e-3, 0.3, None),
    }[(args.multilabel, args.quick)]
    keys = ("n_train", "n_test", "dim", "classes", "lam", "signal", "sigma")
    for key, default in zip(keys, sizes):
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.multilabel:
        return _main_multilabel(args)
    xtr, ytr, xte, yte = make_data(
        args.n_train, args.n_test, args.dim, args.classes, args.sigma, args.seed
    )
    print(
        f"[bench eval] {args.n_train} x {args.dim} train, {args.n_test} test, {args.classes} "
        f"classes (sigma {args.sigma}); device {args.device}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    out = {"config": vars(args)}
    print("[bench eval] kNN, k = 20, T = 0.07 (cosine, weights exp(sim / T)):")
    out["knn"] = bench_knn(xtr, ytr, xte, yte, 20, 0.07, args.device)
    print("[bench eval] linear probe (multinomial logistic regression, L-BFGS):")
    out["probe"] = bench_probe(
        xtr, ytr, xte, yte, args.lam, args.tol, args.device, not args.no_sweep
    )
    return _write_json(args.json, out)


def _write_json(path: str, out: dict) -> int:
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


def _main_multilabel(args) -> int:
    xtr, ytr, xte, yte = make_multilabel(
        args.n_train, args.n_test, args.dim, args.classes, args.signal, args.seed
    )
    print(
        f"[bench eval] multi-label: {args.n_train} x {args.dim} train, {args.n_test} test, "
        f"{args.classes} classes (signal {args.signal}, {ytr.sum(1).mean():.1f} labels per "
        f"sample); device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs"
    )
    out = {"config": vars(args)}
    print("[bench eval] multi-label linear probe (one-vs-rest logistic regression):")
    out["multilabel"] = bench_multilabel(
        xtr, ytr, xte, yte, args.lam, args.tol, args.device, not args.no_sweep
    )
    return _write_json(args.json, out)


if __name__ == "__main__":
    sys.exit(main())
