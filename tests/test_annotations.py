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
    (["evaluate", "--video", "v.avi", "--overwrite"], "--overwrite only works with --shapes"),
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


NS_H, NS_W = 48, 80  # a non-square frame: a transposed resize or swapped axis cannot pass unnoticed


def _non_square_masks(frames=6):
    """(F, 48, 80) masks: a 16x24 rectangle that moves right by 8 px per frame (an exact 2x upsampling of a
    (24, 40) mask) and the (F, 24, 40) half-size masks they come from."""
    small = np.zeros((frames, NS_H // 2, NS_W // 2), bool)
    for t in range(frames):
        small[t, 4:12, 2 + 4 * t: 14 + 4 * t] = True
    return small.repeat(2, axis=1).repeat(2, axis=2), small


def test_non_square_frames_with_masks_at_another_size(tmp_path):
    """Non-square frames (48x80) with masks stored at half size (24x40): each mask is resized to the frame (equal
    to the test's own 2x upsampling), a one-hot token map on the rectangle's cell hits on every frame and one on a
    far cell never does. Catches a transposed mask resize (cv2 takes (width, height): the mask comes out 80x48,
    which crashes or misplaces) and rows and columns swapped between map and mask."""
    masks, small = _non_square_masks()
    for t, m in enumerate(small):
        cv2.imwrite(str(tmp_path / f"mask_{t:03d}.png"), m.astype(np.uint8) * 255)
    source = open_masks(tmp_path)
    grid = (6, 10)  # 8x8-pixel cells
    raw = np.zeros((len(masks), 2, *grid))
    for t in range(len(masks)):
        raw[t, 0, 2, (8 + 8 * t) // 8] = 1.0  # row 2 = pixels 16..23, inside rows 8..23 of the rectangle
        raw[t, 1, 5, 9 - t // 3] = 1.0  # the bottom row: outside every rectangle
    with pytest.warns(UserWarning, match="40x24, frames are 80x48"):
        scored = score_frames(_explanation(raw, frame_size=(NS_H, NS_W)), source)
    for t in range(len(masks)):
        assert (source.mask(t, (NS_H, NS_W)) == masks[t]).all(), t
    assert [r["pointing"] for r in scored["rows"] if r["prompt"] == "p0"] == [1] * len(masks)
    assert [r["pointing"] for r in scored["rows"] if r["prompt"] == "p1"] == [0] * len(masks)
    assert scored["resized"] == ((NS_H // 2, NS_W // 2), (NS_H, NS_W))


def test_constant_maps_are_counted_misses_and_missing_correlations(tmp_path):
    """Three prompts against masks covering the frame centre: one-hot maps on the mask, all-zero maps, and a flat
    map plus noise. The flat ones are misses with energy 0, no rank correlation (blank in the CSV, "–" in the
    table, never a number) and counted in ``constant_maps``. Catches a constant map scored a hit (its point is the
    frame centre), a missing count, and NaN printed as a number."""
    from gradeclip.eval.annotations import format_table, write_csv

    frames = 4
    masks = np.zeros((frames, SIZE, SIZE), bool)
    masks[:, 16:48, 16:48] = True  # the centre
    raw = np.zeros((frames, 3, 8, 8))
    raw[:, 0, 2, 5] = 1.0  # pixels 16..23 x 40..47: inside
    raw[:, 2] = 2.5 + np.random.default_rng(0).random((frames, 8, 8)) * 1e-9
    raw[frames - 1, 1, 2, 5] = 1.0  # the last frame's p1 map is informative: flags are per frame
    source = open_masks(boxes=_boxes_file(tmp_path, frames), frame_size=(SIZE, SIZE))
    rows = score_frames(_explanation(raw), source)["rows"]
    by_prompt = {p: [r for r in rows if r["prompt"] == p] for p in ("p0", "p1", "p2")}
    assert [r["pointing"] for r in by_prompt["p0"]] == [1] * frames
    assert [(r["pointing"], r["energy"], r["constant"]) for r in by_prompt["p2"]] == [(0, 0.0, 1)] * frames
    assert [(r["pointing"], r["energy"], r["constant"]) for r in by_prompt["p1"]] == \
        [(0, 0.0, 1)] * (frames - 1) + [(1, by_prompt["p0"][-1]["energy"], 0)]  # the same map as p0's there
    assert all(np.isnan(r["rank_corr"]) for r in by_prompt["p2"] + by_prompt["p1"][:-1])
    table = {r["prompt"]: r for r in summarize(rows)}
    assert [table[p]["constant_maps"] for p in ("p0", "p1", "p2")] == [0, frames - 1, frames]
    assert table["p1"]["pointing"] == 1 / frames and np.isnan(table["p2"]["rank_corr"])
    assert table["p1"]["rank_corr"] == by_prompt["p1"][-1]["rank_corr"]  # the one defined value, not NaN
    assert table["p0"]["chance"] == pytest.approx(0.25)  # 32x32 of 64x64
    text = format_table(summarize(rows))
    assert f"| m | p2 | {frames} | 0.000 | 0.000 | – | {frames} | 0.250 |" in text and "nan" not in text
    csv_rows = write_csv(rows, tmp_path / "frames.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    assert "nan" not in "".join(csv_rows).lower()
    assert all(line.split(",")[header.index("rank_corr")] == "" for line in csv_rows[1:] if ",p2," in line)


def _boxes_file(tmp_path, frames):
    items = [{"image_id": t, "bbox": [16, 16, 32, 32]} for t in range(frames)]
    (tmp_path / "boxes.json").write_text(json.dumps(items))
    return tmp_path / "boxes.json"


def _runs(x, y):
    """The runs of consecutive finite points of a drawn line, as lists of x values (a NaN is a gap)."""
    runs, current = [], []
    for a, b in zip(x, y):
        if np.isfinite(a) and np.isfinite(b):
            current.append(round(float(a), 6))
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_metrics_plot_leaves_gaps_and_draws_chance(tmp_path):
    """Frames 0..7 asked for; frame 3 has no annotation, frame 5 was not explained (failed to decode), frame 1's
    rank correlation is missing (a constant map): the lines break there and nowhere else; with every 2nd frame
    (0, 2, 4, 6) the points are neighbours and stay joined. The chance line is labelled and equals the mask
    share. Catches lines joined across missing frames, and a break rule on the frame step instead of the explained
    frames (which would split the unevenly spaced frames of --frames N)."""
    from gradeclip.eval.annotations import plot_metrics_over_time

    frames = [0, 1, 2, 4, 6, 7]
    rows = [{"frame": f, "time_s": f / 25, "prompt": "p", "method": "m", "pointing": f % 2, "energy": 0.1 * f,
             "rank_corr": float("nan") if f == 1 else 0.05 * f, "mask_share": 0.2 + 0.01 * f} for f in frames]
    fig = plot_metrics_over_time(rows, explained=range(8))
    pointing, energy, corr = fig.axes[:3]
    line = {ax: next(li for li in ax.get_lines() if li.get_label() == "m · p") for ax in (pointing, energy, corr)}
    t = {f: round(f / 25, 6) for f in range(8)}
    assert _runs(line[pointing].get_xdata(), line[pointing].get_ydata()) == [[t[0], t[1], t[2]], [t[4]],
                                                                          [t[6], t[7]]]
    assert _runs(line[corr].get_xdata(), line[corr].get_ydata()) == [[t[0]], [t[2]], [t[4]], [t[6], t[7]]]
    chance = next(li for li in energy.get_lines() if li.get_label().startswith("chance"))
    assert np.allclose(np.asarray(chance.get_ydata(), float)[np.isfinite(chance.get_ydata())],
                       [0.2 + 0.01 * f for f in frames])
    assert any(li.get_label().startswith("chance") for li in pointing.get_lines())
    legend = " ".join(text.get_text() for text in fig.legends[0].get_texts())
    assert "chance (mask's share of the frame)" in legend and "m · p" in legend
    every = [dict(r, frame=2 * i, time_s=2 * i / 25, rank_corr=0.1) for i, r in enumerate(rows[:4])]
    fig2 = plot_metrics_over_time(every, explained=[0, 2, 4, 6])
    drawn = next(li for li in fig2.axes[0].get_lines() if li.get_label() == "m · p")
    assert len(_runs(drawn.get_xdata(), drawn.get_ydata())) == 1
    uneven = [dict(r, frame=f, time_s=f / 25) for r, f in zip(rows, [0, 3, 7, 10])]  # --frames 4 of 11: uneven
    fig3 = plot_metrics_over_time(uneven, explained=[0, 3, 7, 10])
    drawn = next(li for li in fig3.axes[1].get_lines() if li.get_label() == "m · p")
    assert len(_runs(drawn.get_xdata(), drawn.get_ydata())) == 1
    fig.savefig(tmp_path / "metrics.png")


def test_evaluate_video_every_on_non_square_video(tmp_path, capfd):
    """``evaluate --video --every 3`` on a non-square (48x80) video whose masks are stored at half size: the
    per-frame CSV holds frames 0, 3, 6, 9 at their own times (frame / 25 fps, the rate the test wrote), the table
    counts 4 annotated frames, and every output is complete under its final name (no temporary file left).
    Catches ``time_s`` taken from the wrong position with --every (e.g. the frame's index into the times of the
    explained frames), a transposed mask resize on a non-square video, and a figure or CSV left half-written."""
    masks, small = _non_square_masks(10)
    frames = np.full((10, NS_H, NS_W, 3), 120, np.uint8)
    frames[masks] = (220, 30, 30)
    video = write_video(tmp_path / "wide.avi", frames)
    (tmp_path / "m").mkdir()
    for t, m in enumerate(small):
        cv2.imwrite(str(tmp_path / "m" / f"wide_{t:02d}.png"), m.astype(np.uint8) * 255)
    out = tmp_path / "out"
    assert main(["evaluate", "--video", video, "--masks", str(tmp_path / "m"), "--prompt", "a red square",
                 "--every", "3", "--methods", "grad_eclip", "--model", gradeclip.shapes_model(),
                 "--scale", "0.6", "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "4 frames explained, 4 annotated" in printed and "masks of 40x24 resized" in printed
    import csv

    rows = list(csv.DictReader((out / "wide_frames.csv").open()))
    assert [int(r["frame"]) for r in rows] == [0, 3, 6, 9]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.12, 0.24, 0.36], abs=1e-6)
    assert [float(r["mask_share"]) for r in rows] == pytest.approx([masks[t].mean() for t in (0, 3, 6, 9)])
    assert "| grad_eclip | a red square | 4 |" in (out / "wide_annotations.md").read_text()
    assert (out / "wide_metrics.pdf").read_bytes().rstrip().endswith(b"%%EOF")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_evaluate_video_interrupted_is_one_line_and_writes_nothing(tmp_path, moving):
    """SIGINT to ``evaluate --video`` once its bar has counted a map: exit 130, one line on stderr (no traceback)
    naming how far it got and how to rerun, and no file under --out (a table of part of the frames would look
    complete). Catches Ctrl-C left to Python's traceback and a table written from the frames done so far."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    video, folder, _ = moving
    long_video = write_video(tmp_path / "long.avi", np.stack([_scene(t % FRAMES).image for t in range(200)]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "gradeclip", "evaluate", "--video", long_video, "--masks",
                             str(folder), "-p", "a red circle", "--methods", "grad_eclip", "self_attention",
                             "--model", gradeclip.shapes_model(), "--scale", "0.75", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")))
    reader.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not re.search(rb"\| *[1-9]\d*/400 \[",
                                                                                  b"".join(err)):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    text = b"".join(err).decode()
    assert proc.returncode == 130, text[-2000:]
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("gradeclip:")
             or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("gradeclip: interrupted: evaluate --video stopped after 0 of "
                                                    "2 methods; nothing was written"), lines
    assert not out.exists() or not list(out.iterdir())
