#!/usr/bin/env python3
"""Exports gapmeter's reference extractors as TorchScript files plus manifests (docs/extractors.md).

  inception-v3-fid  pytorch-fid's FID Inception-v3 (pt_inception-2015-12-05-6726825d.pth); writes
                    two manifests for one file: `inception-v3-fid` (clean-fid preprocessing) and
                    `inception-v3-fid-legacy` (pytorch-fid's); outputs pool, logits, early
  clip-vit-b32      open_clip ViT-B-32, OpenAI weights; output embedding (L2-normalised); with
                    its text tower (<id>-text.pt, encode_text L2-normalised) and the tokenizer's
                    vocabulary beside it, named by the manifest's [text_encoder] table
  clip-vit-l14      open_clip ViT-L-14, the same
  dinov2-vitb14     timm vit_base_patch14_dinov2.lvd142m at 224 x 224; output cls

Trained weights are downloaded (torch hub, open_clip, Hugging Face via timm) unless given with
--inception-weights. With --untrained the same architectures get seeded random weights, nothing is
downloaded, ids get an `-untrained` suffix and the manifests say `trained = false`: this is what
the tests run. CLIP needs open_clip_torch, DINOv2 timm (both in scripts/reference/requirements.txt).

--no-text leaves the CLIP text towers out (the ViT-L-14 one is about 0.5 GB).

Usage: export_models.py [--out DIR] [--untrained] [--seed N] [--inception-weights PTH] [--no-text]
                        ID... | all
"""
import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from gapmeter_models.export import export  # noqa: E402
from gapmeter_models.text import export_clip_text  # noqa: E402
from gapmeter_models.zoo import BUILDERS  # noqa: E402

# The open_clip architecture of each CLIP extractor, whose text tower is exported beside it.
CLIP_TEXT_TOWERS = {"clip-vit-b32": "ViT-B-32", "clip-vit-l14": "ViT-L-14"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_out = os.environ.get("GAPMETER_MODELS_DIR",
                                 str(Path.home() / ".cache" / "gapmeter" / "models"))
    p.add_argument("ids", nargs="+", choices=[*BUILDERS, "all"], metavar="ID")
    p.add_argument("--out", default=default_out, help=f"models directory (default {default_out})")
    p.add_argument("--untrained", action="store_true",
                   help="seeded random weights, no download (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--no-text", action="store_true",
                   help="do not export the CLIP extractors' text towers")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ids = list(BUILDERS) if "all" in args.ids else args.ids
    out = Path(args.out)
    for model_id in ids:
        print(f"export_models: building {model_id}{' (untrained)' if args.untrained else ''}",
              file=sys.stderr)
        model, example, manifests = BUILDERS[model_id](
            not args.untrained, args.seed, weights=args.inception_weights)
        if args.untrained:
            manifests = [dict(m, seed=args.seed) for m in manifests]
        pt = export(model, example, out, manifests[0], extra=manifests[1:])
        for m in manifests:
            print(f"export_models: wrote {out / (m['id'] + '.toml')} -> {pt.name}", file=sys.stderr)
        if model_id in CLIP_TEXT_TOWERS and not args.no_text:
            ids = [m["id"] for m in manifests]
            text_pt = export_clip_text(CLIP_TEXT_TOWERS[model_id], not args.untrained, args.seed,
                                       out, ids)
            print(f"export_models: wrote {out / text_pt.name} ([text_encoder] of "
                  f"{', '.join(ids)})", file=sys.stderr)


if __name__ == "__main__":
    main()
