"""Video-level (clip) explanations under mean pooling, against references written here from the formulas.

    v = mean_t f_t/|f_t|,  cosine_k = cos(v, g_k),  frame_importance[t, k] = <f_t/|f_t|, g_k> / (T |v| |g_k|)

The Grad-ECLIP reference shares nothing with the package's pipeline: each frame runs through the model's own modules
token by token with explicit loops over heads, the clip cosine is built from all T embeddings, one autograd
backward per prompt reaches every frame's attention output, and each map is built with loops over heads, channels
and patches.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip as openai_clip
import gradeclip
from gradeclip.clip_level import explain_clip, explain_clip_video

from conftest import tiny_clip, write_video

PROMPTS = ["a dog running", "a red car"]


@pytest.fixture(scope="module")
def clip_model():
    """A tiny random CLIP of its own (seed 3), so that these tests do not share the session model's numbers."""
    return tiny_clip(seed=3)


@pytest.fixture(scope="module")
def frames():
    """T = 4 non-square frames (40 x 56: a 5 x 7 grid at patch 8), different content per frame."""
    rng = np.random.default_rng(7)
    out = rng.integers(0, 256, (4, 40, 56, 3), dtype=np.uint8)
    out[1, :, :28] = (200, 30, 30)  # frames differ in more than noise
    out[3] //= 3
    return out


def naive_features(model, frames):
    """Image features (T, D) from the library's own ``encode_image``, one frame at a time (library input)."""
    from PIL import Image
    transform = gradeclip.backbones.backbone_of(model).preprocess()
    with torch.no_grad():
        return torch.cat([model.encode_image(transform(Image.fromarray(f))[None]) for f in frames]).double()


def naive_text(model, prompts):
    with torch.no_grad():
        return model.encode_text(openai_clip.tokenize(prompts)).double()


def naive_clip_score(feats, text):
    """cosine (K,) and frame importance (T, K) with explicit loops over frames and prompts."""
    t_count = feats.shape[0]
    v = sum(feats[t] / feats[t].norm() for t in range(t_count)) / t_count
    cosine = torch.tensor([float(v @ g / (v.norm() * g.norm())) for g in text], dtype=torch.float64)
    importance = torch.zeros(t_count, len(text), dtype=torch.float64)
    for t in range(t_count):
        for k, g in enumerate(text):
            importance[t, k] = feats[t] @ g / (feats[t].norm() * t_count * v.norm() * g.norm())
    return cosine, importance


def test_cosine_and_importance_match_encode_image_loop(clip_model, frames):
    """Catches: pooling unnormalised features (mean of f_t instead of f_t/|f_t|), a missing 1/T or 1/|v| in the
    importance, T and K axes swapped in frame_importance, probs from per-frame instead of the clip cosine."""
    model = clip_model
    result = explain_clip(model, frames, PROMPTS, input="library", batch_size=3, progress=False)
    cosine, importance = naive_clip_score(naive_features(model, frames), naive_text(model, PROMPTS))
    assert result.cosine.shape == (2,) and result.frame_importance.shape == (4, 2)
    np.testing.assert_allclose(result.cosine, cosine.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.frame_importance, importance.numpy(), atol=1e-6)
    np.testing.assert_allclose(result.frame_importance.sum(axis=0), result.cosine, atol=1e-6)  # exact additivity
    expected = torch.softmax(model.logit_scale.detach().exp().double() * cosine, dim=0).numpy()
    np.testing.assert_allclose(result.probs, expected, atol=1e-5)
    assert np.array_equal(result.indices, np.arange(4)) and np.isnan(result.times).all()


def ref_attention(q, k, v, heads):
    length, width = q.shape
    d = width // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        outs.append(torch.softmax((q[:, sl] / math.sqrt(d)) @ k[:, sl].T, dim=-1) @ v[:, sl])
    return torch.cat(outs, dim=1)


