#!/usr/bin/env python3
"""Writes the untrained, seeded test extractors gapmeter's tests and demo use (never downloaded):

* inception-v3-fid-untrained: pytorch-fid's FID Inception-v3 architecture, seeded init, BatchNorm
  recalibrated so the 2048-d pool features are O(1);
* tiny-cnn: a small CNN (64 x 64 input) for fast tests.

Idempotent: a model is rewritten only when this generator (its sources or seed) changed.
Usage: make_test_models.py [--out DIR] [--seed N] [--only ID]
"""
import argparse
import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from gapmeter_models.export import export, seeded_untrained  # noqa: E402
from gapmeter_models.inception_fid import FIDInceptionV3  # noqa: E402
from gapmeter_models.tiny import TinyCNN  # noqa: E402


def generator_hash(seed: int) -> str:
    h = hashlib.sha256(f"seed={seed};torch={torch.__version__.split('+')[0]}".encode())
    for f in sorted([HERE / "make_test_models.py", *(HERE / "gapmeter_models").glob("*.py")]):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def up_to_date(out: Path, model_id: str, ghash: str) -> bool:
    manifest = out / f"{model_id}.toml"
    return (out / f"{model_id}.pt").exists() and manifest.exists() and (
        f'generator = "{ghash}"' in manifest.read_text()
    )


def build_inception(seed):
    model = seeded_untrained(FIDInceptionV3(), seed, calibration=48, size=299)
    return model, torch.zeros(1, 3, 299, 299), {
        "id": "inception-v3-fid-untrained",
        "input_size": 299,
        "resize": "clean",
        "input_range": "-1-1",
        "outputs": ["pool", "logits", "early"],
        "features": "pool",
        "trained": False,
        "description": "pytorch-fid's FID Inception-v3 architecture, untrained (seeded), for tests",
    }


def build_tiny(seed):
    model = seeded_untrained(TinyCNN(), seed, calibration=96, size=64)
    return model, torch.zeros(1, 3, 64, 64), {
        "id": "tiny-cnn",
        "input_size": 64,
        "resize": "clean",
        "input_range": "0-1",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "outputs": ["pool", "logits", "early"],
        "features": "pool",
        "trained": False,
        "description": "small seeded CNN with pool/logits/early taps, for fast tests",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_out = os.environ.get("GAPMETER_MODELS_DIR",
                                 str(Path.home() / ".cache" / "gapmeter" / "models"))
    p.add_argument("--out", default=default_out)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["inception-v3-fid-untrained", "tiny-cnn"])
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    ghash = generator_hash(args.seed)
    for model_id, build in (("tiny-cnn", build_tiny), ("inception-v3-fid-untrained", build_inception)):
        if args.only and args.only != model_id:
            continue
        if up_to_date(out, model_id, ghash):
            continue
        print(f"make_test_models: writing {model_id} to {out}", file=sys.stderr)
        model, example, manifest = build(args.seed)
        manifest.update(seed=args.seed, generator=ghash)
        export(model, example, out, manifest)


if __name__ == "__main__":
    main()
