"""LeGrad, CLIP Surgery and GEM against naive references written here from the papers' formulas.

The references run openai-clip's blocks from their weights token by token, with explicit loops over layers, heads,
tokens and prompts; they share with the package only the tokens entering block 0 (patch embedding, class token and
interpolated positions, tested in test_backbones). The same weights are then explained through openai-clip,
open_clip and transformers, on a non-square 3x5 grid with several prompts of different values.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from gradeclip import get_method
from gradeclip.backbones.base import backbone_of

from backbone_models import as_hf_clip, as_open_clip, tiny_siglip
from conftest import tiny_clip

GRID = (3, 5)


@pytest.fixture(scope="module")
def tiny():
    """3 blocks of width 128 (2 heads), patch 8; pixels (2, 3, 24, 40): a 3x5 grid, not the trained 4x4."""
    model = tiny_clip(11, vision_layers=3)
    torch.manual_seed(5)
    pixels = torch.randn(2, 3, 24, 40)
    text = torch.randn(3, model.visual.output_dim)  # three prompts, unnormalised, of different values
    return model, pixels, text


def libraries(model):
    return {"openai-clip": model, "open_clip": as_open_clip(model), "transformers": as_hf_clip(model)}


# ----- the naive pieces, from openai-clip's weights
def qkv(block, x):
    """x (L, W) -> q, k, v (L, W), after the block's ln_1."""
    return F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)


def head_slices(width, heads):
    d = width // heads
    return [slice(h * d, (h + 1) * d) for h in range(heads)], d


def out_proj(block, o):
    return F.linear(o, block.attn.out_proj.weight, block.attn.out_proj.bias)


def block_forward(block, x, weights=None):
    """One block on x (L, W) with attention weights per head (a list of (L, L)); computed here when None."""
    q, k, v = qkv(block, x)
    heads = block.attn.num_heads
    slices, d = head_slices(x.shape[1], heads)
    if weights is None:
        weights = [torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1) for s in slices]
    o = torch.cat([weights[h] @ v[:, s] for h, s in enumerate(slices)], dim=1)
    x = x + out_proj(block, o)
    return x + block.mlp(block.ln_2(x))


def joint(model, rows):
    """Rows (R, W) -> unit features (R, D): ln_post, proj, L2 normalisation."""
    return F.normalize(model.visual.ln_post(rows) @ model.visual.proj, dim=-1)


def minmax(values):
    values = torch.as_tensor(values)
    return (values - values.min()) / (values.max() - values.min())


def test_naive_forward_is_the_models(tiny):
    """The references' block forward gives openai-clip's own embedding (catches a reference that explains some
    other network, e.g. a forgotten MLP residual or a head split on the wrong axis)."""
    model, _, _ = tiny
    pixels = torch.randn(1, 3, 32, 32)
    x = backbone_of(model).embed_image(pixels)[0]
    for block in model.visual.transformer.resblocks:
        x = block_forward(block, x)
    with torch.no_grad():
        own = model.encode_image(pixels)
    torch.testing.assert_close(joint(model, x[:1]), F.normalize(own, dim=-1), atol=1e-5, rtol=1e-5)


# ----- LeGrad
def legrad_reference(model, pixels, text, start=0):
    """map_k = mean over layers l >= start of mean_heads ReLU(d s^l_k / d A^l)[class row, patches], with s^l_k the
    cosine of proj(ln_post(class token after block l)) to t_k; the gradient taken with respect to the full (L, L)
    attention of block l, one backward per frame, layer, prompt."""
    blocks = model.visual.transformer.resblocks
    t = F.normalize(text, dim=-1)
    out = torch.zeros(pixels.shape[0], text.shape[0], GRID[0] * GRID[1])
    for b in range(pixels.shape[0]):
        x = backbone_of(model).embed_image(pixels[b:b + 1])[0].detach()
        for layer, block in enumerate(blocks):
            q, k, _ = qkv(block, x)
            slices, d = head_slices(x.shape[1], block.attn.num_heads)
            weights = [torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1).detach().requires_grad_(True)
                       for s in slices]
            z = block_forward(block, x, weights)
            if layer >= start:
                score = joint(model, z[:1])[0] @ t.T  # (K,)
                for kk in range(text.shape[0]):
                    grads = torch.autograd.grad(score[kk], weights, retain_graph=True)
                    per_head = [g.clamp(min=0)[0, 1:] for g in grads]
                    out[b, kk] += sum(per_head) / len(per_head)
            x = z.detach()
    return out.reshape(*out.shape[:2], *GRID) / (len(blocks) - start)


