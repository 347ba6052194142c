#!/usr/bin/env python3
"""Writes a seeded synthetic text tower (TorchScript) for tests of gapmeter's text encoders.

The tower embeds a prompt as the mean of a seeded vocab x D table's rows over its tokens (those
between start and end of text): see gapmeter_models/text.py. Each --plant A B DIRECTION.npy SCALE
sets row B = row A + SCALE * DIRECTION / |DIRECTION| (DIRECTION: a float64 .npy vector of length
D), so that prompts differing only in token A vs token B embed apart along DIRECTION.

Writes DIR/text.pt and prints one JSON line: {"file": "text.pt", "sha256": ..., "dim": D}.

Usage: make_text_tower.py --out DIR --dim D --seed S [--plant A B DIRECTION.npy SCALE]...
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from gapmeter_models.text import write_synthetic  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="directory to write text.pt into")
    p.add_argument("--dim", type=int, required=True, help="embedding size D")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--plant", nargs=4, action="append", default=[],
                   metavar=("A", "B", "DIRECTION.npy", "SCALE"),
                   help="row B = row A + SCALE * unit(DIRECTION); repeatable")
    args = p.parse_args()
    if args.dim <= 0:
        p.error("--dim must be positive")
    plants = []
    for a, b, path, scale in args.plant:
        direction = np.load(path)
        if direction.dtype != np.float64:
            p.error(f"{path}: expected a float64 vector, got {direction.dtype}")
        plants.append((int(a), int(b), direction, float(scale)))
    try:
        info = write_synthetic(Path(args.out), args.dim, args.seed, plants)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
