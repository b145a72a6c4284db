"""precision="bf16" for clip-level explanations (mean pooling and X-CLIP) on CPU: maps agree with float32 (scipy's
Spearman per frame and prompt, cosine of the raw maps), clip scores within 1e-2 and from a float32 readout, the
caller's model untouched; fp16 on CPU refused in one line naming bf16; `clip --precision` reaches the sidecar and
is refused before the model loads. Each test names the one-line bug it catches."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import gradeclip
from gradeclip.cli import main
from gradeclip.clip_level import explain_clip

from backbone_models import clip_tokenizer
from conftest import tiny_clip
from test_precision import frames_56x40  # (n, 40, 56, 3) uint8 RGB, brighter frame by frame
from test_xclip import clip_frames
from test_xclip import xclip, xclip_folder  # noqa: F401 (fixtures)

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def check_agreement(full, reduced):
    """bf16 ``reduced`` against float32 ``full`` (two ClipExplanations of the same frames and prompts)."""
    assert full.precision == "fp32" and reduced.precision == "bf16"
    assert reduced.raw.dtype == np.float32 and reduced.maps.dtype == np.float32  # bug: bf16 maps handed back
    assert np.isfinite(reduced.raw).all() and reduced.raw.shape == full.raw.shape
    frames, prompts = full.raw.shape[:2]
    for k in range(prompts):
        a, b = full.raw[:, k].ravel(), reduced.raw[:, k].ravel()
        # bug: prompts permuted, or the gain |d_k|/T of another prompt (a per-prompt scale over the clip)
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.99, k
        for t in range(frames):
            if np.ptp(full.maps[t, k]) == 0:
                continue  # a frame dark on the clip's scale has no ranks to compare
            rho = spearmanr(full.maps[t, k].ravel(), reduced.maps[t, k].ravel())[0]
            assert rho >= 0.95, (t, k, rho)  # bug: frames permuted in the reduced path
    assert sum(np.ptp(full.maps[t, k]) > 0 for t in range(frames) for k in range(prompts)) >= frames * prompts - 1
    diff = np.abs(full.cosine - reduced.cosine)
    assert diff.max() <= 1e-2 and np.abs(full.probs - reduced.probs).max() <= 1e-2
    # bug: precision accepted and ignored (the forward ran in float32): bf16 rounding must show
    assert diff.max() > 0 and np.abs(full.raw - reduced.raw).max() > 0
    np.testing.assert_allclose(reduced.frame_importance.sum(0), reduced.cosine, atol=1e-5)


@pytest.mark.parametrize("method", ["grad_eclip", "grad_cam"])
def test_bf16_agrees_with_fp32_on_the_shapes_model(method):
    """Mean pooling, the shipped shapes CLIP at input="model", six frames of its demo video, three prompts.
    Catches: the scoring pass and the explaining pass run at different precisions for different frames, or the
    clip direction computed from bf16 features."""
    model, _ = gradeclip.load_clip(gradeclip.shapes_model(), device="cpu")
    video = Path(gradeclip.shapes_model()).with_name("shapes_demo.avi")
    frames = gradeclip.read_frames(str(video), "uniform:6")
    full = explain_clip(model, frames, PROMPTS, method=method, input="model", progress=False)
    reduced = explain_clip(model, frames, PROMPTS, method=method, input="model", progress=False, precision="bf16")
    check_agreement(full, reduced)


@pytest.mark.parametrize("method, options", [("grad_eclip", {"layers": 2}), ("game", {}), ("rollout", {})])
def test_bf16_agrees_with_fp32_on_a_random_model(method, options):
    """Mean pooling, a random openai-clip model (3 blocks, 2 decomposed), 40x56 frames, batch_size 3 (the clip
    split in two batches). Catches: the second decomposed block left in bf16, a batch explained at another
    precision than it was scored."""
    model = tiny_clip(vision_layers=3, seed=4)
    frames = frames_56x40(4)
    full = explain_clip(model, frames, PROMPTS, method=method, input="native", batch_size=3, progress=False,
                        **options)
    reduced = explain_clip(model, frames, PROMPTS, method=method, input="native", batch_size=3, progress=False,
                           precision="bf16", **options)
    check_agreement(full, reduced)


@pytest.mark.parametrize("method", ["grad_eclip", "grad_cam", "game", "rollout"])
def test_bf16_agrees_with_fp32_on_xclip(xclip, method):
    """X-CLIP's tiny random model, six frames (two overlapping windows), library input. Catches: the video head
    (MIT, prompts generator) or the explained layer left under autocast, or one window at another precision."""
    frames = clip_frames(6)
    prompts = ["a red circle", "a dog running on the grass", "a blue car"]
    full = explain_clip(xclip, frames, prompts, method=method, progress=False)
    reduced = explain_clip(xclip, frames, prompts, method=method, progress=False, precision="bf16")
    check_agreement(full, reduced)


def test_bf16_clip_score_is_a_float32_readout_of_bf16_tokens():
    """Mean pooling: the reported clip cosine equals one computed here from openai-clip's own modules, each frame's
    blocks before the last under bf16 autocast, the last block, ln_post and proj in float32, then the mean of
    the unit embeddings (frames at the trained 32x32, no interpolation). Catches: the scoring pass reading the
    features of a bf16 projection, or ignoring the precision."""
    model = tiny_clip(vision_layers=3, seed=5)
    frames = np.random.default_rng(2).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    reduced = explain_clip(model, frames, PROMPTS, input="native", progress=False, precision="bf16")
    visual = model.visual
    pixels = gradeclip.to_pixels(model, frames, input="native")
    assert tuple(pixels.shape[-2:]) == (32, 32)
    embeddings = []
    with torch.no_grad():
        for t in range(len(frames)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                x = visual.conv1(pixels[t:t + 1]).flatten(2).transpose(1, 2)  # (1, 16, W)
                cls = visual.class_embedding.to(x.dtype) + torch.zeros(1, 1, x.shape[-1], dtype=x.dtype)
                x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
                x = visual.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
                for block in visual.transformer.resblocks[:-1]:
                    x = block(x)
            x = visual.transformer.resblocks[-1](x.float()).permute(1, 0, 2)
            embeddings.append(F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)[0])
        pooled = torch.stack(embeddings).mean(0)
        text = model.encode_text(clip_tokenizer()(PROMPTS))
    expected = F.normalize(text, dim=-1) @ F.normalize(pooled, dim=0)
    np.testing.assert_allclose(reduced.cosine, expected.numpy(), atol=2e-5)
    full = explain_clip(model, frames, PROMPTS, input="native", progress=False)
    assert np.abs(full.cosine - expected.numpy()).max() > 1e-4  # the fp32 path is distinguishable from it


@pytest.mark.parametrize("method", ["grad_eclip", "grad_cam", "game", "self_attention", "rollout"])
def test_xclip_bf16_score_is_the_librarys_float32_head_on_bf16_tokens(xclip, method):
    """X-CLIP: the reported cosine equals the library's own forward in float32 whose last vision layer is fed the
    tokens of the library's earlier layers run here under bf16 autocast (a pre-hook swaps them in), so the last
    layer, the MIT and the prompts generator run in float32. Catches: the explained layer or the video head left
    under autocast (scores within 1e-2 all the same), in any method's path, or the precision ignored."""
    from test_xclip import PROMPTS as OWN_PROMPTS, own_forward  # own_forward tokenizes these

    frames = clip_frames(4)
    reduced = explain_clip(xclip, frames, OWN_PROMPTS, method=method, progress=False, precision="bf16")
    vision = xclip.model.vision_model
    pixels = xclip.image_processor([list(frames)], return_tensors="pt")["pixel_values"][0]  # (4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = vision.pre_layernorm(vision.embeddings(pixels))
        for layer in vision.encoder.layers[:-1]:
            x = layer(x, None)
    hook = vision.encoder.layers[-1].register_forward_pre_hook(lambda module, args: (x.float(), *args[1:]))
    try:
        with torch.no_grad():
            out = own_forward(xclip, frames)
    finally:
        hook.remove()
    expected = (out.logits_per_video[0] / xclip.model.logit_scale.exp()).detach()
    np.testing.assert_allclose(reduced.cosine, expected.numpy(), atol=1e-5)
    full = explain_clip(xclip, frames, OWN_PROMPTS, progress=False)
    assert np.abs(full.cosine - expected.numpy()).max() > 1e-4  # the fp32 path is distinguishable from it


