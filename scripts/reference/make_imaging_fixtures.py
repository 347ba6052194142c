#!/usr/bin/env python3
"""Writes tests/fixtures/imaging/: inputs and the outputs Pillow and torch give for them, which
tests/imaging_parity.rs compares gapmeter's decoding and resizing against.

Needs only numpy, pillow and torch: run it with the torch venv (`$GAPMETER_PYTHON`, exported by
scripts/with-libtorch.sh) or the reference venv; both carry Pillow 13 with libjpeg-turbo.

* `clean_*`: clean-fid's resize (cleanfid/resize.py, make_resizer("PIL", False, "bicubic")):
  each channel as a float32 "F" image, Image.BICUBIC, clipped to [0, 255].
* `legacy_*`: pytorch-fid's path: ToTensor (uint8 / 255 in float32), then
  F.interpolate(mode="bilinear", align_corners=False).
* `decode_*`: np.array(Image.open(f).convert("RGB")) for JPEG, PNG variants, WebP, GIF, BMP, TIFF.

Resize outputs at 299 x 299 are large (1 MB each in float32), so they are stored at a fixed
sample of pixels: every 4th pixel of the two outermost rows and columns plus a seeded random sample inside. Each
`*.npy` resize fixture is float32 K x 5: y, x, then the three channel values. `--full DIR` writes
every pixel instead (for measuring, not for committing): point GAPMETER_IMAGING_FIXTURES at DIR
and run `cargo test --test imaging_parity -- --nocapture` to get whole-image figures.

Usage: make_imaging_fixtures.py [--out DIR] [--full]
"""
import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

# (name, input width x height, output width x height): up- and down-scaling, odd sizes, 299 x 299,
# non-square and mixed (down one axis, up the other).
RESIZE_CASES = [
    ("up_61x47_to_299", (61, 47), (299, 299)),
    ("down_331x307_to_299", (331, 307), (299, 299)),
    ("down_383x305_to_97x77", (383, 305), (97, 77)),
    ("down_97x73_to_64", (97, 73), (64, 64)),
    ("up_40x30_to_57x91", (40, 30), (57, 91)),
    ("mixed_120x90_to_33x150", (120, 90), (33, 150)),
    ("down_1001x13_to_224", (1001, 13), (224, 224)),
]


