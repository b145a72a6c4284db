"""The explorer driven headless, as a user drives it: slider, prompt text, method, display controls, Export.

What the view shows is compared with ``explain`` on the same frame and prompts; the cache is checked by counting
image and text forwards through hooks on the model.
"""
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gradeclip
from gradeclip.viz import explorer as explorer_module
from gradeclip.viz import explorer_view
from gradeclip.viz.explorer_view import LRUCache, scaled_maps

from notebook_runner import NOTEBOOK_DIR, run_notebook

PROMPTS = ["a red square", "a dark room", "a person walking"]


class Forwards:
    """Counts image forwards (CLIP's patch embedding) and text forwards (its token embedding)."""

    def __init__(self, model):
        self.image = self.text = 0
        self.handles = [model.visual.conv1.register_forward_hook(lambda *_: self._add("image")),
                        model.token_embedding.register_forward_hook(lambda *_: self._add("text"))]

    def _add(self, what):
        setattr(self, what, getattr(self, what) + 1)

    @property
    def total(self):
        return self.image + self.text

    def close(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def counted(model):
    forwards = Forwards(model)
    yield forwards
    forwards.close()


def shown_scores(explorer):
    """(cosine, probs) as the widget's score table displays them."""
    cos = [float(v) for v in re.findall(r'class="gc-cos">([-0-9.]+)<', explorer.scores.value)]
    prob = [float(v) for v in re.findall(r'class="gc-prob">([-0-9.]+)<', explorer.scores.value)]
    return np.array(cos), np.array(prob)


def shown_image(explorer):
    return np.asarray(Image.open(io.BytesIO(explorer.image.value)).convert("RGB"))


def make(model, video, tmp_path, **kwargs):
    return gradeclip.explore(model, video, PROMPTS, out_dir=tmp_path / "out", **kwargs)


def test_displayed_scores_are_explain_scores_for_the_slider_frame(model, avi, tmp_path):
    """Catches an off-by-one between the slider and the frame explained, stale prompts after an edit, scores
    shown for the wrong prompt order, or cached text features that differ from the model's."""
    explorer = make(model, avi, tmp_path, words=False)
    explorer.slider.value = 7
    explorer.prompts_box.value = "a bright frame\n\na red square  \n"
    prompts = ["a bright frame", "a red square"]
    expected = gradeclip.explain(model, gradeclip.read_frames(avi, [7]), prompts, progress=False)
    neighbour = gradeclip.explain(model, gradeclip.read_frames(avi, [8]), prompts, progress=False)
    assert not np.allclose(expected.cosine, neighbour.cosine, atol=1e-4)  # the check can tell frames apart
    cos, prob = shown_scores(explorer)
    np.testing.assert_allclose(cos, expected.cosine[0], atol=6e-5)
    np.testing.assert_allclose(prob, expected.probs[0], atol=6e-5)
    assert explorer.current.prompts == prompts
    np.testing.assert_allclose(explorer.current.maps, expected.maps, atol=1e-6)
    assert [label for label, _ in explorer.selected.options] == prompts
    explorer.slider.value = 8  # the prompts' text features now come from the explorer's cache
    np.testing.assert_allclose(shown_scores(explorer)[0], neighbour.cosine[0], atol=6e-5)
    np.testing.assert_allclose(explorer.current.probs, neighbour.probs, atol=1e-6)
    assert explorer.time_label.value == f"t = {8 / 25:.3f} s"


def test_image_shows_frame_and_one_overlay_per_prompt(model, avi, tmp_path):
    """Catches a view that does not follow the slider or the prompt count (a missing or extra panel)."""
    explorer = make(model, avi, tmp_path, words=False, panel_width=100)
    first = shown_image(explorer)
    explorer.slider.value = 20
    later = shown_image(explorer)
    assert first.shape == later.shape and not np.array_equal(first, later)
    assert first.shape[1] == 4 * 100 + 3 * 6  # frame + 3 overlays, 6 px apart
    explorer.prompts_box.value = "a red square"
    assert shown_image(explorer).shape[1] == 2 * 100 + 6
    # the frame panel is the frame itself, resized: frame 20's brightness is 8 * 20 (conftest.numbered_frames)
    frame = gradeclip.read_frames(avi, [20])[0]
    top = 22  # title band
    panel = shown_image(explorer)[top + 5:top + 8, 2:8].astype(int)
    assert np.abs(panel - frame[0, 0].astype(int)).max() <= 3


def test_redraws_do_not_recompute_and_seen_frames_come_from_the_cache(model, avi, tmp_path, counted):
    """Catches a redraw that calls the model (opacity, colours, colour scale, selected prompt), a cache key that
    misses on a frame seen before, or the prompts encoded again for every new frame."""
    explorer = make(model, avi, tmp_path, words=False)
    assert counted.image >= 1 and counted.text >= 1
    before, image_before = counted.total, explorer.image.value
    explorer.opacity.value = 0.9
    explorer.cmap.value = "viridis"
    explorer.scale.value = "per frame"
    explorer.scale.value = "shared"
    explorer.selected.value = 2
    assert counted.total == before and explorer.forwards == 1
    assert explorer.image.value != image_before  # the redraws did change the view
    text = counted.text
    explorer.slider.value = 3
    assert counted.total > before and explorer.forwards == 2
    assert counted.text == text  # same prompts on a new frame: text features are not computed again
    explorer.prompts_box.value = "a red square\na tree"
    assert counted.text > text and explorer.forwards == 3
    explorer.prompts_box.value = "\n".join(PROMPTS)
    assert explorer.forwards == 3  # this frame and prompt set is still cached
    before = counted.total
    explorer.slider.value = 0
    explorer.slider.value = 3
    assert counted.total == before and explorer.forwards == 3
    explorer.method.value = "self_attention"
    assert explorer.forwards == 4
    explorer.method.value = "grad_eclip"
    assert explorer.forwards == 4  # the grad_eclip entry of frame 3 is still cached


def test_word_importance_is_computed_once_per_frame_and_prompt(model, avi, tmp_path, counted):
    """Catches word importance recomputed on every redraw, or shown for the wrong prompt."""
    explorer = make(model, avi, tmp_path)
    assert "a red square" in explorer.words.value
    explorer.selected.value = 1
    assert "a dark room" in explorer.words.value and "gc-word" in explorer.words.value
    expected = gradeclip.word_importance(model, gradeclip.read_frames(avi, [0])[0], "a dark room")
    shown = [float(v) for v in re.findall(r'class="gc-word" title="([0-9.]+)"', explorer.words.value)]
    np.testing.assert_allclose(shown, [w for _, w in expected], atol=6e-4)
    before = counted.total
    explorer.selected.value = 0
    explorer.selected.value = 1
    explorer.opacity.value = 0.2
    assert counted.total == before


def test_frames_are_decoded_on_demand(model, avi, tmp_path, monkeypatch):
    """Catches decoding the whole video up front, or re-decoding a cached frame."""
    calls = []
    real = explorer_view.read_frames

    def spy(path, indices="middle", **kwargs):
        calls.append(list(indices))
        return real(path, indices, **kwargs)

    monkeypatch.setattr(explorer_view, "read_frames", spy)
    explorer = make(model, avi, tmp_path, words=False)
    explorer.slider.value = 12
    explorer.slider.value = 0
    assert calls == [[0], [12]]


def test_cache_is_bounded(model, avi, tmp_path):
    """Catches an unbounded cache (memory grows with every frame seen) or eviction of the newest entry."""
    explorer = make(model, avi, tmp_path, words=False, cache_size=2)
    for index in (1, 2, 3):
        explorer.slider.value = index
    assert len(explorer.cache) == 2 and explorer.forwards == 4
    explorer.slider.value = 0  # evicted: recomputed
    assert explorer.forwards == 5
    cache = LRUCache(max_entries=10, max_bytes=100, size=len)
    cache.put("a", b"x" * 60)
    cache.put("b", b"x" * 60)
    assert list(cache.data) == ["b"] and cache.bytes == 60
    cache.put("c", b"x" * 500)  # alone over the bound, but the newest is kept
    assert list(cache.data) == ["c"]


def test_colour_scales_match_a_naive_reference(model, avi, tmp_path):
    """Catches a shared scale that forgets earlier frames, or a per-frame scale computed per prompt."""
    explorer = make(model, avi, tmp_path, words=False)
    raws = []
    for index in (0, 10, 20):
        explorer.slider.value = index
        raws.append(explorer.current.raw[0])
    raws = np.stack(raws)  # (frames seen, K, h, w)
    explorer.scale.value = "per frame"
    last = raws[-1]
    np.testing.assert_allclose(explorer.displayed_maps(), (last - last.min()) / (last.max() - last.min()), atol=1e-6)
    explorer.scale.value = "shared"
    low, high = raws.min(axis=(0, 2, 3)), raws.max(axis=(0, 2, 3))
    want = (last - low[:, None, None]) / (high - low)[:, None, None]
    np.testing.assert_allclose(explorer.displayed_maps(), want, atol=1e-6)
    explorer.scale.value = "per map"
    np.testing.assert_array_equal(explorer.displayed_maps(), explorer.current.maps[0])
    with pytest.raises(ValueError, match="unknown colour scale"):
        scaled_maps(explorer.current, "global")


def test_export_writes_figure_maps_and_scores(model, avi, tmp_path):
    """Catches an export of another frame than the one shown, or files missing from the listing."""
    explorer = make(model, avi, tmp_path, words=False)
    explorer.slider.value = 5
    explorer.export_button.click()
    out = tmp_path / "out"
    stem = "numbered_frame000005_grad_eclip"
    for suffix in (".png", ".pdf", "_maps.npy", "_scores.json"):
        path = out / f"{stem}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in explorer.exported.value
    record = json.loads((out / f"{stem}_scores.json").read_text())
    assert record["frame"] == 5 and record["prompts"] == PROMPTS and record["video"] == avi
    np.testing.assert_allclose(record["cosine"], explorer.current.cosine, atol=1e-6)
    np.testing.assert_array_equal(np.load(out / f"{stem}_maps.npy"), explorer.current.raw)
    cos, _ = shown_scores(explorer)
    np.testing.assert_allclose(record["cosine"][0], cos, atol=6e-5)


def test_errors_are_one_line_and_the_explorer_keeps_working(model, avi, tmp_path, monkeypatch):
    """Catches an exception escaping the callback (the widget would stop updating) or a multi-line traceback."""
    explorer = make(model, avi, tmp_path, words=False)
    explorer.prompts_box.value = "a red square\n" + "word " * 100
    assert "tokens long" in explorer.status.value and "\n" not in explorer.status.value
    assert explorer.current is None and explorer.export() == []
    explorer.prompts_box.value = "a red square"
    assert "error" not in explorer.status.value and explorer.current.prompts == ["a red square"]
    explorer.option_widgets["layers"].value = 0  # the control refuses a bad value
    assert explorer.option_widgets["layers"].value == 1
    real_explain = explorer_module.explain_encoded

    def failing(model, frames, prompts, text_features, *, method, **kwargs):
        if method == "rise":
            raise RuntimeError("out of memory\nsecond line of the message")
        return real_explain(model, frames, prompts, text_features, method=method, **kwargs)

    monkeypatch.setattr(explorer_module, "explain_encoded", failing)
    explorer.method.value = "rise"
    assert "frame 0: RuntimeError: out of memory" in explorer.status.value
    assert "second line" not in explorer.status.value and "#b00020" in explorer.status.value
    explorer.method.value = "grad_cam"
    assert explorer.current.method == "grad_cam" and "#b00020" not in explorer.status.value
    real = explorer.source.read
    monkeypatch.setattr(explorer.source, "read", lambda i: (_ for _ in ()).throw(OSError("corrupt frame"))
                        if i == 9 else real(i))
    explorer.slider.value = 9
    assert "frame 9: OSError: corrupt frame" in explorer.status.value
    explorer.slider.value = 10
    assert explorer.current is not None and "#b00020" not in explorer.status.value
    explorer.prompts_box.value = "   \n"
    assert "no prompts" in explorer.status.value
    assert "no prompts" in gradeclip.explore(model, avi, [], out_dir=tmp_path).status.value


def test_method_menu_lists_every_method_and_options_follow_the_method(model, avi, tmp_path):
    """Catches a method missing from the menu, slow methods unmarked, or options of the previous method kept."""
    explorer = make(model, avi, tmp_path, words=False)
    labels = dict((value, label) for label, value in explorer.method.options)
    assert sorted(labels) == gradeclip.method_names()
    assert "slow" in labels["rise"] and "slow" in labels["scorecam"]
    assert labels["grad_eclip"] == "Grad-ECLIP" and labels["gradcam_pp"] == "Grad-CAM++"  # the paper's names
    assert set(explorer.option_widgets) == {"layers", "single_head", "spatial_weight"}
    explorer.method.value = "game"
    assert set(explorer.option_widgets) == {"start_layer"}
    explorer.method.value = "grad_cam"
    assert explorer.option_widgets == {} and explorer.current.method == "grad_cam"


def test_a_given_tokenizer_encodes_the_prompts(model, avi, tmp_path):
    """Catches a given tokenizer dropped (the model's own used instead, as a transformers model has none) or the
    prompts encoded again for every frame."""
    import clip

    calls = []

    def tokenizer(texts):
        calls.append(list(texts))
        return clip.tokenize(texts, context_length=model.context_length)

    explorer = make(model, avi, tmp_path, words=False, tokenizer=tokenizer)
    assert calls == [PROMPTS]
    explorer.slider.value = 3
    assert calls == [PROMPTS]  # the same prompt set: its features come from the cache
    expected = gradeclip.explain(model, gradeclip.read_frames(avi, [3]), PROMPTS, tokenizer=tokenizer, progress=False)
    np.testing.assert_allclose(explorer.current.cosine, expected.cosine, atol=1e-6)


def test_in_memory_frames_play_link_and_plain_text_fallback(model, tmp_path):
    """Catches play, step buttons or the index box not moving the slider, or a front end without widgets showing
    only 'VBox(...)'."""
    from conftest import numbered_frames

    explorer = gradeclip.explore(model, numbered_frames(6), ["a red square"], out_dir=tmp_path, words=False)
    explorer.play.value = 4
    assert explorer.slider.value == 4 and explorer.index_box.value == 4 and explorer.forwards == 2
    explorer.next.click()
    explorer.next.click()  # stays on the last frame
    assert explorer.slider.value == 5 and explorer.forwards == 3
    explorer.previous.click()
    explorer.index_box.value = 1
    assert explorer.slider.value == 1
    np.testing.assert_array_equal(explorer.current.frames[0], numbered_frames(6)[1])
    assert explorer.time_label.value == ""
    bundle = explorer._repr_mimebundle_()
    assert "cannot show Jupyter widgets" in bundle["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert gradeclip.explore(model, numbered_frames(6), ["x"], frame=-1, words=False).slider.value == 5
    with pytest.raises(IndexError, match="valid indices are -6..5"):
        gradeclip.explore(model, numbered_frames(6), ["x"], frame=6)
    with pytest.raises(ValueError, match="uint8 RGB"):
        gradeclip.explore(model, np.zeros((2, 8, 8), np.float32), ["x"])
    with pytest.raises(ValueError, match="unknown method"):
        gradeclip.explore(model, numbered_frames(2), ["x"], method="nope")


def test_importing_gradeclip_does_not_import_ipywidgets():
    """Catches an eager ``import ipywidgets`` in the package (slow, and optional outside notebooks)."""
    code = "import sys, gradeclip; assert 'ipywidgets' not in sys.modules; gradeclip.explore; " \
           "assert 'ipywidgets' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_explorer_notebook_runs_headless_with_the_shapes_model(tmp_path):
    """Catches a broken notebook 00: a failing cell, or a last cell that does not show the widget."""
    book = run_notebook(NOTEBOOK_DIR / "00_explorer.ipynb",
                        {"VIDEO": gradeclip.shapes_video(), "MODEL": gradeclip.shapes_model(),
                         "PROMPTS": ["a red circle", "a blue square"], "SCALE": "model",
                         "OUT_DIR": str(tmp_path / "out")}, tmp_path, timeout=300)
    assert "colab-badge" in book.cells[0].source
    last = [c for c in book.cells if c.cell_type == "code"][-1]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in last.outputs)


def test_input_size_menu_changes_what_explain_sees(model, avi, tmp_path):
    """Catches the input-size menu not reaching ``explain`` (scores of the native size shown) or missing from the
    cache key (the native entry returned for the half-size request)."""
    explorer = make(model, avi, tmp_path, words=False, scale="model")
    # the tiny model's input is 32 px; the frames are 48x64: model mode is 24x32 px
    assert explorer.size.value == ("model", 1.0) and explorer.current.raw.shape[-2:] == (3, 4)
    explorer.size.value = ("native", 1.0)
    frame = gradeclip.read_frames(avi, [0])
    np.testing.assert_allclose(explorer.current.cosine, gradeclip.explain(model, frame, PROMPTS).cosine, atol=1e-6)
    explorer.size.value = ("native", 2.0)
    expected = gradeclip.explain(model, frame, PROMPTS, scale=2.0)
    np.testing.assert_allclose(shown_scores(explorer)[0], expected.cosine[0], atol=6e-5)
    assert explorer.current.raw.shape[-2:] == (12, 16) and explorer.forwards == 3
    with pytest.raises(ValueError, match="scale must be"):
        make(model, avi, tmp_path, scale=0)


def test_time_stamps_are_the_container_times_on_a_variable_rate_video(model, tmp_path):
    """A variable-rate MKV (gaps of 0.54 s and 0.41 s): the time shown and exported for a frame is FFmpeg's
    presentation time. Catches ``index / fps`` (the average rate), which is 0.36 s off at frame 30 here."""
    from ffmpeg_truth import make, truth

    vfr = "setpts='PTS+gte(N\\,20)*0.5/TB+gte(N\\,30)*0.37/TB'"
    path = make(tmp_path / "vfr.mkv", "testsrc2=size=64x48:rate=25:duration=1.6", "-vf", vfr, "-fps_mode", "vfr",
                "-c:v", "libx264")
    _, times = truth(path)
    explorer = gradeclip.explore(model, path, PROMPTS, out_dir=tmp_path / "out", words=False)
    explorer.slider.value = 30
    assert abs(times[30] - 30 / explorer.source.fps) > 0.1  # the average rate would be visibly wrong here
    assert explorer.time_label.value == f"t = {times[30]:.3f} s"
    scores = next(Path(p) for p in explorer.export() if str(p).endswith("_scores.json"))
    record = json.loads(scores.read_text())
    assert abs(record["time_s"] - times[30]) < 1e-3


def test_input_menu_names_each_mode_and_its_size(model, avi, tmp_path):
    """The menu offers native, model and library with the size in pixels each feeds the model (48 x 64 frames,
    a 32-px model), and choosing library gives the library's own score with the map over the crop. Bugs caught:
    a menu that cannot reach library mode, labels with width and height swapped, the library map stretched over
    the whole frame in the widget."""
    explorer = make(model, avi, tmp_path, words=False, input="native")
    labels = dict((value, label) for label, value in explorer.size.options)
    assert labels[("native", 1.0)] == "native · 48×64 px" and labels[("model", 1.0)] == "model · 24×32 px"
    assert labels[("library", 1.0)] == "library · 32×32 px crop" and labels[("native", 2.0)].endswith("96×128 px")
    explorer.size.value = ("library", 1.0)
    frame = gradeclip.read_frames(avi, [0])
    expected = gradeclip.explain(model, frame, PROMPTS, input="library")
    np.testing.assert_allclose(explorer.current.cosine, expected.cosine, atol=1e-6)
    explorer.scale.value = "per frame"
    shown = explorer.displayed_maps()
    assert shown.shape[-2:] == (48, 64) and not shown[..., :8].any() and not shown[..., 56:].any()
