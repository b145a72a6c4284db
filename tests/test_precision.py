"""precision="bf16" on CPU: maps agree with float32 (rank correlation from scipy), scores within 1e-2, maps float32
and finite, the caller's model untouched; fp16 on CPU refused in one line; the CLI flag reaches explain, video and
batch and is named in what they write. Each test names the one-line bug it catches."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import gradeclip
from gradeclip import explain
from gradeclip.cli import main
from gradeclip.input_args import PRECISION_CHOICES
from gradeclip.precision import PRECISIONS
from gradeclip.video import explain_video

from backbone_models import as_open_clip, clip_tokenizer, tiny_siglip
from conftest import numbered_frames, tiny_clip, write_video

PROMPTS = ["a red square", "a blue circle", "a green triangle"]


def frames_56x40(n=2, seed=0):
    """(n, 40, 56, 3) uint8 RGB: smooth gradients plus noise, different per frame (non-square: catches h/w swaps)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :56]
    base = np.stack([xx * 4, yy * 6, (xx + yy) * 2], -1)
    return np.stack([np.clip(base + rng.integers(0, 60, base.shape) + 30 * i, 0, 255) for i in range(n)]
                    ).astype(np.uint8)


def check_agreement(full, reduced, min_rank=0.95, score_tol=1e-2):
    """bf16 ``reduced`` against float32 ``full`` (two Explanations of the same frames and prompts)."""
    assert reduced.precision == "bf16" and full.precision == "fp32"
    assert reduced.raw.dtype == np.float32 and reduced.maps.dtype == np.float32  # bug: bf16 maps handed back
    assert np.isfinite(reduced.raw).all() and np.isfinite(reduced.maps).all()
    assert reduced.raw.shape == full.raw.shape
    n, k = full.raw.shape[:2]
    # Ranks of the maps explain returns (frame size, bilinear): on the raw token grid most cells are exact zeros
    # after the ReLU and a cell a hair above or below 0 turns a tie into a rank, which says nothing about the map.
    for i in range(n):
        for j in range(k):
            assert full.maps[i, j].std() > 0, "a constant float32 map cannot test agreement"
            rho = spearmanr(full.maps[i, j].ravel(), reduced.maps[i, j].ravel())[0]
            # bug: prompts or frames permuted in the reduced path (maps of another prompt correlate far less)
            assert rho >= min_rank, (i, j, rho)
    diff = np.abs(full.cosine - reduced.cosine)
    assert diff.max() <= score_tol, diff  # bug: scores read from a bf16 readout (or the wrong rows)
    # bug: precision ignored (the forward silently ran in float32): bf16 rounding must show somewhere
    assert diff.max() > 0 or np.abs(full.raw - reduced.raw).max() > 0
    # the library's own probabilities from those cosines (softmax for CLIP, sigmoid for SigLIP)
    assert np.abs(full.probs - reduced.probs).max() <= score_tol


def test_bf16_agrees_with_fp32_on_the_shapes_model():
    """The shipped shapes CLIP at input="model" on its demo video: per-map Spearman >= 0.95, cosines within 1e-2.
    Catches: a reduced path that explains another prompt or frame, or scores taken from a bf16 projection."""
    model, _ = gradeclip.load_clip(gradeclip.shapes_model(), device="cpu")
    video = Path(gradeclip.shapes_model()).with_name("shapes_demo.avi")
    frames = gradeclip.read_frames(str(video), [3, 40])
    prompts = ["a red circle", "a blue square", "a green triangle"]
    full = explain(model, frames, prompts, input="model", progress=False)
    reduced = explain(model, frames, prompts, input="model", progress=False, precision="bf16")
    check_agreement(full, reduced)


