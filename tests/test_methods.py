"""Every explanation method: the shared contract, and each against an independent computation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradeclip import encode_prompts, explain, get_method, method_names
from gradeclip.methods.cam_package import CosineToPrompts, _explain_with
from gradeclip.methods.baselines import game, grad_cam, maskclip, rise, rollout, self_attention

from conftest import tiny_clip

ALL = ["grad_eclip", "grad_eclip_no_spatial", "grad_cam", "self_attention", "rollout", "game", "maskclip", "rise",
       "gradcam_pp", "xgradcam", "layercam", "eigencam", "scorecam", "legrad", "clip_surgery", "gem"]
FAST_OPTIONS = {"rise": {"n_masks": 64}, "scorecam": {"batch_size": 64}}
PROMPTS = ["a person walking", "a red car", "trees"]


@pytest.fixture(scope="module")
def text_features(model):
    return encode_prompts(model, PROMPTS)


def test_registry_has_exactly_the_named_methods():
    assert sorted(ALL) == method_names()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ALL)
def test_method_contract(name, text_features):
    m = tiny_clip(7, vision_layers=3)
    pixels = torch.randn(2, 3, 24, 40)  # a non-square 3x5 grid, not the model's 4x4
    maps = get_method(name)(m, pixels, text_features, **FAST_OPTIONS.get(name, {}))
    assert maps.shape == (2, 3, 3, 5) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0
    assert all(p.grad is None and p.requires_grad for p in m.parameters())  # the model is left as it was


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ALL)
def test_every_method_through_explain(model, name):
    frames = np.random.default_rng(2).integers(0, 256, size=(2, 30, 44, 3), dtype=np.uint8)
    result = explain(model, frames, PROMPTS[:2], method=name, **FAST_OPTIONS.get(name, {}))
    assert result.maps.shape == (2, 2, 30, 44) and result.method == name
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0 and result.maps.max() <= 1


def test_prompt_dependence(model, text_features):
    pixels = torch.randn(1, 3, 32, 32)
    for name in ("self_attention", "rollout", "eigencam"):  # these cannot see the prompt
        maps = get_method(name)(model, pixels, text_features)
        torch.testing.assert_close(maps[:, 0], maps[:, 1])
    for name in ("grad_eclip", "grad_cam", "game", "maskclip"):
        maps = get_method(name)(model, pixels, text_features)
        assert not torch.allclose(maps[:, 0], maps[:, 1]), name


def visual_pass(model, pixels):
    """Run model.visual on pixels at its native size; returns the embedding and the last block's input (hooked)."""
    kept = {}
    blocks = model.visual.transformer.resblocks
    hooks = [blocks[-1].register_forward_pre_hook(lambda mod, args: kept.__setitem__("last_in", args[0]))]
    try:
        emb = model.visual(pixels)
    finally:
        for h in hooks:
            h.remove()
    return emb, kept


def test_grad_cam_matches_hooked_model(model, text_features):
    pixels = torch.randn(2, 3, 32, 32)
    maps = grad_cam(model, pixels, text_features)
    text = F.normalize(text_features, dim=-1)
    for b in range(2):
        for k in range(3):
            emb, kept = visual_pass(model, pixels[b:b + 1])
            x = kept["last_in"]  # (L, 1, W), as the real block received it
            cos = F.normalize(emb, dim=-1)[0] @ text[k]
            (g,) = torch.autograd.grad(cos, x)
            want = ((g.mean(0, keepdim=True) * x).sum(-1)).clamp(min=0)[1:, 0].reshape(4, 4)
            torch.testing.assert_close(maps[b, k], want.detach(), rtol=1e-4, atol=1e-7)


def mha_weights(model, pixels):
    """Head-averaged attention weights of every block, from nn.MultiheadAttention itself."""
    weights = []
    x = model.visual.ln_pre(torch.cat([model.visual.class_embedding.expand(pixels.shape[0], 1, -1),
                                       model.visual.conv1(pixels).flatten(2).transpose(1, 2)], 1)
                            + model.visual.positional_embedding)
    x = x.transpose(0, 1)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            h = block.ln_1(x)
            weights.append(block.attn(h, h, h, need_weights=True, average_attn_weights=True)[1])  # (B, L, L)
            x = block(x)
    return weights


