"""Benchmark: ensemble build (selection + per-label calibration + thresholds) on one core.

20 members x 5,000 records x 20 labels, the design's target is < 10 s. The same run times a
naive build for comparison: selection that re-averages the ensemble from scratch for every
candidate and scores it with sklearn's per-label ``average_precision_score``; a
``CalibratedClassifierCV``-style per-label loop (sklearn folds, ``LogisticRegression`` /
``IsotonicRegression`` / temperature, sklearn ``log_loss``); thresholds by scanning every
candidate cut. The ratio is printed last.

Run: ``.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_ensemble.py`` (the
measurement runs in a subprocess whose BLAS/OpenMP pools are limited to one thread before
numpy is imported), or directly: ``python tests/benchmarks/bench_ensemble.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

N_MEMBERS, N_RECORDS, N_LABELS = 20, 5_000, 20
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@pytest.mark.benchmark
def test_ensemble_build_one_core():
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=1200
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr


def _synthetic(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    prevalence = np.geomspace(0.004, 0.3, N_LABELS)  # some labels < 1% positives
    y = rng.random((N_RECORDS, N_LABELS)) < prevalence
    base = np.log(prevalence / (1 - prevalence))
    shared = rng.normal(0, 1.0, (N_RECORDS, N_LABELS))  # errors all members share
    members = []
    for _ in range(N_MEMBERS):
        skill = rng.uniform(1.0, 3.0, N_LABELS)
        z = base + skill * y + 0.6 * shared + rng.normal(0, 1.0, (N_RECORDS, N_LABELS))
        members.append(1 / (1 + np.exp(-rng.uniform(0.5, 2.0) * z)))  # miscalibrated
    return np.stack(members), y


def _fast(members, y):
    from ecgtune.ensembles.build.calibration import PerLabelCalibrator
    from ecgtune.ensembles.build.selection import EnsembleSelector
    from ecgtune.search.thresholds import fit_thresholds

    times = {}
    t0 = time.perf_counter()
    selector = EnsembleSelector(metric="macro_auprc", init_size=3, max_rounds=50).fit(members, y)
    ensemble = selector.predict(members)
    times["selection"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibrated = PerLabelCalibrator(cv=5, seed=0).fit(ensemble, y)
    probs = calibrated.predict(ensemble)
    times["calibration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    thresholds = fit_thresholds(y, probs)
    times["thresholds"] = time.perf_counter() - t0
    return times, selector, calibrated, probs, thresholds


def _naive_selection(members, y, init_size=3, max_rounds=50):
    import numpy as np
    from sklearn.metrics import average_precision_score

    def score(p):
        return np.mean(
            [
                average_precision_score(y[:, c], p[:, c])
                for c in range(y.shape[1])
                if 0 < y[:, c].sum() < len(y)
            ]
        )

    scores = np.array([score(m) for m in members])
    ranked = np.argsort(-scores, kind="stable")
    prefix = [score(members[ranked[:j]].mean(axis=0)) for j in range(1, init_size + 1)]
    bag = list(ranked[: int(np.argmax(prefix)) + 1])
    current = max(prefix)
    for _ in range(max_rounds):
        cands = [score(members[[*bag, m]].mean(axis=0)) for m in range(len(members))]
        best = int(np.argmax(cands))
        if not cands[best] > current:
            break
        bag.append(best)
        current = cands[best]
    return np.bincount(bag, minlength=len(members))


def _naive_calibration(p, y, cv=5, seed=0):
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import expit, logit
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    def fit(method, pc, yc):
        z = logit(np.clip(pc, 1e-7, 1 - 1e-7))
        if method == "platt":
            lr = LogisticRegression(C=1e6).fit(z[:, None], yc)
            return lambda q: lr.predict_proba(logit(np.clip(q, 1e-7, 1 - 1e-7))[:, None])[:, 1]
        if method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(pc, yc)
            return lambda q: np.clip(iso.predict(q), 1e-7, 1 - 1e-7)
        res = minimize_scalar(
            lambda lt: log_loss(yc, expit(z / np.exp(lt)), labels=[0, 1]),
            bounds=(np.log(0.05), np.log(20)),
            method="bounded",
        )
        return lambda q: expit(logit(np.clip(q, 1e-7, 1 - 1e-7)) / np.exp(res.x))

    out = np.empty_like(p)
    methods = ("temperature", "platt", "isotonic")
    for c in range(p.shape[1]):
        pc, yc = p[:, c], y[:, c]
        if min(yc.sum(), len(yc) - yc.sum()) < cv:
            out[:, c] = fit("temperature", pc, yc)(pc)
            continue
        losses = []
        for method in methods:
            oof = np.empty(len(pc))
            for train, test in StratifiedKFold(cv, shuffle=True, random_state=seed).split(pc, yc):
                oof[test] = fit(method, pc[train], yc[train])(pc[test])
            losses.append(log_loss(yc, oof))
        out[:, c] = fit(methods[int(np.argmin(losses))], pc, yc)(pc)
    return out


def _naive_thresholds(y, p):
    import numpy as np

    thresholds = np.full(y.shape[1], 0.5)
    for c in range(y.shape[1]):
        if y[:, c].sum() < 5:
            continue
        best = -1.0
        for t in np.unique(p[:, c]):
            pred = p[:, c] >= t
            tp = np.sum(pred & y[:, c])
            f1 = 2 * tp / (pred.sum() + y[:, c].sum())
            if f1 > best:
                best, thresholds[c] = f1, t
    return thresholds


def main() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # the environment variables set by the caller still apply
        pass
    import numpy as np

    from ecgtune.search.metrics import macro_f1

    members, y = _synthetic()
    fast, selector, _, probs, thresholds = _fast(members, y)

    naive = {}
    t0 = time.perf_counter()
    naive_counts = _naive_selection(members, y)
    ensemble = np.tensordot(naive_counts / naive_counts.sum(), members, axes=1)
    naive["selection"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_probs = _naive_calibration(ensemble, y)
    naive["calibration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_thresholds = _naive_thresholds(y, naive_probs)
    naive["thresholds"] = time.perf_counter() - t0

    fast["total"] = sum(fast.values())
    naive["total"] = sum(naive.values())
    print(
        f"\nensemble build: {N_MEMBERS} members x {N_RECORDS:,} records x {N_LABELS} labels, "
        "1 thread"
    )
    print(f"{'step':<13}{'ecgtune [s]':>13}{'naive [s]':>12}{'naive/ecgtune':>15}")
    for step in ("selection", "calibration", "thresholds", "total"):
        ratio = naive[step] / fast[step]
        print(f"{step:<13}{fast[step]:>13.3f}{naive[step]:>12.3f}{ratio:>14.1f}x")
    same = np.array_equal(selector.counts_, naive_counts)
    print(
        f"selection: {int(selector.counts_.sum())} picks of {len(selector.selected_)} members, "
        f"macro AUPRC {selector.member_scores_.max():.4f} (best member) -> "
        f"{selector.score_:.4f}; same picks as the naive loop: {'yes' if same else 'NO'}"
    )
    print(
        f"macro F1 on the fitting fold: ecgtune {macro_f1(y, probs, thresholds):.4f}, "
        f"naive {macro_f1(y, naive_probs, naive_thresholds):.4f}"
    )
    status = "met" if fast["total"] < 10.0 else "NOT met"
    print(f"target < 10 s on one core: {status} ({fast['total']:.2f} s)")
    print(f"ratio naive/ecgtune (total): {naive['total'] / fast['total']:.1f}x")
    if not same:
        sys.exit("fast and naive selection disagree")
    if fast["total"] >= 10.0:
        sys.exit(f"target missed: {fast['total']:.2f} s >= 10 s on one core")


if __name__ == "__main__":
    main()