def synthetic(w, h, seed):
    """A photo stand-in that PNG compresses well yet exercises every filter tap: gradients, hard
    edged shapes, fine stripes near the Nyquist rate, a noise patch, saturated 0/255 regions
    (where clamping matters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        img[..., c] = 255 * (0.5 + 0.5 * np.sin(xx / (w / (2 + c)) + yy / (h / (1 + c)) + c))
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(2, max(3, w // 3)), y0 + rng.integers(2, max(3, h // 3))
        img[y0:y1, x0:x1] = rng.choice([0, 255, 37, 200], size=3)
    stripes = (np.sin(xx * 2.7 + yy * 0.9) > 0) * 255.0
    band = slice(h // 3, h // 3 + max(2, h // 8))
    img[band, :, 1] = stripes[band]
    ph, pw = max(2, h // 10), max(2, w // 10)
    img[-ph:, -pw:] = rng.integers(0, 256, size=(ph, pw, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def clean_resize(rgb, out_wh):
    # Verbatim clean-fid: cleanfid/resize.py, make_resizer("PIL", False, "bicubic", out_wh).
    s1, s2 = out_wh
    chans = []
    for c in range(3):
        img = Image.fromarray(rgb[:, :, c].astype(np.float32), mode="F")
        img = img.resize(out_wh, resample=Image.BICUBIC)
        chans.append(np.asarray(img).clip(0, 255).reshape(s2, s1, 1))
    return np.concatenate(chans, axis=2).astype(np.float32)


def legacy_resize(rgb, out_wh):
    # pytorch-fid: torchvision ToTensor, then F.interpolate inside its InceptionV3.
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float().div(255)[None]
    x = F.interpolate(x, size=(out_wh[1], out_wh[0]), mode="bilinear", align_corners=False)
    return x[0].numpy().transpose(1, 2, 0)


def sample_positions(h, w, seed, full, inner_count):
    if full or h * w <= 32 * 32:
        yy, xx = np.mgrid[0:h, 0:w]
        return yy.ravel(), xx.ravel()
    border = set()
    for x in range(0, w, 4):
        border.update({(0, x), (1, x), (h - 1, x), (h - 2, x)})
    for y in range(0, h, 4):
        border.update({(y, 0), (y, 1), (y, w - 1), (y, w - 2)})
    rng = np.random.default_rng(seed)
    inner = {(int(y), int(x)) for y, x in zip(rng.integers(0, h, inner_count), rng.integers(0, w, inner_count))}
    pts = sorted(border | inner)
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def samples(hwc, seed, full, inner_count):
    ys, xs = sample_positions(hwc.shape[0], hwc.shape[1], seed, full, inner_count)
    vals = hwc[ys, xs, :].astype(np.float32)
    return np.concatenate([ys[:, None].astype(np.float32), xs[:, None].astype(np.float32), vals], 1)


def save_png(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)


def decode_cases(out):
    """Files in every decodable format and variant, and Pillow's RGB for each."""
    base = synthetic(45, 33, 7)
    small = synthetic(23, 17, 9)
    rgba = np.concatenate([small, np.linspace(0, 255, 23 * 17).reshape(17, 23, 1).astype(np.uint8)], 2)
    made = {}

    def keep(name, data):
        (out / name).write_bytes(data)
        made[name] = data

    def encode(img, fmt, **kw):
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    # JPEG: 4:2:0 at the quality most photos have, 4:4:4 at high quality, 4:2:2, progressive,
    # grayscale, and an odd size so partial MCUs at the right and bottom edges are covered.
    im = Image.fromarray(base)
    keep("jpeg_q75_420.jpg", encode(im, "JPEG", quality=75, subsampling=2))
    keep("jpeg_q95_444.jpg", encode(im, "JPEG", quality=95, subsampling=0))
    keep("jpeg_q90_422.jpg", encode(im, "JPEG", quality=90, subsampling=1))
    keep("jpeg_q85_420_progressive.jpg", encode(im, "JPEG", quality=85, subsampling=2, progressive=True))
    keep("jpeg_q95_420_odd.jpg", encode(Image.fromarray(synthetic(29, 19, 8)), "JPEG", quality=95, subsampling=2))
    keep("jpeg_gray_q80.jpg", encode(im.convert("L"), "JPEG", quality=80))
    # PNG variants: alpha is dropped by convert("RGB"), palettes expand, grayscale replicates.
    keep("png_rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    sm = Image.fromarray(small)
    keep("png_gray.png", encode(sm.convert("L"), "PNG"))
    keep("png_gray_alpha.png", encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG"))
    keep("png_palette.png", encode(sm.convert("P", palette=Image.ADAPTIVE, colors=17), "PNG"))
    # 16-bit RGB: Pillow keeps the high byte of each sample.
    deep = small.astype(np.uint16) * 257 + np.arange(23, dtype=np.uint16)[None, :, None] * 11
    keep("png_rgb16.png", png16(deep))
    keep("webp_lossless.webp", encode(im, "WEBP", lossless=True))
    keep("webp_lossy_q80.webp", encode(im, "WEBP", quality=80))
    frames = [sm, Image.fromarray(255 - small)]
    keep("gif_two_frames.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    keep("bmp_rgb.bmp", encode(sm, "BMP"))
    keep("tiff_rgb.tiff", encode(sm, "TIFF"))
    expected = {}
    for name, data in made.items():
        rgb = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        np.save(out / f"{name}.rgb.npy", rgb)
        expected[name] = list(rgb.shape)
    return expected


def png16(arr):
    """A 16-bit RGB PNG written by hand: Pillow cannot save one."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "imaging"))
    p.add_argument("--full", action="store_true", help="store every output pixel (large)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = {"resize": [], "decode": {}}
    for i, (name, in_wh, out_wh) in enumerate(RESIZE_CASES):
        rgb = synthetic(*in_wh, seed=100 + i)
        src = f"{name}.png"
        save_png(out / src, rgb, optimize=True)
        np.save(out / f"clean_{name}.npy", samples(clean_resize(rgb, out_wh), i, args.full, 700))
        np.save(out / f"legacy_{name}.npy", samples(legacy_resize(rgb, out_wh), i, args.full, 200))
        index["resize"].append({"name": name, "input": src, "width": out_wh[0], "height": out_wh[1]})
    index["decode"] = decode_cases(out)
    import PIL
    from PIL import features
    index["pillow"] = PIL.__version__
    index["libjpeg"] = features.version("jpg")
    index["torch"] = torch.__version__
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
