"""Grad-ECLIP against a naive reference written here straight from the paper's formulas.

The reference shares nothing with the package: it runs the decomposed blocks token by token with explicit loops
over heads, takes one backward per frame and prompt, and builds each map with loops over patches and channels:

    w = d cos(image_b, text_k) / d o[class row]          (o: attention output before out_proj)
    lambda_i = (s_i - min s) / (max s - min s),  s_i = <q_cls, k_i> / (|q_cls| |k_i|)   over patch tokens i
    H_i = sum over decomposed layers of ReLU( sum_c w_c v_{i,c} lambda_i )
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradeclip import encode_prompts, grad_eclip_image, grad_eclip_text, tokenize
from gradeclip.backbones.vit import encode_pixels

from conftest import tiny_clip


def ref_attention(q, k, v, heads, mask=None):
    """q, k, v: (L, W) one sequence. Loops over heads. Returns o (L, W)."""
    length, width = q.shape
    d = width // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = (q[:, sl] / math.sqrt(d)) @ k[:, sl].T
        if mask is not None:
            logits = logits + mask
        outs.append(torch.softmax(logits, dim=-1) @ v[:, sl])
    return torch.cat(outs, dim=1)


def ref_cosine_weights(q_row, keys):
    s = torch.tensor([float(q_row @ key / (q_row.norm() * key.norm())) for key in keys])
    return (s - s.min()) / (s.max() - s.min())


def layer_scale(block, name):
    """The per-channel gamma (W,) of an open_clip block's LayerScale ``ls_1``/``ls_2``; 1 where there is none."""
    return getattr(getattr(block, name, None), "gamma", 1.0)


def ref_image_maps(model, pixels, text_features, layers=1, heads=None, use_lambda=True):
    """openai-clip's or open_clip's own ViT (LayerScale gammas applied where the blocks have them)."""
    visual = model.visual
    batch_first = getattr(visual.transformer, "batch_first", False)
    blocks = list(visual.transformer.resblocks)
    patch = visual.conv1.kernel_size[0]
    gh, gw = pixels.shape[2] // patch, pixels.shape[3] // patch
    out = torch.zeros(pixels.shape[0], text_features.shape[0], gh * gw)
    cosines = torch.zeros(pixels.shape[0], text_features.shape[0])
    for b in range(pixels.shape[0]):
        for kk in range(text_features.shape[0]):
            with torch.no_grad():
                x = visual.conv1(pixels[b:b + 1]).flatten(2)[0].T  # (P, W)
                pos = visual.positional_embedding
                side = int(round(math.sqrt(pos.shape[0] - 1)))
                grid_pos = pos[1:].T.reshape(1, -1, side, side)
                if (gh, gw) != (side, side):
                    grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
                x = torch.cat([visual.class_embedding[None], x]) + torch.cat([pos[:1], grid_pos.flatten(2)[0].T])
                x = visual.ln_pre(x)
                for block in blocks[:len(blocks) - layers]:
                    x = block(x[None])[0] if batch_first else block(x[:, None])[:, 0]  # N = 1
            saved = []
            for block in blocks[len(blocks) - layers:]:
                h = block.ln_1(x)
                q = h @ block.attn.in_proj_weight[:h.shape[1]].T + block.attn.in_proj_bias[:h.shape[1]]
                k = h @ block.attn.in_proj_weight[h.shape[1]:2 * h.shape[1]].T + \
                    block.attn.in_proj_bias[h.shape[1]:2 * h.shape[1]]
                v = h @ block.attn.in_proj_weight[2 * h.shape[1]:].T + block.attn.in_proj_bias[2 * h.shape[1]:]
                o = ref_attention(q, k, v, heads or block.attn.num_heads)
                if not o.requires_grad:
                    o.requires_grad_(True)
                saved.append((q.detach(), k.detach(), v.detach(), o))
                x = x + layer_scale(block, "ls_1") * block.attn.out_proj(o)
                x = x + layer_scale(block, "ls_2") * block.mlp(block.ln_2(x))
            emb = visual.ln_post(x[0]) @ visual.proj
            cos = emb @ text_features[kk] / (emb.norm() * text_features[kk].norm())
            cosines[b, kk] = cos.detach()
            grads = torch.autograd.grad(cos, [o for *_, o in saved])
            for (q, k, v, _), g in zip(saved, grads):
                w = g[0]
                lam = ref_cosine_weights(q[0], k[1:]) if use_lambda else torch.ones(gh * gw)
                for i in range(gh * gw):
                    total = 0.0
                    for c in range(w.shape[0]):
                        total += float(w[c]) * float(v[1 + i, c]) * float(lam[i])
                    out[b, kk, i] += max(total, 0.0)
    return out.reshape(pixels.shape[0], -1, gh, gw), cosines


