#!/usr/bin/env python3
"""Writes tests/fixtures/extractors/: two generated image sets and the FID that clean-fid and
pytorch-fid give for them with the untrained, seeded FID Inception of scripts/export_models.py.
tests/extractors.rs re-exports that model, runs `gapmeter score` with both of its manifests
and compares.

* clean-fid 0.1.35: compute_fid(mode="clean", custom_feat_extractor=...): clean-fid resizes with
  PIL bicubic on float32 and hands the model 0-255 values; the wrapper applies (x - 128) / 128 as
  clean-fid's own InceptionV3W does, i.e. what the `inception-v3-fid*` manifest says.
* pytorch-fid 0.3.0: calculate_fid_given_paths with its own InceptionV3 class (bilinear resize,
  2x - 1), the seeded weights loaded into it with strict=True; this also checks that
  FIDInceptionV3's parameter names are pytorch-fid's.

Run with the reference venv: "$(scripts/reference/setup.sh)" scripts/reference/make_extractor_fixtures.py
"""
import argparse
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from gapmeter_models.export import export  # noqa: E402
from gapmeter_models.zoo import build_inception  # noqa: E402

SEED = 11
COUNTS = {"a": 100, "b": 110}


def make_image(rng: random.Random, domain: str) -> Image.Image:
    """Flat shapes on a two-colour gradient (compresses to a few KB as PNG). Domain b is warmer,
    has more, smaller shapes and stripes; the two domains overlap but are not the same."""
    w, h = rng.randint(64, 96), rng.randint(64, 96)
    warm = domain == "b"
    c0 = [rng.randint(0, 255) for _ in range(3)]
    c1 = [rng.randint(0, 255) for _ in range(3)]
    if warm:
        c0[0], c1[2] = max(c0[0], 160), min(c1[2], 90)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    grad = np.outer(1 - t, c0) + np.outer(t, c1)
    arr = np.repeat(grad[None], h, 0) if len(t) == w else np.repeat(grad[:, None], w, 1)
    img = Image.fromarray(np.rint(arr).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(5, 9) if warm else rng.randint(2, 5)):
        x0, y0 = rng.randint(-10, w), rng.randint(-10, h)
        s = rng.randint(6, 20) if warm else rng.randint(12, 40)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        shape = rng.choice(["ellipse", "rectangle", "polygon"])
        if shape == "ellipse":
            d.ellipse([x0, y0, x0 + s, y0 + s * rng.uniform(0.5, 1.5)], fill=fill)
        elif shape == "rectangle":
            d.rectangle([x0, y0, x0 + s, y0 + s * rng.uniform(0.3, 1.0)], fill=fill)
        else:
            pts = [(x0 + s * math.cos(a), y0 + s * math.sin(a))
                   for a in sorted(rng.uniform(0, 2 * math.pi) for _ in range(3))]
            d.polygon(pts, fill=fill)
    if warm:
        for x in range(rng.randint(0, 5), w, rng.randint(6, 12)):
            d.line([x, 0, x + rng.randint(-20, 20), h], fill=(255, 255, 255), width=1)
    return img


def write_sets(out: Path):
    rng = random.Random(SEED)
    for domain, n in COUNTS.items():
        d = out / domain
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.png"):
            old.unlink()
        for i in range(n):
            make_image(rng, domain).save(d / f"{domain}{i:03d}.png", optimize=True)


def ref_clean_fid(model, a, b):
    from cleanfid import fid

    def extractor(x):
        # clean-fid's InceptionV3W: x1 = x - 128; x2 = x1 / 128.
        return model((x - 128) / 128)[0]

    return fid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=extractor,
                           num_workers=0, batch_size=50, device=torch.device("cpu"),
                           verbose=False)


def ref_pytorch_fid(state, a, b):
    import pytorch_fid.inception as inc
    from pytorch_fid import fid_score

    # fid_inception_v3() fetches pt_inception-2015-12-05 with load_state_dict_from_url and loads
    # it strictly; handing it the seeded state dict instead checks the names match.
    inc.load_state_dict_from_url = lambda *args, **kw: state
    # batch_size=1: pytorch-fid stacks images before its in-model resize, so a batch must hold
    # images of one size; the generated sets deliberately mix sizes.
    return fid_score.calculate_fid_given_paths([str(a), str(b)], batch_size=1, device="cpu",
                                               dims=2048, num_workers=0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "extractors"))
    args = p.parse_args()
    out = Path(args.out)
    torch.set_num_threads(2)
    write_sets(out)
    model, example, manifests = build_inception(False, SEED)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        pt = export(model, example, Path(tmp), manifests[0])
        traced = torch.jit.load(str(pt)).eval()
        from gapmeter_models.export import weights_sha256
        sha = weights_sha256(traced)
    with torch.no_grad():
        clean = float(ref_clean_fid(traced, out / "a", out / "b"))
        print(f"clean-fid: {clean}", file=sys.stderr)
        legacy = float(ref_pytorch_fid(model.state_dict(), out / "a", out / "b"))
    import cleanfid
    import pytorch_fid
    import PIL
    result = {
        "model": {"export": f"scripts/export_models.py --untrained --seed {SEED} inception-v3-fid",
                  "weights_sha256": sha},
        "counts": COUNTS,
        "clean_fid": clean,
        "pytorch_fid": legacy,
        "versions": {"clean-fid": getattr(cleanfid, "__version__", "0.1.35"),
                     "pytorch-fid": pytorch_fid.__version__, "torch": torch.__version__,
                     "pillow": PIL.__version__},
    }
    (out / "parity.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