def assert_unchanged(module, before):
    after = module.state_dict()
    assert set(after) == set(before)
    for name, value in after.items():
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), name
    assert all(p.grad is None for p in module.parameters())
    assert not torch.is_autocast_enabled("cpu")  # bug: autocast entered and never left


def test_callers_models_are_unchanged_after_bf16(xclip):
    """Mean pooling (Grad-ECLIP and Grad-CAM) and X-CLIP (Grad-ECLIP over 2 layers and Grad-CAM): dtype and every
    weight bit for bit, no .grad left. Catches: model.to(torch.bfloat16) on the caller's model, a backward that
    fills .grad, autocast left on."""
    model = tiny_clip(vision_layers=3, seed=6)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    for method in ("grad_eclip", "grad_cam"):
        explain_clip(model, frames_56x40(2), PROMPTS, method=method, input="native", progress=False,
                     precision="bf16")
    assert_unchanged(model, before)
    before = {name: p.detach().clone() for name, p in xclip.model.state_dict().items()}
    explain_clip(xclip, clip_frames(4), PROMPTS, progress=False, precision="bf16", layers=2)
    explain_clip(xclip, clip_frames(4), PROMPTS, method="grad_cam", progress=False, precision="bf16")
    assert_unchanged(xclip.model, before)


def test_fp16_on_cpu_is_refused_in_one_line_naming_bf16(xclip):
    """Mean pooling, explain_clip_encoded and X-CLIP. Catches: fp16 let through on CPU (slow, inaccurate) in one of
    the three entry points, or an unknown precision silently run in fp32."""
    from gradeclip.clip_level import explain_clip_encoded

    model = tiny_clip(seed=7)
    calls = [lambda p: explain_clip(model, frames_56x40(2), PROMPTS, progress=False, precision=p),
             lambda p: explain_clip_encoded(model, frames_56x40(2), PROMPTS[:1], torch.randn(1, 32),
                                            progress=False, precision=p),
             lambda p: explain_clip(xclip, clip_frames(4), PROMPTS, progress=False, precision=p)]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call("fp16")
        assert "\n" not in str(err.value) and "'fp16' needs a GPU" in str(err.value) and "bf16" in str(err.value)
        with pytest.raises(ValueError, match="'fp64' is not one of fp32, bf16, fp16"):
            call("fp64")