@pytest.mark.parametrize("library", ["openai-clip", "open_clip", "transformers"])
def test_legrad_matches_reference(tiny, library):
    """Catches: the gradient taken of the final score instead of each layer's own (only the last layer would
    match), ReLU after the head mean instead of before, the sum over layers instead of the mean, the prefix column
    kept (maps shifted by one token), heads and tokens swapped in the weights' reshape."""
    model, pixels, text = tiny
    expected = legrad_reference(model, pixels, text)
    maps = get_method("legrad")(libraries(model)[library], pixels, text)
    assert maps.shape == (2, 3, *GRID)
    torch.testing.assert_close(maps, expected, atol=1e-6 * float(expected.abs().max()) + 1e-9, rtol=1e-4)
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # the prompt matters


def test_legrad_start_layer(tiny):
    """start_layer=-1 keeps the last block only (catches an option read but ignored, or an off-by-one start)."""
    model, pixels, text = tiny
    maps = get_method("legrad")(model, pixels, text, start_layer=-1)
    torch.testing.assert_close(maps, legrad_reference(model, pixels, text, start=2),
                               atol=1e-6 * float(maps.abs().max()) + 1e-9, rtol=1e-4)
    with pytest.raises(ValueError, match=r"start_layer must be an int in -3\.\.2 \(the model has 3 blocks\), got 3"):
        get_method("legrad")(model, pixels, text, start_layer=3)


def legrad_head_reference(states, norm, query, key, value, heads, rest, text, skip=0):
    """LeGrad on an attention-pooling head, with loops over frames, layers, heads and prompts. For the tokens z^l
    (B, L, C) leaving each block (``states``, the library's own), h = norm(z^l) (the model's norm before its head),
    the probe's weights per head a_m = softmax_i(q_m . k_m(h_i) / sqrt(d)) taken as leaves, o = concat_m a_m v_m,
    s^l_k = cos(rest(o), t_k); E^l = mean_m ReLU(d s^l_k / d a_m); the map is the mean of E^l over the layers, over
    the columns after ``skip`` prefix tokens (a class token: attended, not mapped). ``query`` (W,), ``key`` and
    ``value``: h (L, C) -> (L, W), ``rest``: o (1, W) -> (1, D). Returns maps (B, K, L - skip) and the last
    layer's features (B, D) (to be compared with the model's own embedding)."""
    t = F.normalize(text, dim=-1)
    maps = torch.zeros(states[0].shape[0], text.shape[0], states[0].shape[1] - skip)
    last = []
    slices, d = head_slices(query.shape[0], heads)
    for b in range(states[0].shape[0]):
        for z in states:
            with torch.no_grad():
                h = norm(z[b])
                k, v = key(h), value(h)
            weights = [torch.softmax(k[:, s] @ query[s] / math.sqrt(d), dim=0).detach().requires_grad_(True)
                       for s in slices]
            feature = rest(torch.cat([w @ v[:, s] for w, s in zip(weights, slices)])[None])[0]
            score = F.normalize(feature, dim=-1) @ t.T
            for kk in range(t.shape[0]):
                grads = torch.autograd.grad(score[kk], weights, retain_graph=True)
                maps[b, kk] += sum(g.clamp(min=0)[skip:] for g in grads) / heads
        last.append(feature.detach())
    return maps / len(states), torch.stack(last)


