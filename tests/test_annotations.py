"""Explanations against the user's annotations (masks, mask videos, boxes), the evaluate command and temporal
stability, on a generated moving-shapes video with exact per-frame masks."""
import json

import cv2
import numpy as np
import pytest

import gradeclip
from gradeclip.cli import main
from gradeclip.eval.annotations import frame_number, open_masks, score_frames, summarize
from gradeclip.eval.shapes import ShapeObject, render_scene
from gradeclip.eval.stability import temporal_stability
from gradeclip.video import VideoExplanation

from conftest import write_video

SIZE, FRAMES = 64, 8  # frames of 64 px; the shapes model sees them at 48 px (scale 0.75)


def _scene(t):
    """A red circle moving left and up across the frame; a static blue square."""
    circle = ShapeObject("circle", "red", (52.0 - 6 * t, 53.0 - 6 * t), 7.5)  # moves more than its radius
    return render_scene([ShapeObject("square", "blue", (50.0, 14.0), 9.0), circle], size=SIZE, seed=5)


@pytest.fixture(scope="module")
def shapes_clip():
    return gradeclip.load_clip(gradeclip.shapes_model(), device="cpu")[0]


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """The video, its red-circle masks in CASIA-B naming numbered from 1, and the exact masks (F, H, W)."""
    root = tmp_path_factory.mktemp("moving")
    scenes = [_scene(t) for t in range(FRAMES)]
    video = write_video(root / "moving.avi", np.stack([s.image for s in scenes]))
    masks = root / "silhouettes"
    masks.mkdir()
    for t, s in enumerate(scenes):
        cv2.imwrite(str(masks / f"001-bg-01-090-{t + 1:03d}.png"), s.masks[1].astype(np.uint8) * 255)
    return video, masks, np.stack([s.masks[1] for s in scenes])


def _explanation(raw, *, indices=None, frame_size=(SIZE, SIZE)):
    f, k = raw.shape[:2]
    indices = np.arange(f) if indices is None else np.asarray(indices)
    return VideoExplanation(video="v.avi", prompts=[f"p{j}" for j in range(k)], method="m", model="x",
                            raw=raw.astype(np.float32), cosine=np.zeros((f, k)), probs=np.zeros((f, k)),
                            indices=indices, times=indices / 25.0, fps=25.0, frame_size=frame_size,
                            input_size=frame_size)