def test_clip_command_records_bf16_and_refuses_fp16_before_loading(avi, checkpoint, tmp_path, capfd):
    """`clip --precision bf16`: the JSON sidecar says bf16 and its clip cosines differ from an fp32 run's by more
    than 0 and at most 1e-2; `--precision fp16 --device cpu` with a model path that does not exist is refused in
    one line naming bf16, exit 1, before the model is looked at. Catches: the flag parsed but not passed to
    explain_clip_video, the sidecar without it, the check placed after loading."""
    records = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["clip", avi, "-p", "a red car", "-p", "a tree", "--frames", "uniform:3", "--model",
                     str(checkpoint), "--out", str(out), "--device", "cpu", "--dpi", "30", "--no-gif",
                     "--precision", precision]) == 0
        (sidecar,) = out.glob("*.json")
        records[precision] = json.loads(sidecar.read_text())
    assert records["bf16"]["precision"] == "bf16" and records["fp32"]["precision"] == "fp32"
    diff = np.abs(np.array(records["bf16"]["cosine"]) - np.array(records["fp32"]["cosine"]))
    assert 0 < diff.max() <= 1e-2
    capfd.readouterr()
    code = main(["clip", avi, "-p", "x", "--model", str(tmp_path / "missing.pt"), "--device", "cpu",
                 "--out", str(tmp_path / "o"), "--precision", "fp16"])
    err = capfd.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "bf16" in err and "missing.pt" not in err, err
