"""The methods other than Grad-ECLIP through X-CLIP's video score (``gradeclip/xclip_methods.py``), each against a
reference written here: the library's own ``XCLIPModel`` forward (eager attention, so that it returns its
attention weights), autograd through it, hooks on its modules, and loops over frames, heads, channels and patches.
Frames are 24x40 at input="native" (a 3x5 token grid: a swapped height and width shows), two prompts with
different scores, and the tiny random X-CLIP of ``test_xclip.py`` (num_frames 4, 2 vision layers, 4 heads)."""
import contextlib

import numpy as np
import pytest
import torch

from gradeclip.backbones.pixels import CLIP_MEAN, CLIP_STD
from gradeclip.clip_level import explain_clip
from gradeclip.xclip_level import explain_xclip
from gradeclip.xclip_methods import XCLIP_METHODS

from test_xclip import PROMPTS, clip_frames, logit_scale, naive_reference, own_forward  # noqa: F401
from test_xclip import xclip, xclip_folder  # noqa: F401 (fixtures)

GRID = (3, 5)


def native_pixels(frames):
    """(1, n, 3, 24, 40): the frames normalised as CLIP does, at their own size (on the patch grid: no resize)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return ((x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1))[None]


@contextlib.contextmanager
def library_forward(backbone):
    """The library's forward on native pixels with eager attention (it returns its weights), recording each vision
    layer's input tokens and self-attention weights (n, heads, L + 1, L + 1) with hooks. Yields a function
    frames -> (cosine (K,) with graph, inputs [layer] (n, L, W), weights [layer])."""
    model = backbone.model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    inputs, weights, hooks = {}, {}, []
    for i, layer in enumerate(model.vision_model.encoder.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0])))
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, out, i=i: weights.__setitem__(i, out[1])))

    def run(frames):
        out = own_forward(backbone, frames, pixel_values=native_pixels(frames), interpolate_pos_encoding=True)
        depth = len(model.vision_model.encoder.layers)
        return (out.logits_per_video[0] / model.logit_scale.exp(), [inputs[i] for i in range(depth)],
                [weights[i] for i in range(depth)])
    try:
        yield run
    finally:
        for h in hooks:
            h.remove()
        model.set_attn_implementation(before)


def test_grad_cam_equals_autograd_through_the_library(xclip):
    """Grad-CAM: the video cosine's gradient at the tokens entering the last vision layer (autograd through the
    library's own layer, message tokens, MIT and prompts generator), averaged over each frame's 1 + P tokens,
    times the tokens, summed over channels, ReLU, patch rows. Catches: the gradient averaged over the whole clip
    instead of per frame, the class row mapped as a patch, a missing ReLU, the patch rows' path to the prompts
    generator cut (a gradient through the class rows only), height and width swapped."""
    frames = clip_frames(4)
    result = explain_xclip(xclip, frames, PROMPTS, method="grad_cam", input="native", progress=False)
    with library_forward(xclip) as run:
        cosine, inputs, _ = run(frames)
        x = inputs[-1]  # (n, L, W)
        expected = np.zeros((4, 2, 15))
        for k in range(2):
            (grad,) = torch.autograd.grad(cosine[k], [x], retain_graph=True)
            tokens = x.detach()
            for t in range(4):
                weights = grad[t].mean(dim=0)  # (W,)
                for p in range(15):
                    cam = sum(float(weights[c] * tokens[t, 1 + p, c]) for c in range(x.shape[2]))
                    expected[t, k, p] = max(cam, 0)
    assert result.raw.shape == (4, 2, *GRID) and result.method == "grad_cam"
    assert expected.max() > 0 and (expected == 0).any()  # the ReLU cuts somewhere: a missing ReLU shows
    np.testing.assert_allclose(result.raw.reshape(4, 2, -1), expected, rtol=1e-4, atol=1e-6 * expected.max())
    np.testing.assert_allclose(result.cosine, cosine.detach().numpy(), atol=1e-5)


def test_game_equals_autograd_at_the_librarys_attention_weights(xclip):
    """GAME over the last layer: mean over heads of ReLU(d s_k / d A * A) on the class row's patch columns, with A
    the library's own attention weights (eager) and their gradient by autograd. Catches: the message key's column
    mapped as a patch (or the class column), heads summed instead of averaged, the ReLU after the head mean, the
    gradient of A computed from another head's slice of the values."""
    frames = clip_frames(4)
    result = explain_xclip(xclip, frames, PROMPTS, method="game", input="native", progress=False)
    with library_forward(xclip) as run:
        cosine, _, weights = run(frames)
        a = weights[-1]  # (n, heads, L + 1, L + 1)
        values = a.detach()
        expected = np.zeros((4, 2, 15))
        for k in range(2):
            (grad,) = torch.autograd.grad(cosine[k], [a], retain_graph=True)
            for t in range(4):
                for p in range(15):
                    terms = [max(float(grad[t, h, 0, 1 + p] * values[t, h, 0, 1 + p]), 0) for h in range(a.shape[1])]
                    expected[t, k, p] = sum(terms) / len(terms)
    assert expected.max() > 0
    np.testing.assert_allclose(result.raw.reshape(4, 2, -1), expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_grad_eclip_no_spatial_equals_the_naive_reference_without_lambda(xclip):
    """grad_eclip_no_spatial = the loop reference of test_xclip with lambda = 1, and differs from grad_eclip.
    Catches: the method name mapped to grad_eclip (lambda kept) or the spatial weight dropped from grad_eclip too."""
    frames = clip_frames(4)
    plain = explain_xclip(xclip, frames, PROMPTS, method="grad_eclip_no_spatial", progress=False)
    expected = naive_reference(xclip, frames, 1, spatial=False)
    np.testing.assert_allclose(plain.raw.reshape(4, 2, -1), expected.numpy(), rtol=1e-4, atol=1e-6)
    weighted = explain_xclip(xclip, frames, PROMPTS, progress=False)
    assert np.abs(weighted.raw - plain.raw).max() > 1e-3 * plain.raw.max()


def test_self_attention_and_rollout_equal_the_librarys_attention_by_loops(xclip):
    """self_attention: the last layer's class row over the patch keys, heads averaged. rollout: per layer the
    frame's own (1 + P) x (1 + P) block of the heads' mean (the message row and column dropped), plus the identity,
    rows renormalised, multiplied from the first layer; the class row over the patches. Both the same for every
    prompt. Catches: the message column kept (or mapped as the last patch), layers multiplied in the wrong order,
    rows not renormalised, a map per prompt that differs."""
    frames = clip_frames(4)
    attention = explain_xclip(xclip, frames, PROMPTS, method="self_attention", input="native", progress=False)
    rolled = explain_xclip(xclip, frames, PROMPTS, method="rollout", input="native", progress=False)
    with torch.no_grad(), library_forward(xclip) as run:
        cosine, _, weights = run(frames)
    weights = [w.double().numpy() for w in weights]
    length = weights[0].shape[-1] - 1  # 1 + P
    expected_attention = np.zeros((4, 15))
    expected_rollout = np.zeros((4, 15))
    for t in range(4):
        expected_attention[t] = weights[-1][t, :, 0, 1:length].mean(axis=0)
        joint = np.eye(length)
        for w in weights:  # first layer first
            a = w[t].mean(axis=0)[:length, :length] + np.eye(length)
            a = a / a.sum(axis=1, keepdims=True)
            joint = a @ joint
        expected_rollout[t] = joint[0, 1:]
    for result, expected in ((attention, expected_attention), (rolled, expected_rollout)):
        for k in range(2):
            np.testing.assert_allclose(result.raw[:, k].reshape(4, -1), expected, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(result.cosine, cosine.numpy(), atol=1e-5)
    assert np.abs(expected_rollout - expected_attention).max() > 1e-3  # the two references differ


@pytest.mark.parametrize("method", XCLIP_METHODS)
def test_every_method_reports_the_models_own_score_and_importance(xclip, method):
    """Whatever the method, cosine and probs are the model's own logits_per_video (library input), the importance
    sums to the cosine, maps are (T, K, H, W) in [0, 1] on one scale per prompt and not constant. Catches: a method
    path that scores with another layer's tokens, or a score-free method returning no score."""
    frames = clip_frames(4)
    result = explain_clip(xclip, frames, PROMPTS, method=method, progress=False)
    with torch.no_grad():
        logits = own_forward(xclip, frames).logits_per_video[0]
    np.testing.assert_allclose(result.cosine, logits.numpy() / logit_scale(xclip), atol=1e-5)
    np.testing.assert_allclose(result.probs, logits.softmax(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.frame_importance.sum(0), result.cosine, atol=1e-5)
    assert result.method == method and result.maps.shape == (4, 2, 24, 40)
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0
    np.testing.assert_allclose(result.maps.max(axis=(0, 2, 3)), 1, atol=1e-6)
    assert (result.raw.reshape(4, 2, -1).std(axis=2) > 0).any()


def test_undefined_methods_and_options_refuse_in_one_line_saying_why(xclip):
    """Each refused method names why (catches a method silently run per frame against the text, or a refusal
    that names no reason or no alternative); options the method does not take there are named with the allowed
    ones; GAME over several layers is refused."""
    frames = clip_frames(4)
    patch = "scores each patch's own embedding"
    reasons = {"maskclip": patch, "clip_surgery": patch, "gem": patch,
               "legrad": "through the MIT and the prompts generator is not implemented",
               "scorecam": "masks one image", "rise": "masks one image", "gradcam_pp": "grad-cam package",
               "layercam": "grad-cam package"}
    for method, why in reasons.items():
        with pytest.raises(ValueError) as err:
            explain_clip(xclip, frames, PROMPTS, method=method, progress=False)
        message = str(err.value)
        assert "\n" not in message and f"method {method!r} cannot explain X-CLIP's video score" in message
        assert why in message and "use one of grad_eclip, grad_eclip_no_spatial, grad_cam, game" in message
    with pytest.raises(ValueError, match=r"'grad_cam' has no option\(s\) layers on X-CLIP; its options: none"):
        explain_xclip(xclip, frames, PROMPTS, method="grad_cam", layers=2, progress=False)
    with pytest.raises(ValueError, match=r"'grad_eclip' has no option\(s\) single_head.*layers, spatial_weight"):
        explain_xclip(xclip, frames, PROMPTS, single_head=True, progress=False)
    with pytest.raises(ValueError, match="game start_layer=0 is not defined on X-CLIP.*use start_layer=-1"):
        explain_xclip(xclip, frames, PROMPTS, method="game", start_layer=0, progress=False)
    with pytest.raises(ValueError, match="unknown method 'gradcam'"):
        explain_xclip(xclip, frames, PROMPTS, method="gradcam", progress=False)
