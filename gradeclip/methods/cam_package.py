"""Adapter to the ``grad-cam`` package (pytorch-grad-cam): Grad-CAM++, XGrad-CAM, LayerCAM, EigenCAM, Score-CAM.

The package explains a classifier's output through a target layer. The adapter supplies the two things CLIP
needs: a wrapper module whose output is the cosine of each image with each prompt (B, K), and a reshape of the
ViT tokens at the target layer (the input of the last block, after its first LayerNorm, in the library's own layout)
to the patch grid of the input, whatever its size. Any backbone works (without a class token, every token is a
patch). The CAM computations are the package's own. Its maps come back min-max normalised per map, on the grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import backbone_of


class CosineToPrompts(torch.nn.Module):
    """pixels (M, 3, H, W) -> cosine (M, K) of each image with each of the fixed text features (K, D)."""

    def __init__(self, model, text_features: torch.Tensor):
        super().__init__()
        self.backbone = backbone_of(model)
        self.model = self.backbone.model  # a submodule, so that .eval() and the hooks reach the library's modules
        self.register_buffer("text", F.normalize(text_features.detach().float(), dim=-1))

    def forward(self, pixels):
        if torch.is_grad_enabled():  # gradients reach the target layer through the input, not the weights
            pixels = pixels.detach().requires_grad_(True)
        bb = self.backbone
        x = bb.run_blocks(bb.embed_image(pixels), 0, bb.depth)  # the library's own blocks, so hooks fire
        return F.normalize(bb.pool(x), dim=-1) @ self.text.to(x.dtype).T


class _Prompt:
    """A grad-cam target: the score of prompt ``k`` in a row of the wrapper's output."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, output):
        return output[..., self.k]


def _explain_with(cam_class, model, pixels, text_features, **cam_attributes):
    bb = backbone_of(model)
    gh, gw = bb.check_pixels(pixels)
    bb.unit_text(text_features)
    b, k = pixels.shape[0], text_features.shape[0]
    wrapper = CosineToPrompts(bb, text_features).eval()
    target_layer, batch_first = bb.cam_layer()

    def tokens_to_grid(tokens):  # (M, L, W) or (L, M, W) as the library runs; drop the class token -> (M, W, h, w)
        tokens = tokens if batch_first else tokens.transpose(0, 1)
        return tokens[:, bb.prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)

    trainable = [p for p in bb.model.parameters() if p.requires_grad]
    for p in trainable:  # keep the package's backward from filling the model's .grad
        p.requires_grad_(False)
    cam = cam_class(model=wrapper, target_layers=[target_layer], reshape_transform=tokens_to_grid)
    for name, value in cam_attributes.items():
        setattr(cam, name, value)
    cam.get_target_width_height = lambda _: (gw, gh)  # maps on the token grid, not upsampled to the input
    try:
        # one row per (frame, prompt): frame b repeated K times, row b*K + j explains prompt j
        repeated = pixels.repeat_interleave(k, dim=0)
        maps = cam(input_tensor=repeated, targets=[_Prompt(j) for _ in range(b) for j in range(k)])
    finally:
        cam.activations_and_grads.release()
        for p in trainable:
            p.requires_grad_(True)
    return torch.from_numpy(maps).reshape(b, k, gh, gw).float().clamp_(min=0).to(pixels.device)


def _camlib():
    import pytorch_grad_cam  # imported on first use: it loads OpenCV, scikit-learn and ttach

    return pytorch_grad_cam


def gradcam_pp(model, pixels, text_features):
    """Grad-CAM++ (Chattopadhay et al. 2018) from the grad-cam package."""
    return _explain_with(_camlib().GradCAMPlusPlus, model, pixels, text_features)


def xgradcam(model, pixels, text_features):
    """XGrad-CAM (Fu et al. 2020) from the grad-cam package."""
    return _explain_with(_camlib().XGradCAM, model, pixels, text_features)


def layercam(model, pixels, text_features):
    """LayerCAM (Jiang et al. 2021) from the grad-cam package."""
    return _explain_with(_camlib().LayerCAM, model, pixels, text_features)


def eigencam(model, pixels, text_features):
    """EigenCAM (Muhammad & Yeasin 2020) from the grad-cam package: first principal component of the tokens
    (prompt-independent)."""
    return _explain_with(_camlib().EigenCAM, model, pixels, text_features)


def scorecam(model, pixels, text_features, *, batch_size: int = 32):
    """Score-CAM (Wang et al. 2020) from the grad-cam package: one masked forward per channel of the target layer,
    ``batch_size`` at a time (slow: width x frames x prompts forwards)."""
    return _explain_with(_camlib().ScoreCAM, model, pixels, text_features, batch_size=batch_size)
