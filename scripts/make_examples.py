#!/usr/bin/env python3
"""Generates the bundled example images (licence-clean: made here, seeded) in two visibly different
domains, for the README demo and tests:

* examples/A ("renders"): flat-shaded shapes on smooth gradients, like clean synthetic renders;
* examples/B ("photos"): textured, noisy scenes with soft light, like sensor images.

Formats are mixed (PNG, JPEG, WebP) and sizes vary, so decoding and resizing are exercised.
Usage: make_examples.py [--out examples] [--n 24] [--seed 7]
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FORMATS = [("png", {}), ("jpg", {"quality": 90}), ("webp", {"quality": 90})]


def render(rng, w, h):
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    c0, c1 = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) % 1.0
    img = Image.fromarray((c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 5)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, w / 3)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        else:
            d.rectangle([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=col)
    return img


def photo(rng, w, h):
    base = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    a = np.asarray(img).astype(np.float64)
    y, x = np.mgrid[0:h, 0:w]
    stripes = 30 * np.sin(2 * np.pi * (x * rng.uniform(0.05, 0.2) + y * rng.uniform(0.05, 0.2)))
    light = 0.6 + 0.4 * np.exp(-((x - rng.uniform(0, w)) ** 2 + (y - rng.uniform(0, h)) ** 2) / (w * h / 3))
    a = (a * 0.6 + 90 + stripes[..., None]) * light[..., None] + rng.normal(0, 18, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "examples"))
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    for domain, make in (("A", render), ("B", photo)):
        out = Path(args.out) / domain
        out.mkdir(parents=True, exist_ok=True)
        for i in range(args.n):
            w, h = int(rng.integers(72, 129)), int(rng.integers(72, 129))
            ext, kw = FORMATS[i % len(FORMATS)]
            make(rng, w, h).save(out / f"{domain.lower()}{i:03d}.{ext}", **kw)


if __name__ == "__main__":
    main()