def test_legrad_on_siglip_pooling_head():
    """On SigLIP the score of layer l is the pooling head on block l's tokens, and A^l the probe's attention.
    Reference: transformers' own hidden states, and the head computed here with loops over heads (catches the
    head fed without its post_layernorm, the last block's tokens used for every layer, or ReLU forgotten)."""
    model = tiny_siglip(3)
    torch.manual_seed(8)
    pixels, text = torch.randn(2, 3, 32, 32), torch.randn(2, model.config.vision_config.hidden_size)
    vm, head = model.vision_model, model.vision_model.head
    with torch.no_grad():
        out = vm(pixel_values=pixels, output_hidden_states=True)
        states, own = out.hidden_states[1:], out.pooler_output  # tokens after each layer; the head's embedding
    attn = head.attention
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)

    def rest(o):
        y = attn.out_proj(o)
        return y + head.mlp(head.layernorm(y))

    expected, features = legrad_head_reference(
        states, vm.post_layernorm, F.linear(head.probe[0], wq, bq)[0], lambda h: F.linear(h, wk, bk),
        lambda h: F.linear(h, wv, bv), attn.num_heads, rest, text)
    torch.testing.assert_close(features, own, atol=1e-5, rtol=1e-5)  # the reference's head is the model's own
    expected = expected.reshape(2, 2, 4, 4)
    maps = get_method("legrad")(model, pixels, text)
    torch.testing.assert_close(maps, expected, atol=1e-6 * float(expected.abs().max()) + 1e-9, rtol=1e-4)


def per_head(norm, t, heads):
    """timm's per-head q/k norm of t (..., W) split into ``heads`` heads."""
    return norm(t.reshape(*t.shape[:-1], heads, -1)).reshape(t.shape)


def test_legrad_on_open_clip_timm_siglip():
    """open_clip's SigLIP (timm trunk, ``AttentionPoolLatent`` head), non-square 3x5 grid (timm's dynamic size),
    three prompts: the reference takes each block's tokens from hooks on timm's own blocks, then the trunk's final
    ``norm``, the head's ``q``/``kv`` (per-head q/k norms), ``proj``, its norm + MLP residual, ``fc_norm`` and the
    heads. Catches: the head fed without the trunk's final norm, the latent's q and the kv's k swapped, the head's
    MLP residual left out of the layer's score, the same (last) block's tokens used for every layer."""
    from backbone_models import tiny_open_clip_siglip

    model = tiny_open_clip_siglip(4, dynamic=True, layers=3)
    trunk, visual = model.visual.trunk, model.visual
    ap = trunk.attn_pool
    assert ap.pos_embed is None  # the reference below adds no positions inside the head
    torch.manual_seed(3)
    pixels, text = torch.randn(2, 3, 24, 40), torch.randn(3, 64)
    states = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: states.append(out.detach())) for b in trunk.blocks]
    with torch.no_grad():
        own = model.encode_image(pixels, normalize=False)
    for hook in hooks:
        hook.remove()
    assert len(states) == 3 and states[0].shape == (2, 15, 64)
    heads = ap.num_heads

    def rest(o):
        y = ap.proj(o)
        return visual.head(trunk.head(trunk.fc_norm(y + ap.mlp(ap.norm(y)))))

    with torch.no_grad():
        query = per_head(ap.q_norm, ap.q(ap.latent)[0, 0], heads)
    expected, features = legrad_head_reference(
        states, trunk.norm, query, lambda h: per_head(ap.k_norm, ap.kv(h).chunk(2, dim=-1)[0], heads),
        lambda h: ap.kv(h).chunk(2, dim=-1)[1], heads, rest, text)
    torch.testing.assert_close(features, own, atol=1e-5, rtol=1e-5)
    expected = expected.reshape(2, 3, *GRID)
    assert expected.amax(dim=(-1, -2)).gt(0).all()
    maps = get_method("legrad")(model, pixels, text)
    torch.testing.assert_close(maps, expected, atol=1e-6 * float(expected.abs().max()) + 1e-9, rtol=1e-4)
    assert not torch.allclose(maps[:, 0], maps[:, 1])


