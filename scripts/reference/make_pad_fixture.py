#!/usr/bin/env python3
"""Writes tests/fixtures/pad/pad.json: feature sets, their cross-validation folds, and the Proxy-A
distance scikit-learn computes on them. tests/pad_reference.rs checks gapmeter's PAD against it.

The classifier is sklearn's LogisticRegression (L2 penalty, C, intercept fitted and not
penalised; lbfgs driven to tol 1e-10, max_iter 10000) after a StandardScaler fitted on each
training fold, the pipeline gapmeter's `proxy_a_distance` reproduces. The folds are stored with the
data, and are made by gapmeter's rule (`fold_assignment`), which the Rust test also checks:

    rs = np.random.RandomState(seed)
    ps, pt = rs.permutation(n_source), rs.permutation(n_target)
    fold[ps[r]] = r % k;  fold[n_source + pt[r]] = r % k

Features are rounded to 4 decimals before anything is computed, so the JSON holds the very values
both sides use. Needs only numpy and scikit-learn:

    python3 -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-learn numpy
    /tmp/skvenv/bin/python scripts/reference/make_pad_fixture.py
"""
import json
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "pad" / "pad.json"


def folds_for(n_source, n_target, k, seed):
    rs = np.random.RandomState(seed)
    ps, pt = rs.permutation(n_source), rs.permutation(n_target)
    folds = np.zeros(n_source + n_target, dtype=int)
    folds[ps] = np.arange(n_source) % k
    folds[n_source + pt] = np.arange(n_target) % k
    return folds


def objective_gradient(x, y, c, w, b):
    """Gradient of 1/2 |w|^2 + C sum logloss at (w, b): how far sklearn stopped from the optimum."""
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    r = c * (p - y)
    return np.concatenate([w + x.T @ r, [r.sum()]])


def pad_case(name, source, target, k=5, c=1.0, seed=0, standardize=True):
    source, target = np.round(source, 4), np.round(target, 4)
    x = np.vstack([source, target])
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    folds = folds_for(len(source), len(target), k, seed)
    wrong, n_test, coef0, intercept0, grad = [], [], None, None, 0.0
    for f in range(k):
        train, test = folds != f, folds == f
        x_train, x_test = x[train], x[test]
        if standardize:
            scaler = StandardScaler().fit(x_train)
            x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        model = LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10000)
        model.fit(x_train, y[train])
        w, b = model.coef_[0], model.intercept_[0]
        grad = max(grad, np.abs(objective_gradient(x_train, y[train], c, w, b)).max())
        predicted = (x_test @ w + b > 0).astype(float)
        wrong.append(int((predicted != y[test]).sum()))
        n_test.append(int(test.sum()))
        if f == 0:
            coef0, intercept0 = w.tolist(), float(b)
    error = sum(wrong) / len(y)
    return {
        "name": name,
        "folds_k": k,
        "c": c,
        "seed": seed,
        "standardize": standardize,
        "source": source.tolist(),
        "target": target.tolist(),
        "folds": folds.tolist(),
        "fold_wrong": wrong,
        "fold_n_test": n_test,
        "fold_errors": [w / n for w, n in zip(wrong, n_test)],
        "error": error,
        "pad": 2.0 * (1.0 - 2.0 * error),
        "coef0": coef0,
        "intercept0": intercept0,
        "sklearn_max_gradient": float(grad),
    }


def main():
    rng = np.random.default_rng(15)
    cases = []
    one = rng.standard_normal((200, 10))
    cases.append(pad_case("same_distribution", one[:100], one[100:], seed=1))
    cases.append(
        pad_case(
            "separable",
            rng.standard_normal((80, 10)),
            rng.standard_normal((80, 10)) + 3.0,
            seed=2,
        )
    )
    cases.append(
        pad_case(
            "overlapping",
            rng.standard_normal((150, 12)),
            1.2 * rng.standard_normal((120, 12)) + 0.4,
            c=0.5,
            seed=3,
        )
    )
    # d > n: 300 features, 64 training samples per fold (gapmeter's row-space Newton route).
    cases.append(
        pad_case(
            "wide",
            rng.standard_normal((40, 300)),
            rng.standard_normal((40, 300)) + 0.15,
            seed=4,
        )
    )
    # Duplicate rows and a constant column (zero variance: StandardScaler leaves it unscaled).
    s = rng.standard_normal((60, 8))
    t = rng.standard_normal((60, 8)) + 0.5
    s[10:20], t[5:15] = s[0:10], t[0:10]
    s[:, 3] = t[:, 3] = 2.5
    cases.append(pad_case("rank_deficient", s, t, seed=5))
    # No standardisation, features on different scales, C = 2, 4 folds.
    scales = np.array([1.0, 10.0, 0.1, 3.0, 0.5, 1.0])
    cases.append(
        pad_case(
            "raw_features",
            rng.standard_normal((70, 6)) * scales,
            (rng.standard_normal((70, 6)) + 0.3) * scales,
            k=4,
            c=2.0,
            seed=2**32 - 1,
            standardize=False,
        )
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generator": "scripts/reference/make_pad_fixture.py",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "solver": "LogisticRegression(C=c, solver='lbfgs', tol=1e-10, max_iter=10000), L2, "
        "StandardScaler per training fold",
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    for case in cases:
        print(f"{case['name']}: PAD {case['pad']:.4f}, fold errors {case['fold_errors']}, "
              f"sklearn max |gradient| {case['sklearn_max_gradient']:.2e}")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
