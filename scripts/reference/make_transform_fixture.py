#!/usr/bin/env python3
"""Writes tests/fixtures/transforms/: small RGB images and what torchvision's photometric
functionals make of them, which tests/transforms_reference.rs compares
gapmeter::imaging::Photometric::apply against.

Each case is a `Photometric` parameter set (the same JSON field names and identities) run through
torchvision.transforms.v2.functional on the float tensor, in gapmeter's fixed order:

    x = to_dtype(uint8 CHW, float32, scale=True)
    adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue, adjust_gamma,
    gaussian_blur(kernel_size = 2 * ceil(3 * sigma) + 1, sigma)      (each only when not identity)
    uint8 = (x * 255).round().clamp(0, 255)
    jpeg(uint8, quality)                                           (only when quality < 100)

Noise is not here: gapmeter draws it from its own seeded generator, not torch's.

Needs torch and torchvision: the reference venv has both (`"$(scripts/reference/setup.sh)"
scripts/reference/make_transform_fixture.py`). The torch venv (`$GAPMETER_VENV`) lacks
torchvision; a small venv on top of it does too:

    $GAPMETER_VENV/bin/python -m venv --system-site-packages /tmp/tvvenv
    echo "$(echo $GAPMETER_VENV/lib/python3*/site-packages)" \
        > "$(echo /tmp/tvvenv/lib/python3*/site-packages)/torch-venv.pth"
    /tmp/tvvenv/bin/pip install torchvision==0.26.0 --no-deps      # the one built for torch 2.11.0
    /tmp/tvvenv/bin/python scripts/reference/make_transform_fixture.py

Writes index.json (versions, cases with their parameters), inputs.npy (uint8, N x H x W x 3) and
outputs.npy (uint8, cases x N x H x W x 3).

`--sweep N` writes a larger set instead (for measuring, not for committing): ten 64 x 48 images
and N random settings over and beyond the search ranges, each with a random subset of the knobs;
point GAPMETER_TRANSFORM_FIXTURES at its directory and run
`cargo test --test transforms_reference -- --nocapture` to get the figures.

Usage: make_transform_fixture.py [--out DIR] [--sweep N]
"""
import argparse
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as F

ROOT = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 17, 23

IDENTITY = {
    "brightness": 1.0,
    "contrast": 1.0,
    "saturation": 1.0,
    "hue": 0.0,
    "gamma": 1.0,
    "blur_sigma": 0.0,
    "noise_std": 0.0,
    "jpeg_quality": 100,
}


def images():
    """Three 23 x 17 images: uniform noise; gradients with grey pixels (hue's max == min case),
    saturated 0/255 patches and two-channel ties; a five-level palette, where ties between
    channels (which branch of the hue formula applies) are everywhere."""
    rng = np.random.default_rng(20250611)
    noise = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)

    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    smooth = np.stack(
        [
            255 * xx / (WIDTH - 1),
            255 * yy / (HEIGHT - 1),
            127.5 + 127.5 * np.sin(xx / 3.0 + yy / 5.0),
        ],
        axis=-1,
    )
    smooth = np.clip(np.rint(smooth), 0, 255).astype(np.uint8)
    smooth[:4, :5] = 0
    smooth[-4:, -5:] = 255
    smooth[5:9, 2:8] = rng.integers(0, 256, size=(4, 6, 1))  # grey: r == g == b
    smooth[10:13, 10:16, 0] = smooth[10:13, 10:16, 1]  # r == g
    smooth[2:5, 15:20, 2] = smooth[2:5, 15:20, 1]  # g == b

    palette = np.array([0, 64, 128, 191, 255], dtype=np.uint8)
    levels = palette[rng.integers(0, 5, size=(HEIGHT, WIDTH, 3))]
    return np.stack([noise, smooth, levels])


def sweep_images(count, height, width, seed):
    """Half uniform noise, half smooth colour fields with grey and saturated patches."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    for i in range(count):
        if i % 2 == 0:
            out.append(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
            continue
        f = rng.uniform(0.05, 0.5, size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([127.5 + 127.5 * np.sin(f[c, 0] * xx + f[c, 1] * yy + ph[c]) for c in range(3)], -1)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        img[y : y + 8, x : x + 8] = rng.integers(0, 256)
        img[: height // 6, : width // 6] = rng.choice([0, 255], size=3)
        out.append(img)
    return np.stack(out)


def sweep_cases(n, seed):
    """Random settings: each knob present with probability 1/2, drawn from a range a little wider
    than the search's (within what torchvision accepts)."""
    rng = np.random.default_rng(seed)
    draws = {
        "brightness": lambda: float(rng.uniform(0.0, 2.0)),
        "contrast": lambda: float(rng.uniform(0.0, 2.0)),
        "saturation": lambda: float(rng.uniform(0.0, 2.0)),
        "hue": lambda: float(rng.uniform(-0.5, 0.5)),
        "gamma": lambda: float(rng.uniform(0.3, 3.0)),
        "blur_sigma": lambda: float(rng.uniform(0.1, 3.0)),
        "jpeg_quality": lambda: int(rng.integers(1, 100)),
    }
    out = []
    for i in range(n):
        params = {k: d() for k, d in draws.items() if rng.random() < 0.5}
        out.append(case(f"sweep{i}", **params))
    return out