@pytest.mark.parametrize("library", ["openai", "open_clip", "transformers_siglip"])
def test_bf16_agrees_with_fp32_on_random_models(library):
    """Random tiny models of three libraries (class-token readout over 2 decomposed blocks; SigLIP's pooling head),
    non-square frames, three prompts. Catches: maps summed over layers in bf16 (or not at all), a pooling-head
    path that stays in bf16, cosine computed from bf16 features."""
    tokenizer, options = None, {"layers": 2}
    if library == "transformers_siglip":
        model, tokenizer, options = tiny_siglip(), clip_tokenizer(16), {}
    else:
        model = tiny_clip(vision_layers=3)
        model = as_open_clip(model) if library == "open_clip" else model
    frames = frames_56x40()
    full = explain(model, frames, PROMPTS, tokenizer=tokenizer, input="native", progress=False, **options)
    reduced = explain(model, frames, PROMPTS, tokenizer=tokenizer, input="native", progress=False,
                      precision="bf16", **options)
    check_agreement(full, reduced)


def test_callers_model_is_unchanged_after_bf16():
    """dtype, every weight bit-for-bit, no gradients left behind. Catches: model.to(torch.bfloat16) or .half() on
    the caller's model, or a backward that fills .grad."""
    model = tiny_clip(vision_layers=3)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    explain(model, frames_56x40(1), PROMPTS, input="native", progress=False, precision="bf16", layers=2)
    after = model.state_dict()
    assert set(after) == set(before)
    for name, value in after.items():
        assert value.dtype == before[name].dtype, name
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert not torch.is_autocast_enabled("cpu")  # bug: autocast entered and never left


def test_fp16_on_cpu_refuses_in_one_line_naming_bf16(model):
    """Catches: fp16 on CPU let through (slow, inaccurate), or a refusal that does not point to bf16."""
    with pytest.raises(ValueError) as err:
        explain(model, frames_56x40(1), PROMPTS, progress=False, precision="fp16")
    message = str(err.value)
    assert "\n" not in message and "fp16" in message and "bf16" in message
    with pytest.raises(ValueError, match="'fp64' is not one of fp32, bf16, fp16"):  # bug: unknown names run fp32
        explain(model, frames_56x40(1), PROMPTS, progress=False, precision="fp64")


def test_grad_cam_package_methods_refuse_reduced_precision(model):
    """The grad-cam package reads activations as numpy, which has no bfloat16: one-line refusal before any work
    instead of a TypeError from inside the package. Catches: the check dropped or applied to our own methods."""
    with pytest.raises(ValueError, match="grad-cam package.*use precision 'fp32'"):
        explain(model, frames_56x40(1), PROMPTS, method="gradcam_pp", progress=False, precision="bf16")
    # our own gradient method runs under bf16 (the check names only the package's methods)
    assert explain(model, frames_56x40(1), PROMPTS, method="grad_cam", progress=False,
                   precision="bf16").raw.dtype == np.float32


def test_cli_choices_are_the_package_precisions():
    """Catches: a precision added to the package but not to --precision (or the reverse)."""
    assert PRECISION_CHOICES == PRECISIONS


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("precision") / "walk.avi", numbered_frames(6, 40, 56))


def scores_of(out: Path) -> dict:
    (path,) = out.glob("*_scores.json")
    return json.loads(path.read_text())


def test_cli_explain_runs_and_names_bf16(clip_video, checkpoint, tmp_path):
    """`explain --precision bf16`: the scores file says bf16 and its cosines differ from fp32's by more than 0 and
    at most 1e-2. Catches: the flag parsed but not passed to explain (cosines identical to fp32's)."""
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["explain", clip_video, "-p", "a person", "-p", "a tree", "--model", str(checkpoint),
                     "--out", str(out), "--dpi", "30", "--precision", precision]) == 0
        outs[precision] = scores_of(out)
    assert outs["bf16"]["precision"] == "bf16" and outs["fp32"]["precision"] == "fp32"
    diff = np.abs(np.array(outs["bf16"]["cosine"]) - np.array(outs["fp32"]["cosine"]))
    assert 0 < diff.max() <= 1e-2


def test_cli_fp16_on_cpu_is_one_line_before_the_model_loads(clip_video, tmp_path, capfd):
    """`--precision fp16 --device cpu` with a model path that does not exist: the fp16 refusal comes first (the
    model is never loaded), in one line, exit 1. Catches: the check placed after loading, or missing."""
    for command in ("explain", "video"):
        code = main([command, clip_video, "-p", "x", "--model", str(tmp_path / "missing.pt"), "--device", "cpu",
                     "--out", str(tmp_path / "o"), "--precision", "fp16"])
        err = capfd.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and "bf16" in err and "missing.pt" not in err, err


