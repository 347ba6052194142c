#!/usr/bin/env python3
"""End-to-end throughput: gapmeter score against clean-fid 0.1.35 on the same generated JPEGs and
the same TorchScript model, interleaved over several rounds, plus the model-alone ceiling.

Both sides run as fresh processes and are timed from start to exit, so each pays for its own
start-up, model load, decoding, resizing, inference and FID. Both use the same libtorch (the bench
venv imports the libtorch venv's torch). Printed: images/s of each run, the medians, gapmeter's
speed-up over clean-fid, and gapmeter's share of the model-alone ceiling at the batch size
gapmeter chose.

Run through `make bench-e2e`; arguments: --images N per set, --rounds R, --batch-size B|auto.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path


def make_sets(root: Path, n: int, seed: int) -> tuple[Path, Path]:
    """Photo-like JPEGs of varied sizes: smooth colour fields, texture noise and shapes; set b is
    warmer and busier. Cached by (n, seed)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    out = root / f"jpeg-{n}-{seed}"
    stamp = out / ".complete"
    if stamp.exists():
        return out / "a", out / "b"
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for domain in ("a", "b"):
        d = out / domain
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = rng.randint(256, 512), rng.randint(256, 512)
            base = nrng.uniform(0, 255, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
            if domain == "b":
                r, g, b = img.split()
                img = Image.merge("RGB", (r.point(lambda v: min(255, v + 40)), g, b))
            noise = nrng.normal(0, 12 if domain == "a" else 20, (h, w, 3))
            arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            draw = ImageDraw.Draw(img)
            for _ in range(rng.randint(2, 6) if domain == "a" else rng.randint(6, 12)):
                x0, y0 = rng.randint(0, w), rng.randint(0, h)
                s = rng.randint(16, 96)
                fill = tuple(rng.randint(0, 255) for _ in range(3))
                draw.ellipse([x0, y0, x0 + s, y0 + s], fill=fill)
            img = img.filter(ImageFilter.GaussianBlur(0.6))
            img.save(d / f"{domain}{i:04d}.jpg", quality=90)
    stamp.touch()
    return out / "a", out / "b"


def normaliser(manifest: dict):
    """The manifest's input transform for 0-255 float input (docs/extractors.md)."""
    import torch

    rng = manifest.get("input_range", "0-255")
    mean, std = manifest.get("mean"), manifest.get("std")

    def f(x):
        if rng == "0-1":
            x = x / 255.0
        elif rng == "-1-1":
            x = x / 255.0 * 2.0 - 1.0
        if mean is not None:
            x = x - torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
        if std is not None:
            x = x / torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
        return x

    return f


def child_cleanfid(args):
    import torch
    from cleanfid import fid

    manifest = tomllib.loads(Path(args.manifest).read_text())
    if manifest.get("resize", "clean") != "clean":
        sys.exit("clean-fid's mode='clean' resize needs a manifest with resize = \"clean\"")
    model = torch.jit.load(str(Path(args.manifest).parent / manifest["file"])).eval()
    norm = normaliser(manifest)
    outputs = manifest["outputs"]
    idx = outputs.index(manifest.get("features", outputs[0]))

    def extractor(x):
        with torch.no_grad():
            out = model(norm(x))
        return out[idx] if isinstance(out, (tuple, list)) else out

    # clean-fid's defaults (batch 32) except the device and the DataLoader workers: its default
    # of 12 processes over-subscribes a small machine (torch warns), so one per CPU instead.
    # clean-fid's FID step (scipy sqrtm at d x d) is timed on its own, so the report can say how
    # much of clean-fid's run it is.
    frechet, spent = fid.frechet_distance, []

    def timed_frechet(*a, **kw):
        t0 = time.perf_counter()
        out = frechet(*a, **kw)
        spent.append(time.perf_counter() - t0)
        return out

    fid.frechet_distance = timed_frechet
    value = fid.compute_fid(args.a, args.b, mode="clean", custom_feat_extractor=extractor,
                            device=torch.device("cpu"), num_workers=os.cpu_count() or 1,
                            verbose=False)
    print(json.dumps({"fid": float(value), "fid_step_s": sum(spent)}))


def child_model_alone(args):
    import torch

    manifest = tomllib.loads(Path(args.manifest).read_text())
    model = torch.jit.load(str(Path(args.manifest).parent / manifest["file"])).eval()
    size = manifest["input_size"]
    h, w = (size, size) if isinstance(size, int) else size
    b = args.batch
    x = torch.rand(b, 3, h, w) * 2 - 1
    with torch.no_grad():
        model(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while n < args.images:
            model(x)
            n += b
        dt = time.perf_counter() - t0
    print(json.dumps({"images_per_s": n / dt, "threads": torch.get_num_threads()}))


def timed(cmd, env=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt, p.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gapmeter")
    p.add_argument("--models-dir")
    p.add_argument("--extractor", default="inception-v3-fid-untrained")
    p.add_argument("--images", type=int, default=96, help="images per set")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--child", choices=["cleanfid", "model"])
    p.add_argument("--manifest")
    p.add_argument("--a")
    p.add_argument("--b")
    p.add_argument("--batch", type=int)
    p.add_argument("--make-sets-only", action="store_true",
                   help="write the two JPEG sets, print their folders and stop")
    p.add_argument("--cache", help="where the sets go [~/.cache/gapmeter/bench-e2e]")
    args = p.parse_args()
    if args.make_sets_only:
        a, b = make_sets(Path(args.cache), args.images, args.seed)
        print(a, b)
        return
    if args.child == "cleanfid":
        return child_cleanfid(args)
    if args.child == "model":
        return child_model_alone(args)

    if not (args.gapmeter and args.models_dir):
        p.error("--gapmeter and --models-dir are required")
    cache = Path(os.environ.get("GAPMETER_CACHE", Path.home() / ".cache" / "gapmeter"))
    a, b = make_sets(Path(args.cache or cache / "bench-e2e"), args.images, args.seed)
    total = 2 * args.images
    manifest = Path(args.models_dir) / f"{args.extractor}.toml"
    me = [sys.executable, __file__, "--manifest", str(manifest), "--gapmeter", args.gapmeter,
          "--models-dir", args.models_dir]
    gm_cmd = [args.gapmeter, "score", str(a), str(b), "--extractor", args.extractor,
              "--models-dir", args.models_dir, "--metrics", "fid", "--format", "json",
              "--batch-size", str(args.batch_size)]
    cf_cmd = me + ["--child", "cleanfid", "--a", str(a), "--b", str(b)]
    print(f"bench-e2e: {args.images} + {args.images} JPEGs (256-512 px) under {a.parent}, "
          f"extractor {args.extractor}, {args.rounds} rounds, {os.cpu_count()} CPUs")
    gm_rates, cf_rates, cf_fid_steps, fids, batch = [], [], [], {}, None
    for r in range(args.rounds):
        # Alternate which side goes first, so neither always runs on a cooler machine.
        order = [("gapmeter", gm_cmd), ("clean-fid", cf_cmd)]
        if r % 2:
            order.reverse()
        for name, cmd in order:
            dt, out = timed(cmd)
            doc = json.loads(out)
            if name == "gapmeter":
                gm_rates.append(total / dt)
                batch = doc["extractor"]["batch_size"]
                fids[name] = doc["metrics"]["fid"]["value"]
            else:
                cf_rates.append(total / dt)
                cf_fid_steps.append((dt, doc["fid_step_s"]))
                fids[name] = doc["fid"]
            print(f"  round {r + 1}: {name:<9} {dt:7.2f} s  {total / dt:7.2f} images/s")
    _, out = timed(me + ["--child", "model", "--batch", str(batch), "--images", str(total)])
    ceiling = json.loads(out)
    gm, cf = statistics.median(gm_rates), statistics.median(cf_rates)
    rel = abs(fids["gapmeter"] - fids["clean-fid"]) / abs(fids["clean-fid"])
    print(f"median images/s: gapmeter {gm:.2f} (batch {batch}), clean-fid {cf:.2f}")
    print(f"gapmeter / clean-fid: {gm / cf:.2f}x")
    step = statistics.median(s for _, s in cf_fid_steps)
    cf_wo = statistics.median(total / (dt - s) for dt, s in cf_fid_steps)
    print(f"clean-fid's FID step (scipy sqrtm): {step:.2f} s a run; without it clean-fid runs at "
          f"{cf_wo:.2f} images/s and gapmeter's whole run is {gm / cf_wo:.2f}x that")
    print(f"model alone in libtorch, batch {batch}, {ceiling['threads']} threads: "
          f"{ceiling['images_per_s']:.2f} images/s; gapmeter's whole run is "
          f"{100 * gm / ceiling['images_per_s']:.0f} % of it")
    print(f"FID gapmeter {fids['gapmeter']:.6f} vs clean-fid {fids['clean-fid']:.6f} "
          f"(relative {rel:.1e})")


if __name__ == "__main__":
    main()