def _peak_maps(masks, grid=32):
    """(F, 2, grid, grid) maps: prompt 0 peaks on the token cell at the mask's centroid, prompt 1 on a cell a
    quarter in from the top-right corner, far from the circle's diagonal path and from the border (so that a
    border-excluding pointing rule sees the same peak)."""
    f, h, w = masks.shape
    raw = np.zeros((f, 2, grid, grid))
    for n, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        cy, cx = int(ys.mean() * grid / h), int(xs.mean() * grid / w)
        raw[n, 0, cy, cx] = 1.0
        raw[n, 1, grid // 4, 3 * grid // 4] = 1.0
    return raw


def test_frame_number_casia_and_plain():
    """Catches taking the first integer (the subject, 001) instead of the last (the frame) of a CASIA-B name."""
    assert frame_number("001-bg-01-090-017.png") == 17
    assert frame_number("mask_0003.bmp") == 3
    with pytest.raises(ValueError, match="no frame number"):
        frame_number("mask.png")


def test_known_pointing_on_moving_object(moving):
    """A map peaking on the object's cell hits on every frame, one peaking on the opposite cell never does; the
    energy is 1 resp. 0 away from borders. Catches a 1-based folder read as 0-based (each frame compared with the
    next frame's mask: the object moves more than its radius, so the peak falls outside), and swapped x/y."""
    video, folder, masks = moving
    source = open_masks(folder)
    assert source.indices == list(range(FRAMES))  # 1..8 on disk -> frames 0..7
    scored = score_frames(_explanation(_peak_maps(masks)), source)
    hits = {p: [r["pointing"] for r in scored["rows"] if r["prompt"] == p] for p in ("p0", "p1")}
    assert hits == {"p0": [1] * FRAMES, "p1": [0] * FRAMES}
    shifted = score_frames(_explanation(_peak_maps(masks)[1:], indices=np.arange(FRAMES - 1)), source)
    assert sum(r["pointing"] for r in shifted["rows"] if r["prompt"] == "p0") < FRAMES - 1
    table = {r["prompt"]: r for r in summarize(scored["rows"])}
    assert table["p0"]["rank_corr"] > 0.2 > table["p1"]["rank_corr"]
    assert table["p0"]["energy"] > table["p1"]["energy"]
    assert table["p0"]["chance"] == pytest.approx(masks.mean(), abs=1e-6)


def test_zero_based_folder_missing_and_wrong_size(tmp_path, moving):
    """Masks numbered from 0 stay as they are; frames without a mask are skipped and listed; a half-size mask is
    resized nearest-neighbour (and reported) and gives the same hits. Catches always subtracting 1 and a resize
    that blurs or transposes the mask."""
    _, _, masks = moving
    for t in (0, 2, 3, 5):
        small = cv2.resize(masks[t].astype(np.uint8) * 255, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(tmp_path / f"frame_{t:04d}.png"), small)
    source = open_masks(tmp_path)
    assert source.indices == [0, 2, 3, 5]
    with pytest.warns(UserWarning, match="resized nearest-neighbour"):
        scored = score_frames(_explanation(_peak_maps(masks)), source)
    assert scored["missing"] == [1, 4, 6, 7]
    assert scored["resized"] == ((SIZE // 2, SIZE // 2), (SIZE, SIZE))
    assert [r["frame"] for r in scored["rows"] if r["prompt"] == "p0"] == [0, 2, 3, 5]
    assert all(r["pointing"] == (r["prompt"] == "p0") for r in scored["rows"])
    assert set(np.unique(source.mask(0, (SIZE, SIZE)))) == {False, True}


def test_boxes_and_mask_video(tmp_path, moving):
    """COCO boxes (x, y, w, h; image_id = frame, 0-based here) and a mask video give the masks they describe.
    Catches reading bbox as (x0, y0, x1, y1) or as (y, x)."""
    _, _, masks = moving
    items = []
    for t, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        items.append({"image_id": t, "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                              int(ys.max() - ys.min() + 1)]})
    items.append({"image_id": 9, "bbox": [5, 20, 10, 30]})  # x 5..14, y 20..49: not square, not diagonal
    (tmp_path / "boxes.json").write_text(json.dumps({"annotations": items}))
    boxes = open_masks(boxes=tmp_path / "boxes.json", frame_size=(SIZE, SIZE))
    box = boxes.mask(3, (SIZE, SIZE))
    ys, xs = np.nonzero(masks[3])
    assert box[ys, xs].all() and box.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[20:50, 5:15] = True
    assert (boxes.mask(9, (SIZE, SIZE)) == expected).all()
    video = write_video(tmp_path / "masks.avi", np.repeat(masks[..., None], 3, -1).astype(np.uint8) * 255)
    from_video = open_masks(video)
    assert from_video.indices == list(range(FRAMES))
    assert (from_video.mask(4, (SIZE, SIZE)) == masks[4]).mean() > 0.98  # MJPG edges


def test_temporal_stability_static_vs_moving(shapes_clip, tmp_path):
    """A static video gives map correlation 1 (a deterministic method, identical frames) and frame similarity 1;
    the moving circle gives lower map correlations. Catches correlating each map with itself (always 1) and a
    missing frame similarity in the sidecar."""
    static = write_video(tmp_path / "static.avi", np.stack([_scene(2).image] * 4))
    moving = write_video(tmp_path / "moving.avi", np.stack([_scene(2 * t).image for t in range(4)]))
    results = [gradeclip.explain_video(shapes_clip, v, ["a red circle"], scale=0.75, progress=False)
               for v in (static, moving)]
    still, moved = (temporal_stability(r) for r in results)
    assert np.allclose(still.map_corr, 1.0) and np.allclose(still.frame_similarity, 1.0, atol=1e-5)
    assert np.isfinite(moved.map_corr).sum() >= 2 and np.nanmax(moved.map_corr) < 0.99
    assert moved.frame_similarity.min() < 0.999
    gradeclip.save_video_maps(results[1], tmp_path, "moving")
    record = json.loads((tmp_path / "moving_maps.json").read_text())["temporal_stability"]
    assert record["pairs"] == [[0, 1], [1, 2], [2, 3]]
    written = np.array(record["map_rank_correlation"]["a red circle"], dtype=float)  # null (NaN) for a flat map
    assert np.allclose(written, moved.map_corr[:, 0], atol=1e-5, equal_nan=True)
    assert len(record["frame_similarity"]) == 3
    fig = gradeclip.plot_timeline(results[1])
    panel = next(ax for ax in fig.axes if ax.get_ylabel().startswith("consecutive"))
    frames_line = next(line for line in panel.get_lines() if line.get_label().startswith("frames"))
    assert np.allclose(frames_line.get_ydata(), moved.frame_similarity)
    assert np.allclose(frames_line.get_xdata(), results[1].times[1:])  # drawn at the later frame of each pair


def test_evaluate_video_command(shapes_clip, moving, tmp_path, capfd):
    """End to end with the shipped shapes model: the printed table is the library's summary of the same video,
    and the table (CSV, Markdown), the per-frame CSV and the plot are written. Catches a CLI that scores another
    prompt's maps or drops frames."""
    video, folder, _ = moving
    assert main(["evaluate", "--video", video, "--masks", str(folder), "--prompt", "a red circle",
                 "--methods", "grad_eclip", "maskclip", "--scale", "0.75", "--model", gradeclip.shapes_model(),
                 "--out", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert f"{FRAMES} frames explained, {FRAMES} annotated" in out
    assert err.count("evaluate moving.avi") >= 1 and "scorecam" not in err  # one labelled bar
    source = open_masks(folder)
    for method in ("grad_eclip", "maskclip"):
        result = gradeclip.explain_video(shapes_clip, video, ["a red circle"], method=method, scale=0.75,
                                         progress=False)
        row = summarize(score_frames(result, source)["rows"])[0]
        assert f"| {method} | a red circle | {FRAMES} | {row['pointing']:.3f} | {row['energy']:.3f} |" in out
    for name in ("moving_annotations.csv", "moving_annotations.md", "moving_frames.csv", "moving_metrics.png"):
        assert (tmp_path / name).is_file(), name
    assert len((tmp_path / "moving_frames.csv").read_text().splitlines()) == 1 + 2 * FRAMES


@pytest.mark.parametrize("argv, message", [
    (["evaluate"], "choose a benchmark: --shapes"),
    (["evaluate", "--shapes", "--masks", "m"], "--masks only work with --video"),
    (["evaluate", "--video", "v.avi", "--prompt", "x"], "--video needs its annotations"),
    (["evaluate", "--video", "v.avi", "--masks", "m"], "needs at least one non-empty --prompt"),
    (["evaluate", "--video", "v.avi", "--n", "3"], "--n only works with --shapes"),
    (["evaluate", "--shapes", "--video", "v.avi"], "not allowed with argument"),
    (["evaluate", "--video", "missing.avi", "--masks", "m", "-p", "x"], "video not found: missing.avi"),
])
def test_evaluate_flag_errors(argv, message, capfd):
    """Each wrong combination is one line on stderr with status 1 before any model is loaded."""
    assert main(argv) == 1
    err = capfd.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_shapes_writes_csv_and_markdown(tmp_path, capfd):
    """--out holds the printed table as Markdown and the same numbers as CSV."""
    assert main(["evaluate", "--shapes", "--n", "2", "--methods", "grad_eclip", "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out
    md = (tmp_path / "shapes_evaluation.md").read_text()
    assert md.splitlines()[2] in out and md.startswith("| method | pointing")
    rows = (tmp_path / "shapes_evaluation.csv").read_text().splitlines()
    assert rows[0].startswith("method,pointing,energy") and rows[1].startswith("grad_eclip,")