def test_cli_video_sidecar_names_bf16(clip_video, checkpoint, tmp_path):
    """`video --precision bf16`: the maps sidecar says bf16. Catches: the flag not reaching explain_video."""
    out = tmp_path / "v"
    assert main(["video", clip_video, "-p", "a person", "-p", "a tree", "--model", str(checkpoint), "--out", str(out),
                 "--frames", "2", "--no-gif", "--dpi", "30", "--precision", "bf16"]) == 0
    (sidecar,) = out.glob("*_maps.json")
    assert json.loads(sidecar.read_text())["precision"] == "bf16"


def test_explain_video_bf16_scores_match_fp32(clip_video, model):
    """explain_video under bf16: same frames, cosines within 1e-2 but not identical, raw maps float32.
    Catches: video.py calling the fp32 path whatever precision says."""
    full = explain_video(model, clip_video, PROMPTS, count=3, progress=False)
    reduced = explain_video(model, clip_video, PROMPTS, count=3, progress=False, precision="bf16")
    assert reduced.precision == "bf16" and reduced.raw.dtype == np.float32
    np.testing.assert_array_equal(full.indices, reduced.indices)
    diff = np.abs(full.cosine - reduced.cosine)
    assert 0 < diff.max() <= 1e-2


@pytest.fixture
def local_engine(monkeypatch, model):
    """`batch` with Ray replaced by a loop in this process over the same `process_video`."""
    from gradeclip.batch.runner import process_video

    def run(jobs, settings, out, **_):
        return [process_video(model, job, settings, Path(out)) for job in jobs]

    monkeypatch.setattr("gradeclip.batch.engine.run_on_ray", run)