def ref_text_weights(model, pixels, tokens, layers, heads=None):
    blocks = list(model.transformer.resblocks)
    with torch.no_grad():
        image = model.encode_image(pixels)[0]
    mask = model.build_attention_mask()
    result = []
    for row in tokens:
        eos = int(row.argmax())
        with torch.no_grad():
            x = model.token_embedding(row) + model.positional_embedding
            for block in blocks[:len(blocks) - layers]:
                x = block(x[:, None])[:, 0]
        saved = []
        width = x.shape[1]
        for block in blocks[len(blocks) - layers:]:
            h = block.ln_1(x)
            wq, wk, wv = block.attn.in_proj_weight.split(width)
            bq, bk, bv = block.attn.in_proj_bias.split(width)
            q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv
            o = ref_attention(q, k, v, heads or block.attn.num_heads, mask)
            if not o.requires_grad:
                o.requires_grad_(True)
            saved.append((q.detach(), k.detach(), v.detach(), o))
            x = x + block.attn.out_proj(o)
            x = x + block.mlp(block.ln_2(x))
        text = model.ln_final(x)[eos] @ model.text_projection
        cos = text @ image / (text.norm() * image.norm())
        grads = torch.autograd.grad(cos, [o for *_, o in saved])
        total = torch.zeros(x.shape[0])
        for (q, k, v, _), g in zip(saved, grads):
            lam = ref_cosine_weights(q[eos], k)
            for t in range(x.shape[0]):
                total[t] += sum(float(g[eos, c]) * float(v[t, c]) for c in range(width)) * float(lam[t])
        words = total.clamp(min=0)[1:eos]
        result.append(words / words.sum() if words.sum() > 0 else words)
    return result


PROMPTS = ["a person walking", "a red car", "trees"]


@pytest.fixture(scope="module")
def text_features(model):
    return encode_prompts(model, PROMPTS)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