def test_legrad_on_coca():
    """open_clip's CoCa: the embedding is the attentional pooler's first query after ``ln_post`` and ``proj``; the
    class token is attended, not mapped. Reference from open_clip's own blocks and the pooler's ``ln_k``,
    ``ln_q(query)``, projections, ``out_proj``, ``ln_post`` and ``proj``, on a non-square 3x5 grid (positions
    resized as in test_open_clip_pooling). Catches: the class token's column mapped as a patch (maps shifted by one),
    the pooler's second query used as the probe, ``ln_post`` skipped in the layer's score, the class token's row
    read instead (CoCa has one, but its embedding is the pooler's)."""
    from backbone_models import tiny_coca
    from test_open_clip_pooling import _coca_embeds

    model = tiny_coca()
    v = model.visual
    p = v.attn_pool
    a = p.attn
    wq, wk, wv = a.q_proj_weight, a.k_proj_weight, a.v_proj_weight  # pooler width 32, tower width 128
    bq, bk, bv = a.in_proj_bias.chunk(3)
    torch.manual_seed(6)
    text = torch.randn(3, 32)

    def reference(pixels):
        states = []
        with torch.no_grad():
            x = _coca_embeds(v, pixels)
            for block in v.transformer.resblocks:
                x = block(x)
                states.append(x)
            query = p.ln_q(p.query)[0] @ wq.T + bq
        return legrad_head_reference(states, p.ln_k, query, lambda h: h @ wk.T + bk, lambda h: h @ wv.T + bv,
                                     a.num_heads, lambda o: v.ln_post(a.out_proj(o)) @ v.proj, text, skip=1)

    square = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        own = model.encode_image(square, normalize=False)
    torch.testing.assert_close(reference(square)[1], own, atol=1e-5, rtol=1e-5)  # the reference's pooler is CoCa's
    pixels = torch.randn(2, 3, 24, 40)
    expected = reference(pixels)[0].reshape(2, 3, *GRID)
    assert expected.amax(dim=(-1, -2)).gt(0).all()
    maps = get_method("legrad")(model, pixels, text)
    torch.testing.assert_close(maps, expected, atol=1e-6 * float(expected.abs().max()) + 1e-9, rtol=1e-4)
    assert not torch.allclose(maps[:, 0], maps[:, 2])


# ----- CLIP Surgery
def surgery_reference(model, pixels, text, layers):
    """The added value-value path over the last ``layers`` blocks, then feature surgery with loops over patches
    and prompts: S_ik = sum_c (f_ic t_kc w_k - mean_k' f_ic t_k'c w_k'), w = softmax(2 c.t) / its mean; min-max."""
    blocks = model.visual.transformer.resblocks
    t = F.normalize(text, dim=-1)
    n_prompts = text.shape[0]
    out = torch.zeros(pixels.shape[0], n_prompts, GRID[0] * GRID[1])
    with torch.no_grad():
        for b in range(pixels.shape[0]):
            x = backbone_of(model).embed_image(pixels[b:b + 1])[0]
            for block in blocks[:len(blocks) - layers]:
                x = block_forward(block, x)
            y = x
            for block in blocks[len(blocks) - layers:]:
                _, _, v = qkv(block, x)
                slices, d = head_slices(x.shape[1], block.attn.num_heads)
                o = torch.cat([torch.softmax(v[:, s] @ v[:, s].T / math.sqrt(d), dim=-1) @ v[:, s]
                               for s in slices], dim=1)
                y = y + out_proj(block, o)
                x = block_forward(block, x)
            cls = joint(model, x[:1])[0]
            p = torch.softmax(2 * (t @ cls), dim=0)
            w = p / p.mean()
            for i in range(1, x.shape[0]):
                f = joint(model, y[i:i + 1])[0]
                if n_prompts == 1:
                    out[b, 0, i - 1] = f @ t[0]
                    continue
                redundant = sum(f * t[kk] * w[kk] for kk in range(n_prompts)) / n_prompts
                for kk in range(n_prompts):
                    out[b, kk, i - 1] = (f * t[kk] * w[kk] - redundant).sum()
            for kk in range(n_prompts):
                out[b, kk] = minmax(out[b, kk])
    return out.reshape(*out.shape[:2], *GRID)