def test_cli_batch_records_bf16_and_refuses_a_changed_precision(clip_video, checkpoint, tmp_path, local_engine,
                                                                capfd):
    """`batch --precision bf16`: run.json, each video's record and maps sidecar say bf16; rerunning the folder
    with fp32 is refused (one line naming precision). Catches: the setting dropped on the way to the workers,
    or a resumed run mixing precisions."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "walk.avi").write_bytes(Path(clip_video).read_bytes())
    out = tmp_path / "run"
    args = ["batch", str(data), "-p", "a person", "-p", "a tree", "--model", str(checkpoint), "--out", str(out),
            "--frames", "2", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args + ["--precision", "bf16"]) == 0
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
    (record,) = out.glob("videos/*/record.json")
    assert json.loads(record.read_text())["precision"] == "bf16"
    (sidecar,) = out.glob("videos/*/*_maps.json")
    assert json.loads(sidecar.read_text())["precision"] == "bf16"
    capfd.readouterr()
    assert main(args) == 1  # default fp32 against the folder's bf16 run
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision: 'bf16' -> 'fp32'" in err, err


def test_bf16_scores_are_a_float32_readout_of_bf16_tokens(model):
    """The reported cosine equals one computed here from openai-clip's own modules: blocks before the last under
    bf16 autocast, the last block, ln_post and proj in float32 (frames at the trained 32x32, no interpolation).
    Catches: scores read from the bf16 projection, or from a forward that ignored the precision."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    reduced = explain(model, frames, PROMPTS, input="native", progress=False, precision="bf16")
    visual = model.visual
    pixels = gradeclip.to_pixels(model, frames, input="native")
    assert tuple(pixels.shape[-2:]) == (32, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = visual.conv1(pixels).flatten(2).transpose(1, 2)  # (B, 16, W)
            cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
            x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
            x = visual.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
            for block in visual.transformer.resblocks[:-1]:
                x = block(x)
        x = visual.transformer.resblocks[-1](x.float()).permute(1, 0, 2)
        image = visual.ln_post(x[:, 0]) @ visual.proj
        text = model.encode_text(clip_tokenizer()(PROMPTS))
        cosine = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the same readout in bf16: what must not be reported
            low = visual.transformer.resblocks[-1](x.permute(1, 0, 2)).permute(1, 0, 2)
            low = (visual.ln_post(low[:, 0]) @ visual.proj).float()
    np.testing.assert_allclose(reduced.cosine, cosine.numpy(), atol=2e-5)
    bf16_cosine = torch.nn.functional.normalize(low, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    assert np.abs(bf16_cosine.numpy() - cosine.numpy()).max() > 1e-4  # the two readouts are distinguishable


def test_explorer_runs_bf16_and_names_it_in_exports(model, tmp_path):
    """explore(..., precision="bf16"): the shown Explanation ran in bf16 (cosine within 1e-2 of fp32's, not equal)
    and the exported scores JSON says so; fp16 on CPU is refused when the widget is built. Catches: the keyword
    accepted by the widget but not passed to explain_encoded, or exports that leave it out."""
    frames = numbered_frames(3, 40, 56)
    full = gradeclip.explore(model, frames, PROMPTS, out_dir=tmp_path / "a", words=False)
    reduced = gradeclip.explore(model, frames, PROMPTS, out_dir=tmp_path / "b", words=False, precision="bf16")
    assert reduced.current.precision == "bf16" and full.current.precision == "fp32"
    diff = np.abs(reduced.current.cosine - full.current.cosine)
    assert 0 < diff.max() <= 1e-2
    reduced.export()
    assert scores_of(tmp_path / "b")["precision"] == "bf16"
    with pytest.raises(ValueError, match="bf16"):
        gradeclip.explore(model, frames, PROMPTS, words=False, precision="fp16")


def test_batch_folder_from_before_precision_resumes_as_fp32(tmp_path):
    """A run.json written before the precision key existed ran in fp32: resuming it with fp32 is allowed, with
    bf16 refused. Catches: every older folder refused after the upgrade (None != 'fp32'), or the default ignored."""
    from gradeclip.batch.runner import RUN_KEYS, check_run

    settings = dict.fromkeys(RUN_KEYS, None) | {"prompts": PROMPTS, "method": "grad_eclip", "model": "m.pt"}
    old = {k: v for k, v in settings.items() if k != "precision"}
    (tmp_path / "run.json").write_text(json.dumps(old))
    check_run(tmp_path, settings | {"precision": "fp32"}, overwrite=False)
    (tmp_path / "run.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="precision: 'fp32' -> 'bf16'"):
        check_run(tmp_path, settings | {"precision": "bf16"}, overwrite=False)


def test_grad_eclip_skips_the_extra_readout_only_where_its_own_is_the_same():
    """Under bf16, Grad-ECLIP with its defaults on a class-token model reports its own features (its decomposed
    last block already ran in float32) and ``exact_features`` is not called; with single_head, layers=2, on
    SigLIP's pooling head and for another method the features are ``exact_features``' (called once). Every case
    is compared with a float32 readout of the last block computed here from ``Backbone`` pieces. Catches: the extra
    forward kept for the default (the cost this saves), single_head scored by its bf16 second forward, layers=2
    scored by its own float32 blocks (a frame's score then depends on the option), a pooling head's bf16 last
    block reported."""
    import gradeclip.precision as precision
    from gradeclip.backbones.base import backbone_of

    calls = []
    original = precision.exact_features

    def counted(*args):
        calls.append(1)
        return original(*args)

    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 24, 40)
    clip_model = tiny_clip(vision_layers=3)
    cases = [(clip_model, "grad_eclip", {}, 0), (clip_model, "grad_eclip", {"single_head": True}, 1),
             (clip_model, "grad_eclip", {"layers": 2}, 1), (clip_model, "grad_cam", {}, 1),
             (tiny_siglip(), "grad_eclip", {}, 1)]
    for model, method, options, expected_calls in cases:
        bb = backbone_of(model)
        text = torch.randn(3, bb.output_dim)
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                x = bb.tokens_before(pixels, bb.depth - 1)
            readout = bb.readout(x.float(), bb.depth - 1)  # the last block, head and projection in float32
        calls.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(precision, "exact_features", counted)
            raw, features = precision.run_method_at("bf16", method, bb, pixels, text, **options)
        assert len(calls) == expected_calls, (method, options)
        assert raw.dtype == features.dtype == torch.float32
        torch.testing.assert_close(features, readout, atol=2e-6, rtol=1e-5, msg=f"{method} {options}")