def ref_clip_grad_eclip(model, pixels, text):
    """Grad-ECLIP of the clip cosine, last block decomposed: (T, K, P) maps and the clip cosine (K,)."""
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    patch = visual.conv1.kernel_size[0]
    gh, gw = pixels.shape[2] // patch, pixels.shape[3] // patch
    saved, embeddings = [], []
    for t in range(pixels.shape[0]):
        with torch.no_grad():
            x = visual.conv1(pixels[t:t + 1]).flatten(2)[0].T
            pos = visual.positional_embedding
            side = int(round(math.sqrt(pos.shape[0] - 1)))
            grid_pos = F.interpolate(pos[1:].T.reshape(1, -1, side, side), size=(gh, gw), mode="bicubic",
                                     align_corners=False)
            x = torch.cat([visual.class_embedding[None], x]) + torch.cat([pos[:1], grid_pos.flatten(2)[0].T])
            x = visual.ln_pre(x)
            for block in blocks[:-1]:
                x = block(x[:, None])[:, 0]
        block = blocks[-1]
        width = x.shape[1]
        h = block.ln_1(x)
        wq, wk, wv = block.attn.in_proj_weight.split(width)
        bq, bk, bv = block.attn.in_proj_bias.split(width)
        q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv
        o = ref_attention(q, k, v, block.attn.num_heads).requires_grad_(True)
        y = x + block.attn.out_proj(o)
        y = y + block.mlp(block.ln_2(y))
        embeddings.append(visual.ln_post(y[0]) @ visual.proj)
        saved.append((q.detach(), k.detach(), v.detach(), o, block.attn.num_heads))
    pooled = sum(e / e.norm() for e in embeddings) / len(embeddings)
    out = torch.zeros(pixels.shape[0], len(text), gh * gw)
    cosines = []
    for kk, g in enumerate(text):
        cos = pooled @ g / (pooled.norm() * g.norm())
        cosines.append(float(cos.detach()))
        grads = torch.autograd.grad(cos, [o for _, _, _, o, _ in saved], retain_graph=True)
        for t, ((q, k, v, _, heads), grad) in enumerate(zip(saved, grads)):
            w = grad[0]  # the class token's row of the attention output
            s = torch.tensor([float(q[0] @ key / (q[0].norm() * key.norm())) for key in k[1:]])
            lam = (s - s.min()) / (s.max() - s.min())
            d = width // heads
            for i in range(gh * gw):
                total = 0.0
                for head in range(heads):
                    for c in range(head * d, (head + 1) * d):
                        total += float(w[c]) * float(v[1 + i, c])
                out[t, kk, i] = max(total * float(lam[i]), 0.0)
    return out.reshape(pixels.shape[0], len(text), gh, gw), torch.tensor(cosines)


def test_grad_eclip_maps_equal_clip_score_reference(clip_model, frames):
    """T = 4, K = 2, non-square frames. Catches: maps of each frame's own cosine instead of the clip score (a
    missing gain |d_k|/T or the per-frame direction), T and K swapped in raw, a lost ReLU, a wrong frame order
    across batches (batch_size 3 splits the clip)."""
    model = clip_model
    result = explain_clip(model, frames, PROMPTS, input="native", batch_size=3, progress=False)
    pixels = gradeclip.to_pixels(model, frames, input="native")
    text = naive_text(model, PROMPTS).float()
    expected, cosine = ref_clip_grad_eclip(model, pixels, text)
    assert result.raw.shape == (4, 2, 5, 7)
    np.testing.assert_allclose(result.cosine, cosine.numpy(), atol=1e-5)
    scale = np.abs(expected.numpy()).max()
    np.testing.assert_allclose(result.raw, expected.numpy(), atol=2e-4 * scale, rtol=2e-3)
    np.testing.assert_allclose(result.relevance_mass, expected.numpy().sum(axis=(2, 3)), rtol=2e-3,
                               atol=1e-4 * scale)
    # one scale per prompt over all frames: the brightest pixel of a prompt is 1 in one frame only
    assert result.maps.shape == (4, 2, 40, 56)
    peaks = result.maps.max(axis=(2, 3))
    assert np.allclose(peaks.max(axis=0), 1.0) and (peaks < 1 - 1e-3).sum() >= 4, peaks