def test_self_attention_and_rollout_match_torch_attention(model, text_features):
    pixels = torch.randn(2, 3, 32, 32)
    weights = mha_weights(model, pixels)
    sa = self_attention(model, pixels, text_features)
    torch.testing.assert_close(sa[:, 0].flatten(1), weights[-1][:, 0, 1:], rtol=1e-4, atol=1e-6)
    joint = torch.eye(17).expand(2, 17, 17)
    for w in weights:
        a = 0.5 * w + 0.5 * torch.eye(17)  # rows of w sum to 1, so this is (w + I) renormalised
        joint = torch.bmm(a, joint)
    ro = rollout(model, pixels, text_features)
    torch.testing.assert_close(ro[:, 2].flatten(1), joint[:, 0, 1:], rtol=1e-4, atol=1e-6)


def ref_game(model, pixels, text, start):
    """Chefer et al.: loops over frames and prompts, attention written out per head."""
    blocks = list(model.visual.transformer.resblocks)
    out = torch.zeros(pixels.shape[0], text.shape[0], 16)
    for b in range(pixels.shape[0]):
        for k in range(text.shape[0]):
            with torch.no_grad():
                x = model.visual.ln_pre(torch.cat([model.visual.class_embedding[None],
                                                   model.visual.conv1(pixels[b:b + 1]).flatten(2)[0].T])
                                        + model.visual.positional_embedding)
                for block in blocks[:start]:
                    x = block(x[:, None])[:, 0]
            x = x.clone().requires_grad_(True)
            attns = []
            for block in blocks[start:]:
                h = block.ln_1(x)
                q, kk, v = (h @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, -1)
                heads = block.attn.num_heads
                d = q.shape[1] // heads
                per_head = [torch.softmax(q[:, i * d:(i + 1) * d] @ kk[:, i * d:(i + 1) * d].T / d ** 0.5, -1)
                            for i in range(heads)]
                attns.append(per_head)
                o = torch.cat([a @ v[:, i * d:(i + 1) * d] for i, a in enumerate(per_head)], 1)
                x = x + block.attn.out_proj(o)
                x = x + block.mlp(block.ln_2(x))
            emb = model.visual.ln_post(x[0]) @ model.visual.proj
            cos = emb @ text[k] / (emb.norm() * text[k].norm())
            grads = torch.autograd.grad(cos, [a for per_head in attns for a in per_head])
            r = torch.eye(17)
            n = 0
            for per_head in attns:
                cam = sum((grads[n + i] * a.detach()).clamp(min=0) for i, a in enumerate(per_head)) / len(per_head)
                n += len(per_head)
                r = r + cam @ r
            out[b, k] = r[0, 1:]
    return out.reshape(pixels.shape[0], text.shape[0], 4, 4)


