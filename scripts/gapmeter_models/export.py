"""Turns a module into a TorchScript file plus a gapmeter manifest (docs/extractors.md)."""
import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn


def _uniform(g, *shape):
    """torch.rand's float32 draws from `g`, exactly, as float64: torch takes 24 bits of one
    32-bit word per value, which is what randint(0, 2**24) consumes and returns."""
    k = torch.randint(0, 2**24, shape, generator=g, dtype=torch.int64)
    return k.to(torch.float64) * 2.0**-24


def _normal(g, *shape):
    """torch.randn's float32 draws from `g` (for 16 or more values), computed in float64: all
    uniforms first, Box-Muller on each block of 16 (the first 8 against the next 8), and, when
    the count is not a multiple of 16, the last 16 values drawn again and transformed."""
    n = math.prod(shape)
    data = _uniform(g, n)

    def box_muller(block):  # (..., 16)
        u1, u2 = 1 - block[..., :8], block[..., 8:]
        radius = torch.sqrt(-2 * torch.log(u1))
        theta = 2 * math.pi * u2
        return torch.cat([radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1)

    full = n // 16 * 16
    data[:full] = box_muller(data[:full].view(-1, 16)).reshape(-1)
    if n % 16:
        data[n - 16:] = box_muller(_uniform(g, 16))
    return data.view(shape)


def calibration_images(n, size, seed):
    """Seeded stand-ins for natural images, in [-1, 1], used to calibrate BatchNorm statistics:
    a mix of smooth multi-scale noise, flat shapes with hard edges, and oriented textures with
    sensor-like noise, so the statistics cover flat, edgy and busy images alike (calibrating on
    one kind alone lets activations of the others grow by an order of magnitude).

    float64 throughout (see `seeded_untrained`), from the draws torch.rand / torch.randn would
    make in float32."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 3, size, size, dtype=torch.float64)
    axis = torch.linspace(0, 1, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    for i in range(n):
        kind = i % 3
        if kind == 0:
            img = torch.zeros(3, size, size, dtype=torch.float64)
            for cells, weight in ((4, 0.6), (16, 0.3), (size, 0.1)):
                coarse = _uniform(g, 1, 3, cells, cells) * 2 - 1
                img += weight * torch.nn.functional.interpolate(
                    coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
        elif kind == 1:
            img = (_uniform(g, 3, 1, 1) * 2 - 1).expand(3, size, size).clone()
            for _ in range(4):
                x0, y0 = (_uniform(g, 2) * size).long().tolist()
                w, h = (_uniform(g, 2) * size / 2 + 4).long().tolist()
                img[:, y0:y0 + h, x0:x0 + w] = _uniform(g, 3, 1, 1) * 2 - 1
        else:
            f = _uniform(g, 2) * 40 + 5
            phase = torch.sin(2 * torch.pi * (f[0] * xx + f[1] * yy))
            img = 0.5 * phase.expand(3, size, size) * (_uniform(g, 3, 1, 1) * 2 - 1)
            img = img + 0.25 * _normal(g, 3, size, size)
        out[i] = img
    return out.clamp(-1, 1)


@torch.no_grad()
def seed_parameters(model: nn.Module, seed: int):
    """PyTorch's default initialisation of every convolution and linear layer
    (kaiming_uniform_(a=sqrt(5)) weights, uniform(+-1/sqrt(fan_in)) biases) with the values
    torch.manual_seed(seed) followed by building the model gives on AVX2 and AVX-512 machines,
    computed so that every CPU gets them.

    PyTorch's own kernels do not: its portable build (ATEN_CPU_CAPABILITY=default) gives other
    values. Here each value is a 24-bit integer draw k from the same stream, and
    k * 2^-24 * (hi - lo) + lo with float32 bounds is exact in float64 (at most 48 significant
    bits), so its one rounding to float32 is the same everywhere."""
    g = torch.Generator().manual_seed(seed)
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))

    def draw(p, bound):
        lo = float(torch.tensor(-bound, dtype=torch.float32))
        hi = float(torch.tensor(bound, dtype=torch.float32))
        p.copy_((_uniform(g, *p.shape) * (hi - lo) + lo).to(p.dtype))

    # model.modules() is the order the layers were built in, i.e. the order their default
    # initialisers would have drawn.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            draw(m.weight, math.sqrt(3.0) * (gain / math.sqrt(fan_in)))
            if m.bias is not None:
                draw(m.bias, 1 / math.sqrt(fan_in))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batch: torch.Tensor):
    """With default init the activations of a deep untrained net shrink layer by layer until the
    features vanish; setting every BatchNorm's running statistics from one seeded batch (cumulative
    average, i.e. exactly that batch) keeps each layer's output O(1).

    The pass runs in the batch's dtype (float64 from `seeded_untrained`) and the model is returned
    in float32."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.to(batch.dtype)
    model.train()
    model(batch)
    model.eval()
    model.float()


def seeded_untrained(model: nn.Module, seed: int, calibration: int, size: int) -> nn.Module:
    """The weights of an untrained test model, the same on every CPU.

    Parameters are PyTorch's default initialisation computed exactly (`seed_parameters`), and
    BatchNorm is calibrated by a float64 forward pass over `calibration` seeded images, rounded
    to float32 once at the end. Kernels still differ between CPUs (summation order, fused multiply-adds), but in float64 by
    about 1e-16 relative, which the one rounding to float32 (6e-8) absorbs: the weights' sha256
    is what tests/fixtures/extractors/parity.json records, wherever it is computed."""
    seed_parameters(model, seed)
    recalibrate_batchnorm(model, calibration_images(calibration, size, seed + 1))
    return model


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
