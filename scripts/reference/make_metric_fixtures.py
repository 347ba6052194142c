#!/usr/bin/env python3
"""Writes tests/fixtures/reference/: feature fixtures and the values the reference packages compute
on them. The Rust tests compare gapmeter against these numbers.

* pytorch-fid `calculate_frechet_distance` (scipy sqrtm) for FID, on float64 statistics;
* torch-fidelity `kid_features_to_metric` for KID (float64 features): one subset of the full set
  size, and the default 100 random subsets of 1000 with seed 2020;
* a 2048-d FID case whose features both sides regenerate from numpy's legacy RandomState stream
  (so no large file is committed);
* torch-fidelity `isc_features_to_metric` for IS on logits, with and without shuffling;
* the `prdc` package's `compute_prdc` for precision/recall (k = 3) and density/coverage (k = 5);
* CMMD and RBF MMD² written out in numpy after the published CMMD code (google-research/cmmd,
  `distance.py`: biased estimator, sigma 10, scale 1000); neither is on PyPI as a package.

Run through `make fixtures` (it installs the reference packages into their own cached venv).
"""
import json
import sys
from pathlib import Path

import numpy as np
import scipy
import torch

import pytorch_fid
import torch_fidelity
from pytorch_fid.fid_score import calculate_frechet_distance
from prdc import compute_prdc
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference"


def features(rng, n, d, k, shift, warp):
    """Correlated, non-Gaussian features like a network's pooled activations."""
    z = rng.standard_normal((n, k))
    w = rng.standard_normal((k, d)) / np.sqrt(k)
    x = z @ w + shift
    x = np.log1p(np.exp(x * warp))  # softplus: non-negative, skewed
    return x.astype(np.float32)


def stats(f):
    f = f.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def kid(f1, f2, **kw):
    out = kid_features_to_metric(torch.from_numpy(f1.astype(np.float64)),
                                 torch.from_numpy(f2.astype(np.float64)), verbose=False, **kw)
    return {"mean": float(out["kernel_inception_distance_mean"]),
            "std": float(out["kernel_inception_distance_std"])}


def legacy_features(seed, n, d, kind):
    """Features regenerated bit-for-bit in Rust: RandomState(seed).random_sample((n, d)), then
    elementwise operations only."""
    u = np.random.RandomState(seed).random_sample((n, d))
    if kind == "banded":
        return u + 0.5 * np.roll(u, -1, axis=1)
    return 1.2 * u * u + 0.1


def rbf_mmd2(x, y, sigma, unbiased):
    def k(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-np.maximum(d2, 0) / (2 * sigma**2))
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        m, n = len(x), len(y)
        return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                - 2 * kxy.mean())
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def cmmd(x, y):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return 1000 * rbf_mmd2(x, y, 10.0, unbiased=False)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261126)
    d = 128
    src = features(rng, 1200, d, 96, 0.0, 1.0)
    tgt = features(rng, 1100, d, 96, 0.15, 1.2)
    np.save(OUT / "source.npy", src)
    np.save(OUT / "target.npy", tgt)
    np.save(OUT / "source_1000.npy", src[:1000])
    np.save(OUT / "target_1000.npy", tgt[:1000])
    mu1, s1 = stats(src)
    mu2, s2 = stats(tgt)
    np.savez(OUT / "source_stats.npz", mu=mu1, sigma=s1)
    np.savez(OUT / "target_stats.npz", mu=mu2, sigma=s2)
    fid = float(calculate_frechet_distance(mu1, s1, mu2, s2))

    big_s = legacy_features(1, 2500, 2048, "banded")
    big_t = legacy_features(2, 2600, 2048, "square")
    fid_2048 = float(calculate_frechet_distance(*stats(big_s), *stats(big_t)))

    logits = (rng.standard_normal((500, 50)) * 2.5 + rng.standard_normal(50) * 1.5).astype(np.float32)
    np.save(OUT / "logits.npy", logits)
    lt = torch.from_numpy(logits)
    is_plain = isc_features_to_metric(lt, splits=10, shuffle=False)
    is_shuffled = isc_features_to_metric(lt, splits=10, shuffle=True, rng_seed=2020)

    s64, t64 = src.astype(np.float64), tgt.astype(np.float64)
    pr = compute_prdc(real_features=t64, fake_features=s64, nearest_k=3)
    dc = compute_prdc(real_features=t64, fake_features=s64, nearest_k=5)
    # Roles swapped, so recall is not trivially 0 on these sets.
    pr_sw = compute_prdc(real_features=s64, fake_features=t64, nearest_k=3)
    dc_sw = compute_prdc(real_features=s64, fake_features=t64, nearest_k=5)

    ref = {
        "about": "values computed by scripts/reference/make_metric_fixtures.py",
        "versions": {
            "numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
            "pytorch_fid": pytorch_fid.__version__, "torch_fidelity": torch_fidelity.__version__,
            "prdc": "0.2",
        },
        "fid": fid,
        "kid_full_subset": dict(kid(src[:1000], tgt[:1000], kid_subsets=1, kid_subset_size=1000),
                                subsets=1, subset_size=1000),
        "kid_default": dict(kid(src, tgt, kid_subsets=100, kid_subset_size=1000, rng_seed=2020),
                            subsets=100, subset_size=1000, seed=2020),
        "is_no_shuffle": {"mean": is_plain["inception_score_mean"], "std": is_plain["inception_score_std"],
                          "splits": 10},
        "is_shuffle_2020": {"mean": is_shuffled["inception_score_mean"],
                            "std": is_shuffled["inception_score_std"], "splits": 10, "seed": 2020},
        "prdc": {"precision": float(pr["precision"]), "recall": float(pr["recall"]),
                 "density": float(dc["density"]), "coverage": float(dc["coverage"]),
                 "k_pr": 3, "k_dc": 5},
        "prdc_swapped": {"precision": float(pr_sw["precision"]), "recall": float(pr_sw["recall"]),
                         "density": float(dc_sw["density"]), "coverage": float(dc_sw["coverage"]),
                         "k_pr": 3, "k_dc": 5},
        "cmmd": float(cmmd(s64, t64)),
        "mmd_sigma_4": {"biased": float(rbf_mmd2(s64, t64, 4.0, False)),
                        "unbiased": float(rbf_mmd2(s64, t64, 4.0, True))},
        "fid_2048": {"value": fid_2048, "source": {"seed": 1, "n": 2500, "kind": "banded"},
                     "target": {"seed": 2, "n": 2600, "kind": "square"}},
    }
    (OUT / "metrics.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(json.dumps(ref, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