@pytest.mark.parametrize("library", ["openai-clip", "open_clip", "transformers"])
def test_clip_surgery_matches_reference(tiny, library):
    """Catches: q-k attention in the added path instead of v-v, the MLP applied on the added path, the redundant
    feature not subtracted (or its mean over patches instead of prompts), the class weights left out or taken
    without the temperature 2, the default number of blocks (half: 1 of 3) off by one."""
    model, pixels, text = tiny
    maps = get_method("clip_surgery")(libraries(model)[library], pixels, text)
    torch.testing.assert_close(maps, surgery_reference(model, pixels, text, layers=1), atol=2e-5, rtol=1e-4)
    assert maps.shape == (2, 3, *GRID) and maps.min() == 0 and maps.amax(dim=(-1, -2)).eq(1).all()


def test_clip_surgery_layers_and_one_prompt(tiny):
    """layers=3 starts the added path at block 0 (catches a start at the wrong block); one prompt gives the
    surgery path's cosine (catches an all-zero map: the one prompt's product minus itself)."""
    model, pixels, text = tiny
    maps = get_method("clip_surgery")(model, pixels, text, layers=3)
    torch.testing.assert_close(maps, surgery_reference(model, pixels, text, layers=3), atol=2e-5, rtol=1e-4)
    one = get_method("clip_surgery")(model, pixels, text[1:2], layers=2)
    torch.testing.assert_close(one, surgery_reference(model, pixels, text[1:2], layers=2), atol=2e-5, rtol=1e-4)
    assert one.max() == 1
    with pytest.raises(ValueError, match="layers must be at most the model's 3 blocks, got 4"):
        get_method("clip_surgery")(model, pixels, text, layers=4)


# ----- GEM
def gem_reference(model, pixels, text, layers, iterations=1, temperature=None):
    """The parallel self-self path: per head, for p in q, k, v: p <- softmax(tau n(p) n(p)^T) n(p) ``iterations``
    times, A_p = softmax(tau n(p) n(p)^T); the path adds out_proj(mean_p A_p v); tau = mean_tokens |ln_1(x)| / sqrt(d)
    per image. Patches: cosine of proj(ln_post(y_i)) with each prompt, min-max."""
    blocks = model.visual.transformer.resblocks
    t = F.normalize(text, dim=-1)
    out = torch.zeros(pixels.shape[0], text.shape[0], GRID[0] * GRID[1])

    def attention(p, tau):
        rows = [r / r.norm() for r in p]  # L2 normalisation token by token
        p = torch.stack(rows)
        return torch.softmax(tau * p @ p.T, dim=-1)

    with torch.no_grad():
        for b in range(pixels.shape[0]):
            x = backbone_of(model).embed_image(pixels[b:b + 1])[0]
            for block in blocks[:len(blocks) - layers]:
                x = block_forward(block, x)
            y = x
            for block in blocks[len(blocks) - layers:]:
                h = block.ln_1(x)
                q, k, v = qkv(block, x)
                slices, d = head_slices(x.shape[1], block.attn.num_heads)
                tau = sum(float(row.norm()) for row in h) / h.shape[0] / math.sqrt(d) if temperature is None \
                    else temperature
                o = []
                for s in slices:
                    mixed = 0
                    for p in (q[:, s], k[:, s], v[:, s]):
                        for _ in range(iterations):
                            p = attention(p, tau) @ torch.stack([r / r.norm() for r in p])
                        mixed = mixed + attention(p, tau) / 3
                    o.append(mixed @ v[:, s])
                y = y + out_proj(block, torch.cat(o, dim=1))
                x = block_forward(block, x)
            for kk in range(text.shape[0]):
                out[b, kk] = minmax([float(joint(model, y[i:i + 1])[0] @ t[kk]) for i in range(1, y.shape[0])])
    return out.reshape(*out.shape[:2], *GRID)


@pytest.mark.parametrize("library", ["openai-clip", "open_clip", "transformers"])
def test_gem_matches_reference(tiny, library):
    """Catches: a fixed temperature instead of the adaptive one (or the norm of x before ln_1), the last
    normalisation before A_p forgotten, A_p applied to the normalised p instead of v, the mean of the three
    attentions replaced by one, the MLP on the parallel path."""
    model, pixels, text = tiny
    maps = get_method("gem")(libraries(model)[library], pixels, text[:2])
    torch.testing.assert_close(maps, gem_reference(model, pixels, text[:2], layers=1), atol=2e-5, rtol=1e-4)
    assert maps.shape == (2, 2, *GRID) and not torch.allclose(maps[:, 0], maps[:, 1])