@pytest.mark.parametrize("options", [{}, {"single_head": True}, {"spatial_weight": False}, {"layers": 2}])
def test_image_maps_match_reference(model, text_features, size, options):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, *size)
    maps = grad_eclip_image(model, pixels, text_features, **options)
    ref, _ = ref_image_maps(model, pixels, text_features, layers=options.get("layers", 1),
                            heads=1 if options.get("single_head") else None,
                            use_lambda=options.get("spatial_weight", True))
    assert maps.shape == (2, 3, size[0] // 8, size[1] // 8)
    assert maps.dtype == torch.float32
    assert ref.abs().max() > 0  # the comparison is not between two zero maps
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_reference_cosine_is_the_models_score(model, text_features):
    # With the model's own heads the decomposed forward explains exactly the model's cosine.
    pixels = torch.randn(2, 3, 32, 32)
    _, ref_cos = ref_image_maps(model, pixels, text_features)
    with torch.no_grad():
        img = F.normalize(model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(ref_cos, img @ F.normalize(text_features, dim=-1).T, rtol=1e-5, atol=1e-6)


def test_dense_forward_equals_encode_image(model):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encode_pixels(model, pixels), model.encode_image(pixels), rtol=1e-5, atol=1e-6)


def test_single_head_explains_a_different_score(model, text_features):
    pixels = torch.randn(1, 3, 32, 32)
    a = grad_eclip_image(model, pixels, text_features)
    b = grad_eclip_image(model, pixels, text_features, single_head=True)
    assert not torch.allclose(a, b)


def test_batch_equals_single_calls(model, text_features):
    pixels = torch.randn(3, 3, 24, 32)
    batch = grad_eclip_image(model, pixels, text_features)
    for b in range(3):
        for k in range(3):
            one = grad_eclip_image(model, pixels[b:b + 1], text_features[k:k + 1])
            torch.testing.assert_close(batch[b:b + 1, k:k + 1], one, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("patch,resolution,width,layers", [(16, 64, 64, 1), (8, 48, 192, 3)])
def test_other_model_shapes(patch, resolution, width, layers):
    m = tiny_clip(3, vision_width=width, vision_layers=layers, patch=patch, resolution=resolution)
    tf = encode_prompts(m, PROMPTS[:2])
    pixels = torch.randn(2, 3, 2 * patch, 5 * patch)
    maps = grad_eclip_image(m, pixels, tf, layers=layers)
    assert maps.shape == (2, 2, 2, 5)
    assert torch.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0
    ref, _ = ref_image_maps(m, pixels, tf, layers=layers)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_zero_gradient_gives_zero_maps(model):
    maps = grad_eclip_image(model, torch.randn(1, 3, 32, 32), torch.zeros(2, model.visual.output_dim))
    assert torch.equal(maps, torch.zeros_like(maps))


def test_constant_keys_give_finite_maps(model, text_features):
    """All patch keys identical (constant pixels and, on a copy, one positional embedding for every patch: with the
    model's own embeddings the keys differ and the guard is never reached): every q.k cosine is equal, so lambda
    would be 0/0. The guard makes lambda 1 everywhere, i.e. the map equals the map without the spatial weight.
    Catches a guard returning 0 (a zero map), NaN, or an epsilon that turns float noise into a spatial weight."""
    import copy

    from gradeclip.methods.grad_eclip import qk_weight

    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.visual.positional_embedding[1:] = twin.visual.positional_embedding[1:].mean(0)
    pixels = torch.zeros(1, 3, 32, 32)
    maps = grad_eclip_image(twin, pixels, text_features)
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    torch.testing.assert_close(maps, grad_eclip_image(twin, pixels, text_features, spatial_weight=False),
                               rtol=1e-5, atol=1e-7)
    keys = torch.randn(1, 1, 8).expand(1, 5, 8)
    assert torch.equal(qk_weight(torch.randn(1, 8), keys), torch.ones(1, 5))


@pytest.mark.parametrize("layers", [2, 1])
@pytest.mark.parametrize("single_head", [False, True])
def test_text_weights_match_reference(model, layers, single_head):
    pixels = torch.randn(1, 3, 32, 32)
    tokens = tokenize(model, PROMPTS)
    weights = grad_eclip_text(model, pixels, tokens, layers=layers, single_head=single_head)
    ref = ref_text_weights(model, pixels, tokens, layers, heads=1 if single_head else None)
    assert [len(w) for w in weights] == [3, 3, 1]
    for got, want in zip(weights, ref):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert float(got.sum()) == pytest.approx(1.0, abs=1e-5) or float(got.abs().sum()) == 0


def test_text_layers_beyond_depth_decompose_all(model):
    pixels = torch.randn(1, 3, 32, 32)
    tokens = tokenize(model, PROMPTS[:1])
    with pytest.warns(UserWarning, match="decomposing all 2"):
        eight = grad_eclip_text(model, pixels, tokens)  # default layers=8 on a 2-block text encoder
    torch.testing.assert_close(eight[0], grad_eclip_text(model, pixels, tokens, layers=2)[0])


def test_text_all_zero_is_zeros_not_nan(model):
    m = tiny_clip(5)
    with torch.no_grad():
        m.visual.proj.zero_()  # image embedding 0 -> cosine constant 0 -> no gradient
    w = grad_eclip_text(m, torch.randn(1, 3, 32, 32), tokenize(m, ["a dog"]), layers=2)[0]
    assert torch.equal(w, torch.zeros(2))


def test_image_bad_inputs(model, text_features):
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        grad_eclip_image(model, torch.randn(1, 3, 30, 32), text_features)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        grad_eclip_image(model, torch.randn(3, 32, 32), text_features)
    with pytest.raises(TypeError, match="float tensor"):
        grad_eclip_image(model, np.zeros((1, 3, 32, 32)), text_features)
    with pytest.raises(ValueError, match=r"shape \(K, 32\)"):
        grad_eclip_image(model, torch.randn(1, 3, 32, 32), torch.randn(2, 16))
    with pytest.raises(ValueError, match="layers must be an int >= 1"):
        grad_eclip_image(model, torch.randn(1, 3, 32, 32), text_features, layers=0)


def test_text_bad_inputs(model):
    tokens = tokenize(model, ["a dog"])
    with pytest.raises(ValueError, match=r"one preprocessed image \(1, 3, S, S\)"):
        grad_eclip_text(model, torch.randn(2, 3, 32, 32), tokens)
    with pytest.raises(ValueError, match=r"tokens must be \(K, T<=77\)"):
        grad_eclip_text(model, torch.randn(1, 3, 32, 32), torch.cat([tokens, tokens[:, :3]], dim=1))


def test_resnet_clip_is_explained():
    """Bug caught: ResNet CLIPs refused as before issue 18 (references: tests/test_resnet.py); the other encoders
    openai-clip could hold are still refused in one line."""
    from clip.model import CLIP
    rn = CLIP(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=64,
              vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
              transformer_heads=1, transformer_layers=1).eval()
    assert grad_eclip_image(rn, torch.randn(1, 3, 64, 96), torch.randn(1, 32)).shape == (1, 1, 2, 3)
    rn.visual = torch.nn.Identity()
    with pytest.raises(TypeError, match=r"cannot explain this openai-clip image encoder \(Identity\)"):
        grad_eclip_image(rn, torch.randn(1, 3, 64, 64), torch.randn(1, 32))


def test_open_clip_layer_scale_pieces_and_grad_eclip():
    """open_clip's ViT built with LayerScale, every gamma random and not 1 (per channel, 0.3 .. 1.7): for each block
    the Backbone's ``attention_out`` equals the block's own ``ls_1(attention(ln_1(x)))`` and ``finish`` the block's
    own output; Grad-ECLIP over two blocks (non-square 3x5 grid, three prompts) equals the naive reference with the
    gammas. Catches: LayerScale forgotten in ``attention_out`` (CLIP Surgery's and GEM's added paths) or in
    ``finish`` (ls_1 or ls_2), a gamma applied twice, or applied to o before the out-projection."""
    from open_clip.model import CLIP

    from gradeclip.backbones.base import attend, backbone_of

    torch.manual_seed(12)
    model = CLIP(32, vision_cfg={"image_size": 32, "layers": 3, "width": 128, "patch_size": 8, "ls_init_value": 1.0},
                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}).eval()
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            for ls in (block.ls_1, block.ls_2):
                ls.gamma.copy_(0.3 + 1.4 * torch.rand_like(ls.gamma))
    bb = backbone_of(model)
    pixels, text = torch.randn(2, 3, 24, 40), torch.randn(3, 32)
    with torch.no_grad():
        x = bb.embed_image(pixels)
        for i, block in enumerate(model.visual.transformer.resblocks):
            q, k, v = bb.qkv(i, x)
            o, _ = attend(q, k, v, bb.heads(i))
            own = block.ls_1(block.attention(block.ln_1(x)))
            torch.testing.assert_close(bb.attention_out(i, o), own, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(own, block.attention(block.ln_1(x)), atol=1e-3)  # the gammas matter
            torch.testing.assert_close(bb.finish(i, x, o), block(x), atol=1e-5, rtol=1e-5)
            x = block(x)
    expected, cosines = ref_image_maps(model, pixels, text, layers=2)
    maps = grad_eclip_image(model, pixels, text, layers=2)
    assert expected.max() > 0
    torch.testing.assert_close(maps, expected, atol=1e-6 * float(expected.max()), rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(bb.encode_pixels(pixels), dim=-1) @ F.normalize(text, dim=-1).T,
                                   cosines, atol=1e-5, rtol=1e-5)