def case(name, **params):
    full = dict(IDENTITY)
    for k, v in params.items():
        assert k in full, k
        full[k] = v
    return {"name": name, "params": full}


def cases():
    out = []
    for v in (0.5, 0.83, 1.27, 1.5):
        out.append(case(f"brightness_{v}", brightness=v))
    for v in (0.5, 0.9, 1.5):
        out.append(case(f"contrast_{v}", contrast=v))
    for v in (0.0, 0.6, 1.5):
        out.append(case(f"saturation_{v}", saturation=v))
    for v in (-0.5, -0.1, 0.037, 0.25, 0.5):
        out.append(case(f"hue_{v}", hue=v))
    for v in (0.5, 0.8, 1.6, 2.0):
        out.append(case(f"gamma_{v}", gamma=v))
    for v in (0.3, 0.8, 1.5, 3.0):
        out.append(case(f"blur_{v}", blur_sigma=v))
    out.append(
        case(
            "combined_a",
            brightness=1.2,
            contrast=0.8,
            saturation=1.3,
            hue=0.05,
            gamma=0.9,
            blur_sigma=0.8,
        )
    )
    out.append(
        case(
            "combined_b",
            brightness=0.7,
            contrast=1.4,
            saturation=0.5,
            hue=-0.08,
            gamma=1.7,
            blur_sigma=1.2,
        )
    )
    for q in (10, 20, 24, 25, 50, 75, 90, 95):
        out.append(case(f"jpeg_{q}", jpeg_quality=q))
    out.append(case("combined_jpeg_60", brightness=1.1, saturation=0.8, gamma=1.2, jpeg_quality=60))
    return out


def apply(img_hwc, p):
    x = F.to_dtype(torch.from_numpy(img_hwc).permute(2, 0, 1).contiguous(), torch.float32, scale=True)
    if p["brightness"] != 1.0:
        x = F.adjust_brightness(x, brightness_factor=p["brightness"])
    if p["contrast"] != 1.0:
        x = F.adjust_contrast(x, contrast_factor=p["contrast"])
    if p["saturation"] != 1.0:
        x = F.adjust_saturation(x, saturation_factor=p["saturation"])
    if p["hue"] != 0.0:
        x = F.adjust_hue(x, hue_factor=p["hue"])
    if p["gamma"] != 1.0:
        x = F.adjust_gamma(x, gamma=p["gamma"])
    if p["blur_sigma"] > 0.0:
        s = p["blur_sigma"]
        k = 2 * math.ceil(3 * s) + 1
        x = F.gaussian_blur(x, kernel_size=[k, k], sigma=[s, s])
    assert p["noise_std"] == 0.0
    u8 = x.mul(255).round().clamp(0, 255).to(torch.uint8)
    if p["jpeg_quality"] < 100:
        u8 = F.jpeg(u8, quality=p["jpeg_quality"])
    return u8.permute(1, 2, 0).contiguous().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/transforms")
    ap.add_argument("--sweep", type=int, default=0, metavar="N")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    if args.sweep:
        inputs = sweep_images(10, 48, 64, seed=7)
        all_cases = sweep_cases(args.sweep, seed=8)
    else:
        inputs = images()
        all_cases = cases()
    outputs = np.stack([np.stack([apply(img, c["params"]) for img in inputs]) for c in all_cases])
    np.save(args.out / "inputs.npy", inputs)
    np.save(args.out / "outputs.npy", outputs)
    index = {
        "generator": "scripts/reference/make_transform_fixture.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
        "kernel_size_rule": "2 * ceil(3 * sigma) + 1",
        "images": {"count": int(inputs.shape[0]), "height": int(inputs.shape[1]), "width": int(inputs.shape[2])},
        "cases": all_cases,
    }
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{len(all_cases)} cases x {inputs.shape[0]} images -> {args.out}")


if __name__ == "__main__":
    main()