@pytest.mark.parametrize("start_layer", [-1, 0])
def test_game_matches_reference(model, text_features, start_layer):
    pixels = torch.randn(2, 3, 32, 32)
    got = game(model, pixels, text_features, start_layer=start_layer)
    want = ref_game(model, pixels, text_features, start_layer % 2)
    assert want.max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_maskclip_matches_per_token_value_path(model, text_features):
    pixels = torch.randn(1, 3, 32, 32)
    got = maskclip(model, pixels, text_features)
    _, kept = visual_pass(model, pixels)
    block = model.visual.transformer.resblocks[-1]
    x = kept["last_in"][:, 0]  # (L, W)
    text = F.normalize(text_features, dim=-1)
    with torch.no_grad():
        for i in range(16):
            token = x[1 + i]
            v = block.ln_1(token) @ block.attn.in_proj_weight[256:].T + block.attn.in_proj_bias[256:]
            y = token + block.attn.out_proj(v)
            y = y + block.mlp(block.ln_2(y))
            emb = F.normalize(model.visual.ln_post(y) @ model.visual.proj, dim=-1)
            torch.testing.assert_close(got[0, :, i // 4, i % 4], (text @ emb).clamp(min=0), rtol=1e-4, atol=1e-6)


def test_rise_known_answer_and_seed(model, text_features):
    pixels = torch.randn(1, 3, 32, 32)
    # p = 1 keeps every pixel: every masked image is the image, so the saliency is its cosine everywhere
    kept = rise(model, pixels, text_features, n_masks=8, p=1.0)
    with torch.no_grad():
        cos = F.normalize(model.encode_image(pixels), dim=-1) @ F.normalize(text_features, dim=-1).T
    torch.testing.assert_close(kept, cos.clamp(min=0)[:, :, None, None].expand(1, 3, 4, 4), rtol=1e-5, atol=1e-6)
    a = rise(model, pixels, text_features, n_masks=40, seed=1)
    torch.testing.assert_close(a, rise(model, pixels, text_features, n_masks=40, seed=1))
    assert not torch.allclose(a, rise(model, pixels, text_features, n_masks=40, seed=2))
    with pytest.raises(ValueError, match="0 < p <= 1"):
        rise(model, pixels, text_features, p=0)


def test_rise_with_p_below_one_matches_its_formula(model, text_features, monkeypatch):
    """p = 0.3: the masks RISE feeds the model are recorded (masked image / image), the saliency is recomputed
    here from the formula sum_m cos(masked_m) * mask_m / (N * p), clipped at 0, averaged per patch, and the masks
    keep about p of the image. Catches a missing or inverted 1/p, a keep rate of 1 - p (``>`` for ``<``), masks
    applied to the wrong image, or no clipping; with p = 1 all of these were invisible."""
    from gradeclip.backbones.base import backbone_of

    pixels = torch.rand(1, 3, 32, 32) + 0.5  # no zeros: the masks are recovered by division
    seen = []
    backbone = type(backbone_of(model))
    real_method = backbone.encode_pixels

    def real(m, images):
        return real_method(backbone_of(m), images)

    def recording(self, images):
        seen.append(images.detach().clone())
        return real_method(self, images)

    monkeypatch.setattr(backbone, "encode_pixels", recording)
    got = rise(model, pixels, text_features, n_masks=48, p=0.3, batch_size=16, seed=3)
    masked = torch.cat(seen)  # (48, 3, 32, 32)
    masks = (masked / pixels)[:, 0]
    torch.testing.assert_close(masked / pixels, masks[:, None].expand_as(masked), rtol=1e-4, atol=1e-5)
    assert abs(masks.mean().item() - 0.3) < 0.1
    with torch.no_grad():
        cos = F.normalize(real(model, masked), dim=-1) @ F.normalize(text_features, dim=-1).T  # (48, K)
    saliency = (torch.einsum("mk,mhw->khw", cos, masks) / (48 * 0.3)).clamp(min=0)
    want = F.avg_pool2d(saliency[None], 8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_game_default_start_layer_is_the_last_block(model, text_features):
    """GAME's default relevance starts at the last block (start_layer=-1), as documented. Catches a default of 0
    (the whole stack, a different map on this 2-block model)."""
    pixels = torch.randn(1, 3, 32, 32)
    default = game(model, pixels, text_features)
    torch.testing.assert_close(default, ref_game(model, pixels, text_features, 1))
    assert not torch.allclose(default, game(model, pixels, text_features, start_layer=0))


def test_camlib_wrapper_outputs_clip_cosine(model, text_features):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = F.normalize(model.encode_image(pixels), dim=-1) @ F.normalize(text_features, dim=-1).T
        torch.testing.assert_close(CosineToPrompts(model, text_features)(pixels), want, rtol=1e-5, atol=1e-6)


def test_camlib_adapter_matches_hand_grad_cam(text_features):
    # The package's plain GradCAM through the adapter equals Grad-CAM computed here by hand on the same layer
    # (the last block's ln_1 output): ReLU(sum_c mean_tokens(dcos/dA_c) A_c), min-max normalised per map.
    from pytorch_grad_cam import GradCAM
    m = tiny_clip(11)
    pixels = torch.randn(2, 3, 24, 40)
    got = _explain_with(GradCAM, m, pixels, text_features)
    kept = {}
    block = m.visual.transformer.resblocks[-1]
    handle = block.ln_1.register_forward_hook(lambda mod, inp, out: kept.__setitem__("a", out))
    try:
        for b in range(2):
            for k in range(3):
                out = CosineToPrompts(m, text_features)(pixels[b:b + 1])
                a = kept["a"]  # (L, 1, W)
                (g,) = torch.autograd.grad(out[0, k], a)
                cam = (g[1:].mean(0, keepdim=True) * a[1:]).sum(-1).clamp(min=0)[:, 0].reshape(3, 5).detach()
                cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
                torch.testing.assert_close(got[b, k], cam, rtol=1e-3, atol=1e-4)
    finally:
        handle.remove()


def test_bad_method_inputs(model, text_features):
    with pytest.raises(ValueError, match=r"start_layer must be an int in -2\.\.1"):
        game(model, torch.randn(1, 3, 32, 32), text_features, start_layer=5)
    with pytest.raises(ValueError, match=r"shape \(K, 32\)"):
        maskclip(model, torch.randn(1, 3, 32, 32), torch.randn(2, 7))
    with pytest.raises(ValueError, match="unknown method 'gradcam'; known methods: clip_surgery, eigencam, game, gem, grad_cam"):
        explain(model, np.zeros((8, 8, 3), np.uint8), "x", method="gradcam")