def test_gem_options(tiny):
    """iterations=2, layers=2 and a fixed temperature each change the reference in its own way (catches an option
    accepted but unused, a loop run once whatever ``iterations`` says)."""
    model, pixels, text = tiny
    for options, ref in [({"iterations": 2, "layers": 2}, {"iterations": 2, "layers": 2}),
                         ({"temperature": 3.0, "layers": 3}, {"temperature": 3.0, "layers": 3}),
                         ({"iterations": 0}, {"iterations": 0, "layers": 1})]:
        maps = get_method("gem")(model, pixels, text[:2], **options)
        torch.testing.assert_close(maps, gem_reference(model, pixels, text[:2], **ref), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="temperature must be a positive number or None"):
        get_method("gem")(model, pixels, text, temperature=0)


@pytest.mark.parametrize("name", ["clip_surgery", "gem"])
@pytest.mark.parametrize("family", ["SiglipModel", "CoCa"])
def test_refused_without_class_token(name, family):
    """SigLIP has no per-token projection into the joint space, and CoCa's class token is not its embedding (the
    attentional pooler's first query is): refused in one line naming the method, the model class, why, and the
    methods that work there, LeGrad among them (catches a silent map from the pooling head's inputs, or CoCa's
    class token read as if it were the embedding)."""
    from backbone_models import tiny_coca

    model = tiny_siglip(1) if family == "SiglipModel" else tiny_coca()
    text = torch.randn(2, model.config.vision_config.hidden_size if family == "SiglipModel" else 32)
    with pytest.raises(ValueError, match=rf"^{name} needs the image embedding to be the class token's row; "
                                         rf"{family} pools its image embedding with an attention head instead "
                                         r"\(use grad_eclip, legrad, grad_cam, maskclip or rise\)$") as err:
        get_method(name)(model, torch.randn(1, 3, 32, 32), text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["legrad", "clip_surgery", "gem"])
def test_features_of_the_same_forward_are_the_models(tiny, name):
    """The image features each method hands back with its maps (so that scores need no second forward) are the
    model's own embedding (catches features read from the added path, e.g. pool(y) instead of pool(x), or from a
    block's tokens before the last)."""
    from gradeclip.methods.baselines import run_method

    model, pixels, text = tiny
    maps, features = run_method(name, model, pixels, text)
    torch.testing.assert_close(features, backbone_of(model).encode_pixels(pixels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps, get_method(name)(model, pixels, text))


@pytest.mark.parametrize("depth, blocks", [(14, 6), (4, 2)])
def test_surgery_and_gem_default_depth_follows_the_authors(depth, blocks):
    """The added path's default: the authors' last 6 blocks (CLIP Surgery and GEM modify blocks -1..-6 of ViT-B and
    ViT-L alike), half the blocks below 12. Checked against the naive references with ``blocks`` last blocks, and
    against one block more and one less. Catches: the old half-depth default (7 of 14), an off-by-one in the block
    range (GEM's ``range(1, depth)`` read as depth blocks), the cap applied to small models (4 blocks -> 4)."""
    model = tiny_clip(21, vision_layers=depth, vision_width=64)
    torch.manual_seed(4)
    pixels, text = torch.randn(1, 3, 24, 40), torch.randn(2, model.visual.output_dim)
    for name, reference in (("clip_surgery", surgery_reference), ("gem", gem_reference)):
        maps = get_method(name)(model, pixels, text)
        torch.testing.assert_close(maps, reference(model, pixels, text, layers=blocks), atol=2e-5, rtol=1e-4)
        for other in (blocks - 1, blocks + 1):  # the fixture tells the block counts apart
            assert not torch.allclose(maps, get_method(name)(model, pixels, text, layers=other), atol=1e-3)
