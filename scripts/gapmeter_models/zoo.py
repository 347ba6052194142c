"""The reference extractors (docs/design.md, "Extractors") as exportable modules, with their manifests.

Each builder returns (module, example input, [manifest, ...]); every manifest of one builder
points at the same TorchScript file. `trained=False` builds the same architecture with seeded
random weights and touches no network; `trained=True` loads the published weights (downloads
them unless a local file is given).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .export import seeded_untrained
from .inception_fid import FIDInceptionV3

# pytorch-fid 0.3.0, pytorch_fid/inception.py: FID_WEIGHTS_URL.
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)

# OpenAI CLIP's preprocessing constants (open_clip.constants.OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _suffix(model_id, trained):
    return model_id if trained else f"{model_id}-untrained"


def build_inception(trained, seed, weights=None):
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    if trained:
        if weights:
            state = torch.load(weights, map_location="cpu")
        else:
            state = torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, progress=True,
                                                       map_location="cpu")
        # strict: the parameter names were written to follow pytorch-fid's state dict exactly.
        model.load_state_dict(state, strict=True)
    else:
        seeded_untrained(model, seed, calibration=48, size=299)
    mid = _suffix("inception-v3-fid", trained)
    what = ("pytorch-fid's FID Inception-v3 (TF-ported 2015-12-05 weights)" if trained
            else "pytorch-fid's FID Inception-v3 architecture, untrained (seeded)")
    common = {
        "input_size": 299,
        "outputs": ["pool", "logits", "early"],
        "features": "pool",
        "trained": trained,
    }
    clean = dict(common, id=mid, resize="clean", input_range="0-255",
                 mean=[128.0] * 3, std=[128.0] * 3,
                 description=f"{what}; clean-fid preprocessing: PIL bicubic, (x - 128) / 128")
    legacy = dict(common, id=f"{mid}-legacy", resize="legacy-pytorch", input_range="-1-1",
                  description=f"{what}; pytorch-fid preprocessing: bilinear, 2x - 1")
    return model, torch.zeros(2, 3, 299, 299), [clean, legacy]


class ClipImageEmbedding(nn.Module):
    """open_clip's image tower; returns the L2-normalised embedding (as CMMD and CLIP-FID use)."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return F.normalize(self.visual(x), dim=-1)


def _build_clip(arch, model_id, trained, seed):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained="openai" if trained else None)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mid = _suffix(model_id, trained)
    manifest = {
        "id": mid,
        "input_size": size,
        "resize": "clean",
        "input_range": "0-1",
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "outputs": ["embedding"],
        "trained": trained,
        "description": f"open_clip {arch} image embedding, L2-normalised"
                       + ("" if trained else ", untrained (seeded)")
                       + "; whole image squashed to the input size (no centre crop)",
    }
    return ClipImageEmbedding(model.visual), torch.zeros(2, 3, size, size), [manifest]


def build_clip_b32(trained, seed, weights=None):
    return _build_clip("ViT-B-32", "clip-vit-b32", trained, seed)


def build_clip_l14(trained, seed, weights=None):
    return _build_clip("ViT-L-14", "clip-vit-l14", trained, seed)


class DinoCls(nn.Module):
    """timm's DINOv2 ViT-B/14 without a head: the normalised CLS token (N x 768)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(x)


def build_dinov2_b14(trained, seed, weights=None):
    import timm

    torch.manual_seed(seed)
    # 224 rather than the checkpoint's 518: timm interpolates the position embedding on load, and
    # 224 (16 x 16 patches) is what DINOv2 feature metrics commonly use.
    vit = timm.create_model("vit_base_patch14_dinov2.lvd142m", pretrained=trained,
                            img_size=224, num_classes=0)
    mid = _suffix("dinov2-vitb14", trained)
    manifest = {
        "id": mid,
        "input_size": 224,
        "resize": "clean",
        "input_range": "0-1",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "outputs": ["cls"],
        "trained": trained,
        "description": "DINOv2 ViT-B/14 (timm vit_base_patch14_dinov2.lvd142m) CLS token"
                       + ("" if trained else ", untrained (seeded)"),
    }
    return DinoCls(vit), torch.zeros(2, 3, 224, 224), [manifest]


BUILDERS = {
    "inception-v3-fid": build_inception,
    "clip-vit-b32": build_clip_b32,
    "clip-vit-l14": build_clip_l14,
    "dinov2-vitb14": build_dinov2_b14,
}