def test_deleting_the_top_frame_lowers_the_score_more(clip_model, frames):
    """Faithfulness, exact under mean pooling: the frame with the highest importance is the one whose removal
    costs most. Catches: importance ranked with the wrong sign, or read along the wrong axis."""
    model = clip_model
    result = explain_clip(model, frames, PROMPTS, input="library", progress=False)
    feats, text = naive_features(model, frames), naive_text(model, PROMPTS)
    for k in range(len(PROMPTS)):
        order = np.argsort(result.frame_importance[:, k])
        drops = []
        for t in (order[-1], order[0]):
            keep = [i for i in range(len(frames)) if i != t]
            drops.append(float(naive_clip_score(feats, text)[0][k] - naive_clip_score(feats[keep], text)[0][k]))
        assert drops[0] > drops[1], (k, drops)


def test_methods_that_cannot_explain_a_clip_refuse_in_one_line(clip_model, frames):
    """Catches: a perturbation method silently explaining each frame's own score as if it were the clip's."""
    model = clip_model
    for method in ("rise", "maskclip", "gradcam_pp"):
        with pytest.raises(ValueError, match=f"method '{method}' cannot explain a clip score") as err:
            explain_clip(model, frames, PROMPTS, method=method, progress=False)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        explain_clip(model, frames, PROMPTS, pooling="max")


def test_grad_cam_through_the_clip_score_is_proportional_to_per_frame_grad_cam_on_the_direction(clip_model, frames):
    """Grad-CAM of the clip score: the gradient of the clip cosine w.r.t. the last block's input tokens, by autograd
    through all T frames at once (reference), averaged over tokens, times the tokens, ReLU.
    Catches: Grad-CAM run against the prompt instead of the clip score."""
    model = clip_model
    result = explain_clip(model, frames, PROMPTS, method="grad_cam", input="native", progress=False)
    bb = gradeclip.backbones.backbone_of(model)
    pixels = gradeclip.to_pixels(model, frames, input="native")
    x = bb.tokens_before(pixels, -1).detach().requires_grad_(True)
    feats = bb.pool(bb.run_blocks(x, bb.depth - 1, bb.depth))
    pooled = F.normalize(feats, dim=-1).mean(0)
    text = naive_text(model, PROMPTS).float()
    for k in range(len(PROMPTS)):
        cos = pooled @ text[k] / (pooled.norm() * text[k].norm())
        (grad,) = torch.autograd.grad(cos, [x], retain_graph=True)
        cam = (grad.mean(dim=1, keepdim=True) * x.detach()).sum(-1).relu()[:, 1:].reshape(4, 5, 7)
        np.testing.assert_allclose(result.raw[:, k], cam.numpy(), rtol=2e-3, atol=1e-4 * float(cam.max()))


# ----- the shipped shapes model on a generated clip: a red circle in frames 10-19 only

@pytest.fixture(scope="module")
def circle_clip(tmp_path_factory):
    """30 frames 64 x 80 (rows 8:72 of an 80-pixel scene): a blue square and a yellow triangle drift along the
    top in every frame; a red circle drifts along the bottom in frames 10-19 only. Returns (video path, circle
    masks (30, 64, 80))."""
    from gradeclip.eval.shapes import ShapeObject, render_scene
    frames, masks = [], []
    for i in range(30):
        objects = [ShapeObject("square", "blue", (24, 16 + 0.3 * i), 14),
                   ShapeObject("triangle", "yellow", (26, 64 - 0.2 * i), 14)]
        if 10 <= i < 20:
            objects.append(ShapeObject("circle", "red", (52, 40 + 0.5 * (i - 10)), 14))
        scene = render_scene(objects, size=80, seed=0)
        frames.append(scene.image[8:72])
        masks.append(scene.masks[2][8:72] if 10 <= i < 20 else np.zeros((64, 80), bool))
    path = write_video(tmp_path_factory.mktemp("clip") / "circle.avi", np.stack(frames), fps=10)
    return path, np.stack(masks)


