"""Turns a module into a TorchScript file plus a gapmeter manifest (docs/extractors.md)."""
import hashlib
import json
from pathlib import Path

import torch
from torch import nn


def calibration_images(n, size, seed):
    """Seeded stand-ins for natural images, in [-1, 1], used to calibrate BatchNorm statistics:
    a mix of smooth multi-scale noise, flat shapes with hard edges, and oriented textures with
    sensor-like noise, so the statistics cover flat, edgy and busy images alike (calibrating on
    one kind alone lets activations of the others grow by an order of magnitude)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 3, size, size)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    for i in range(n):
        kind = i % 3
        if kind == 0:
            img = torch.zeros(3, size, size)
            for cells, weight in ((4, 0.6), (16, 0.3), (size, 0.1)):
                coarse = torch.rand(1, 3, cells, cells, generator=g) * 2 - 1
                img += weight * torch.nn.functional.interpolate(
                    coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
        elif kind == 1:
            img = (torch.rand(3, 1, 1, generator=g) * 2 - 1).expand(3, size, size).clone()
            for _ in range(4):
                x0, y0 = (torch.rand(2, generator=g) * size).long().tolist()
                w, h = (torch.rand(2, generator=g) * size / 2 + 4).long().tolist()
                img[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g) * 2 - 1
        else:
            f = torch.rand(2, generator=g) * 40 + 5
            phase = torch.sin(2 * torch.pi * (f[0] * xx + f[1] * yy))
            img = 0.5 * phase.expand(3, size, size) * (torch.rand(3, 1, 1, generator=g) * 2 - 1)
            img = img + 0.25 * torch.randn(3, size, size, generator=g)
        out[i] = img
    return out.clamp(-1, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batch: torch.Tensor):
    """With default init the activations of a deep untrained net shrink layer by layer until the
    features vanish; setting every BatchNorm's running statistics from one seeded batch (cumulative
    average, i.e. exactly that batch) keeps each layer's output O(1)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(batch)
    model.eval()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(module) -> str:
    """sha256 over the state dict (names and raw tensor bytes, sorted by name). Unlike the
    TorchScript file's hash it does not depend on debug info such as the venv's source paths."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_manifest(out_dir: Path, pt: Path, manifest: dict):
    """Writes `<id>.toml` for the TorchScript file `pt` (which must be in `out_dir`)."""
    manifest = dict(manifest, file=pt.name, sha256=sha256_file(pt))
    order = ["id", "file", "sha256", "input_size", "resize", "input_range", "mean", "std",
             "outputs", "features", "trained", "description"]
    lines = [f"{k} = {toml_value(manifest[k])}" for k in order if k in manifest]
    lines += [f"{k} = {toml_value(v)}" for k, v in manifest.items() if k not in order]
    path = out_dir / f"{manifest['id']}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@torch.no_grad()
def export(model: nn.Module, example: torch.Tensor, out_dir: Path, manifest: dict, extra=()):
    """Traces `model` on `example`, writes `<id>.pt` and `<id>.toml` into `out_dir`, plus one
    manifest per entry of `extra` for the same file (e.g. another resize mode)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    traced = torch.jit.trace(model, example, check_trace=False)
    pt = out_dir / f"{manifest['id']}.pt"
    traced.save(str(pt))
    for m in (manifest, *extra):
        write_manifest(out_dir, pt, m)
    return pt
