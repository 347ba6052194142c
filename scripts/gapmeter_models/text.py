"""Text towers for gapmeter's text encoders (the manifest's `[text_encoder]` table, docs/reduce.md).

A text tower is a TorchScript module whose `forward` takes int64 token ids (N x context length,
as open_clip.tokenize and gapmeter's ClipTokenizer make them) and returns N x D floats.

* `SyntheticTextTower`: a seeded embedding table mean-pooled over the prompt's tokens, for tests:
  rows can be planted so that two prompts differing in one token differ along a chosen direction
  (scripts/make_text_tower.py).
* `ClipTextEmbedding` / `export_clip_text`: open_clip's text tower (`encode_text`), exported next
  to the image tower by scripts/export_models.py.
"""
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .export import sha256_file, toml_value

# OpenAI CLIP's vocabulary (open_clip's SimpleTokenizer with bpe_simple_vocab_16e6.txt.gz).
VOCAB_SIZE = 49408
START_OF_TEXT = 49406
END_OF_TEXT = 49407
CONTEXT_LENGTH = 77


class SyntheticTextTower(nn.Module):
    """Mean of the embedding table's rows over the token positions strictly between start and
    end of text (ids other than 0 — padding —, start and end of text). A prompt with no such
    token embeds as zeros."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.sot = START_OF_TEXT
        self.eot = END_OF_TEXT

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = (tokens != 0) & (tokens != self.sot) & (tokens != self.eot)
        rows = self.table[tokens]  # N x L x D
        weights = keep.to(rows.dtype).unsqueeze(-1)
        total = (rows * weights).sum(dim=1)
        count = weights.sum(dim=1).clamp(min=1.0)
        return total / count


def synthetic_table(dim: int, seed: int, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    """vocab_size x dim standard normal draws, float64, from numpy's PCG64 (the same values on
    every machine, unlike torch.randn, whose CPU kernels differ between instruction sets)."""
    return np.random.default_rng(seed).standard_normal((vocab_size, dim))


def plant(table: np.ndarray, a: int, b: int, direction: np.ndarray, scale: float):
    """Sets row b to row a + scale * direction / |direction|, so that prompts that differ only
    in token a vs b embed scale / (their token count) apart along `direction`."""
    direction = np.asarray(direction, dtype=np.float64).reshape(-1)
    if direction.shape[0] != table.shape[1]:
        raise ValueError(f"direction has {direction.shape[0]} values, the table {table.shape[1]}")
    norm = np.linalg.norm(direction)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("direction must be finite and nonzero")
    for t in (a, b):
        if not 0 <= t < table.shape[0]:
            raise ValueError(f"token id {t} is outside the vocabulary (0..{table.shape[0] - 1})")
    table[b] = table[a] + scale * direction / norm


def write_synthetic(out_dir: Path, dim: int, seed: int, plants=(), name="text.pt") -> dict:
    """Writes the scripted synthetic tower to out_dir/name (float32 table) and returns
    {"file", "sha256", "dim"}."""
    table = synthetic_table(dim, seed)
    for a, b, direction, scale in plants:
        plant(table, a, b, direction, scale)
    module = torch.jit.script(SyntheticTextTower(torch.from_numpy(table).float()).eval())
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / name
    module.save(str(pt))
    return {"file": name, "sha256": sha256_file(pt), "dim": dim}


class ClipTextEmbedding(nn.Module):
    """open_clip's text tower: token ids in, `encode_text` out, L2-normalised like the image
    embedding that scripts/export_models.py exports next to it (ClipImageEmbedding), so that text
    and image directions are compared on one sphere. The image tower is dropped from `clip` so
    that the TorchScript file holds only the text tower's weights."""

    def __init__(self, clip):
        super().__init__()
        clip.visual = None
        self.clip = clip

    def forward(self, tokens):
        return F.normalize(self.clip.encode_text(tokens), dim=-1)


def text_encoder_table(pt: Path, vocab: str = None, context_length: int = CONTEXT_LENGTH) -> str:
    """The manifest's `[text_encoder]` table for the TorchScript file `pt`."""
    lines = ["[text_encoder]", f"file = {toml_value(pt.name)}",
             f"sha256 = {toml_value(sha256_file(pt))}",
             f"context_length = {context_length}"]
    if vocab is not None:
        lines.append(f"vocab = {toml_value(vocab)}")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def export_clip_text(arch: str, trained: bool, seed: int, out_dir: Path, manifest_ids):
    """Exports open_clip `arch`'s text tower as `<first id>-text.pt` into out_dir, copies the
    tokenizer's vocabulary file next to it and appends a `[text_encoder]` table to each
    `<id>.toml` of manifest_ids (written before by gapmeter_models.export). Weights as
    zoo._build_clip makes them: OpenAI's if trained, else torch.manual_seed(seed) then the
    architecture's default initialisation.

    The tower is traced on open_clip-tokenized prompts and checked against eager encode_text on
    prompts of another batch size and length."""
    import open_clip
    from open_clip import tokenizer as oc_tokenizer

    torch.manual_seed(seed)
    clip = open_clip.create_model(arch, pretrained="openai" if trained else None).eval()
    context_length = int(clip.context_length)
    tower = ClipTextEmbedding(clip).eval()
    example = open_clip.tokenize(["a photo of a day scene", "a photo of a night scene"],
                                 context_length=context_length)
    traced = torch.jit.trace(tower, example, check_trace=False)
    check = open_clip.tokenize(["a foggy street", "", "a blurry photo of a cat on a sofa"],
                               context_length=context_length)
    expected = tower(check)
    got = traced(check)
    if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
        raise RuntimeError(f"{arch}: the traced text tower disagrees with encode_text "
                           f"(max |diff| {(got - expected).abs().max().item():.3g})")

    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / f"{manifest_ids[0]}-text.pt"
    traced.save(str(pt))
    vocab_src = Path(oc_tokenizer.default_bpe())
    shutil.copyfile(vocab_src, out_dir / vocab_src.name)
    table = text_encoder_table(pt, vocab=vocab_src.name, context_length=context_length)
    for mid in manifest_ids:
        path = out_dir / f"{mid}.toml"
        text = path.read_text()
        if "[text_encoder]" in text:
            raise RuntimeError(f"{path} already has a [text_encoder] table")
        path.write_text(text + "\n" + table)
    return pt