def test_shapes_clip_ranks_the_circle_frames_and_maps_the_circle(circle_clip):
    """Catches: swapped T and K axes (importance of the wrong prompt or frame), per-frame normalisation of the
    maps (it would make the circle-less frames as bright as the others), wrong frame indices or times."""
    path, masks = circle_clip
    model, _ = gradeclip.load_clip(gradeclip.shapes_model(), device="cpu")
    prompts = ["a blue square", "a red circle"]
    result = explain_clip_video(model, path, prompts, frames="uniform:30", input="model", progress=False)
    assert result.maps.shape == (30, 2, 64, 80) and result.input.startswith("model ")
    assert np.array_equal(result.indices, np.arange(30))
    np.testing.assert_allclose(result.times, np.arange(30) / 10, atol=1e-6)
    importance = result.frame_importance[:, 1]
    inside = np.arange(10, 20)
    outside = np.setdiff1d(np.arange(30), inside)
    assert importance[inside].min() > importance[outside].max(), importance
    for t in inside:
        heat = result.maps[t, 1]
        share = heat[masks[t]].sum() / heat.sum()
        assert share > masks[t].mean(), (t, share, masks[t].mean())
    # one scale per prompt over the clip: a single frame reaches 1, the others' peaks are below it (per-frame
    # normalisation would put every peak at 1)
    peaks = result.maps[:, 1].max(axis=(1, 2))
    assert np.isclose(peaks.max(), 1.0) and (peaks < 0.99).sum() >= 25, peaks


# ----- the clip command end to end

