"""The registry entries of all explanation methods, and ``run_method`` (maps and image features of one forward).

Every method: ``method(model, pixels, text_features, *, options) -> raw maps (B, K, h, w)``, float32, non-negative,
on the token grid of ``pixels``. The methods live by family: ``grad_eclip``, ``gradients`` (grad_cam, game),
``attention`` (self_attention, rollout, maskclip), ``legrad``, ``clip_surgery``, ``gem``, ``perturbation`` (rise)
and ``cam_package`` (the grad-cam package's CAMs); each is written once against the backbone interface (``gradeclip.backbones``).
"""
from __future__ import annotations

from ..backbones.base import backbone_of
from .attention import maskclip, rollout, self_attention
from .cam_package import eigencam, gradcam_pp, layercam, scorecam, xgradcam
from .clip_surgery import clip_surgery, clip_surgery_with_features
from .gem import gem, gem_with_features
from .grad_eclip import grad_eclip_image, grad_eclip_image_with_features
from .gradients import game, grad_cam
from .legrad import legrad, legrad_with_features
from .perturbation import rise
from .registry import METHODS, check_options, get_method


def grad_eclip_no_spatial(model, pixels, text_features, *, layers: int = 1, single_head: bool = False):
    """Grad-ECLIP without the spatial (query-key) weight: the paper's ablation."""
    return grad_eclip_image(model, pixels, text_features, layers=layers, single_head=single_head,
                            spatial_weight=False)


for _name, _fn in [("grad_eclip", grad_eclip_image), ("grad_eclip_no_spatial", grad_eclip_no_spatial),
                   ("grad_cam", grad_cam), ("self_attention", self_attention), ("rollout", rollout),
                   ("game", game), ("maskclip", maskclip), ("rise", rise), ("gradcam_pp", gradcam_pp),
                   ("xgradcam", xgradcam), ("layercam", layercam), ("eigencam", eigencam), ("scorecam", scorecam),
                   ("legrad", legrad), ("clip_surgery", clip_surgery), ("gem", gem)]:
    METHODS.register_module(name=_name, module=_fn)

# Methods whose forward already yields the image features: their scores then need no second forward.
_WITH_FEATURES = {
    "grad_eclip": grad_eclip_image_with_features,
    "grad_eclip_no_spatial": lambda model, pixels, text_features, **options: grad_eclip_image_with_features(
        model, pixels, text_features, spatial_weight=False, **options),
    "legrad": legrad_with_features, "clip_surgery": clip_surgery_with_features, "gem": gem_with_features,
}


def run_method(name: str, model, pixels, text_features, **options):
    """``(raw maps (B, K, h, w) float32, image features (B, D))`` of the method called ``name``: one forward where
    the method provides the features, else the method and then ``encode_pixels``."""
    model = backbone_of(model)  # found once, not once per step
    check_options(name, options)
    if name in _WITH_FEATURES:
        maps, features = _WITH_FEATURES[name](model, pixels, text_features, **options)
    else:
        maps, features = get_method(name)(model, pixels, text_features, **options), model.encode_pixels(pixels)
    return maps.float(), features


__all__ = ["game", "grad_cam", "maskclip", "rise", "rollout", "self_attention", "run_method"]