def test_clip_command_end_to_end(avi, checkpoint, model, tmp_path):
    """In a subprocess, as a user runs it. Catches: a JSON whose cosine is not the clip's (e.g. per-frame scores),
    frame indices or times not the sampled frames', a figure or export missing for a prompt, an MP4 whose frame
    count is not the clip's."""
    import json
    import subprocess
    import sys

    import cv2
    from gradeclip.io.frames import read_frames
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "gradeclip", "clip", avi, "-p", "a red car", "-p", "a tree",
                           "--frames", "uniform:5", "--model", str(checkpoint), "--input", "library", "--out",
                           str(out), "--device", "cpu", "--dpi", "40"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stem = "numbered_clip_grad_eclip"
    for name in (".npz", ".json", ".mp4", ".gif", "_prompt-0.png", "_prompt-1.png"):
        assert (out / f"{stem}{name}").is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial file left
    record = json.loads((out / f"{stem}.json").read_text())
    indices = record["frame_indices"]
    assert len(indices) == 5 and indices[0] == 0 and indices[-1] == 29 and indices == sorted(set(indices))
    np.testing.assert_allclose(record["timestamps_s"], np.array(indices) / 25, atol=1e-6)
    cosine, importance = naive_clip_score(naive_features(model, read_frames(avi, indices)),
                                          naive_text(model, ["a red car", "a tree"]))
    np.testing.assert_allclose(record["cosine"], cosine.numpy(), atol=2e-5)
    np.testing.assert_allclose(record["frame_importance"], importance.numpy(), atol=2e-5)
    data = np.load(out / f"{stem}.npz")
    assert data["raw"].shape[:2] == (5, 2) and np.array_equal(data["indices"], indices)
    capture = cv2.VideoCapture(str(out / f"{stem}.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()
    assert "a red car" in proc.stdout and "clip cos" in proc.stdout


def test_clip_command_errors_and_interrupt(avi, checkpoint, tmp_path, monkeypatch, capfd):
    """Catches: a refused method printed as a traceback instead of one line and status 1; Ctrl-C during the
    export leaving a partial file under a final name, or exiting with anything but 130 and one line."""
    from gradeclip import clip_command
    from gradeclip.cli import main
    code = main(["clip", avi, "-p", "x", "--method", "rise", "--model", str(checkpoint), "--out", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "cannot explain a clip score" in err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(clip_command, "_write_overlays", interrupted)
    out = tmp_path / "cut"
    code = main(["clip", avi, "-p", "x", "--frames", "uniform:3", "--model", str(checkpoint), "--out", str(out),
                 "--device", "cpu", "--dpi", "30"])
    err = capfd.readouterr().err
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err and "numbered_clip_grad_eclip.npz" in err
    assert not list(out.glob("*.mp4")) and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_explorer_clip_view_bars_follow_importance_and_move_the_slider(avi, model):
    """The explorer's clip view: one bar per sampled frame, heights ordered as the selected prompt's frame
    importance, and a click on a bar moves the frame slider to that frame. Catches: bars drawn from the wrong
    prompt's column (T and K swapped), a click that moves to the bar's position instead of its frame index."""
    from gradeclip.viz.explorer import Explorer
    from gradeclip.viz.explorer_clip import add_clip_view
    explorer = Explorer(model, avi, ["a red car", "a tree"], input="native", words=False)
    view = add_clip_view(explorer, frames="uniform:6")
    assert explorer.children[0].children[1] is view  # right under the slider row
    result = view.result
    assert list(result.indices) == list(np.round(np.linspace(0, 29, 6)).astype(int))  # 0, 6, 12, 17, 23, 29
    for k in (0, 1):
        view.prompt.value = k
        heights = np.array([int(bar.layout.height[:-2]) for bar in view.bars.children])
        shares = np.abs(result.frame_importance[:, k])
        assert len(heights) == 6 and heights.argmax() == shares.argmax()
        np.testing.assert_allclose(heights, np.maximum(3, np.round(70 * shares / shares.max())), atol=1)
    view.bars.children[3].click()
    assert explorer.slider.value == result.indices[3] != 3
    assert view.bars.children[3].description == "▲"


def test_siglip_clip_score_and_probs_are_the_libraries_own(frames):
    """A transformers SiglipModel (attention-pooling head, Grad-ECLIP on the head): the clip cosine from
    ``get_image_features`` per frame, probs the per-prompt sigmoid of exp(logit_scale) * cos + logit_bias (not a
    softmax over prompts). Catches: CLIP's softmax applied to SigLIP, the pooling-head path reading features of the
    wrong rows, maps that are constant or non-finite."""
    from backbone_models import clip_tokenizer, tiny_siglip
    model, tokenizer = tiny_siglip(5), clip_tokenizer(16)
    result = explain_clip(model, frames, PROMPTS, tokenizer=tokenizer, input="native", batch_size=3,
                          progress=False)
    pixels = gradeclip.to_pixels(model, frames, input="native")
    def tensor(out):  # transformers 5 returns the pooled output in a model-output object
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        feats = torch.cat([tensor(model.get_image_features(pixel_values=pixels[t:t + 1],
                                                           interpolate_pos_encoding=True))
                           for t in range(len(frames))]).double()
        text = tensor(model.get_text_features(input_ids=tokenizer(PROMPTS))).double()
    cosine, importance = naive_clip_score(feats, text)
    np.testing.assert_allclose(result.cosine, cosine.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.frame_importance, importance.numpy(), atol=1e-6)
    expected = torch.sigmoid(model.logit_scale.detach().exp().double() * cosine + model.logit_bias.detach().double())
    np.testing.assert_allclose(result.probs, expected.numpy(), atol=1e-5)
    assert result.raw.shape == (4, 2, 5, 7) and np.isfinite(result.raw).all()
    assert all(np.ptp(result.raw[:, k]) > 0 for k in range(2))


def test_two_decomposed_blocks_add_the_earlier_block_to_the_last(clip_model, frames):
    """layers=2: the last block's term is the layers=1 map (the clip gradient at its attention output is the same),
    so the difference is the earlier block's ReLU'd term: non-negative and not zero; the scores do not change.
    Catches: a scoring pass that starts at the wrong block when more than one is decomposed."""
    one = explain_clip(clip_model, frames, PROMPTS, input="native", progress=False)
    two = explain_clip(clip_model, frames, PROMPTS, input="native", progress=False, layers=2)
    np.testing.assert_allclose(two.cosine, one.cosine, atol=1e-6)
    extra = two.raw - one.raw
    assert extra.min() > -1e-6 * np.abs(one.raw).max() and extra.max() > 1e-3 * np.abs(one.raw).max()
