"""Silhouette-aligned relevance maps, band shares, the batch figures rebuilt from records (galleries, stale figures
removed) and the CASIA-B-style dataset script. Runs are fabricated on disk (records, maps, masks and real AVIs), so
that relevance can be set to exactly the object's mask; one small in-process `batch` run covers the command."""
import csv
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gradeclip.batch.aligned import (ALIGNED_HEIGHT, ALIGNED_WIDTH, band_shares, cached_aligned, group_aligned,
                                     silhouette_box)
from gradeclip.batch.figures import write_figures

from conftest import write_video

H, W = 60, 90  # non-square frames
PROMPTS = ["a person", "a head"]
ROOT = Path(__file__).resolve().parents[1]


def walker(n, seed):
    """(n, H, W, 3) uint8 frames and (n, H, W) bool masks of a figure (a box body under a disc head) that walks
    across the frame and grows: a different place and size in every frame."""
    yy, xx = np.mgrid[:H, :W]
    frames = np.full((n, H, W, 3), 100, np.uint8)
    masks = np.zeros((n, H, W), bool)
    for t in range(n):
        cx, scale = 12 + 6 * t + 3 * seed, 0.7 + 0.05 * t
        feet, body_h, half_w = 55 - seed, int(24 * scale), int(5 * scale)
        masks[t, feet - body_h:feet, cx - half_w:cx + half_w + 1] = True
        r = 4 * scale
        masks[t] |= (xx - cx) ** 2 + (yy - (feet - body_h - r)) ** 2 <= r * r
        frames[t][masks[t]] = (200, 40, 40)
    return frames, masks


def top_rows(mask, share=0.3):
    """The mask cut to the top ``share`` of its bounding box: a second prompt whose relevance is only the head."""
    rows = np.flatnonzero(mask.any(1))
    out = mask.copy()
    out[rows[0] + int(share * (rows[-1] + 1 - rows[0])):] = False
    return out


def fabricate(out, videos, group):
    """A batch run folder: per video id an AVI, 1-based mask PNGs, ``*_maps.npz`` + sidecar holding ``maps``
    (F, K, H, W) at frame size, ``mean_map.npy``, ``frames.csv`` with the given energies and ``record.json``.
    ``videos``: id -> (frames, masks, maps, energies (F, K)). Returns the summary rows (one per video x prompt)."""
    rows = []
    for vid, (frames, masks, maps, energies) in videos.items():
        folder = out / "videos" / vid
        folder.mkdir(parents=True)
        (out / "src").mkdir(exist_ok=True)
        path = write_video(out / "src" / f"{vid}.avi", frames)
        mask_dir = out / "masks" / vid
        mask_dir.mkdir(parents=True)
        for i, mask in enumerate(masks, start=1):
            cv2.imwrite(str(mask_dir / f"{vid}-{i:03d}.png"), mask.astype(np.uint8) * 255)
        n = len(frames)
        times = np.arange(n) / 25.0
        np.savez(folder / f"{vid}_grad_eclip_maps.npz", maps=maps.astype(np.float16), indices=np.arange(n),
                 times=times)
        (folder / f"{vid}_grad_eclip_maps.json").write_text(json.dumps(
            {"prompts": PROMPTS, "preprocessing": {"frame_size_hw": [H, W]}}))
        np.save(folder / "mean_map.npy", np.random.default_rng(n).random((len(PROMPTS), 64, 64)).astype(np.float32))
        with open(folder / "frames.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["frame", "time_s", "prompt", "method", "energy"])
            writer.writeheader()
            for i in range(n):
                for j, prompt in enumerate(PROMPTS):
                    writer.writerow({"frame": i, "time_s": times[i], "prompt": prompt, "method": "grad_eclip",
                                     "energy": energies[i, j]})
        record = {"id": vid, "path": path, "masks": str(mask_dir), "status": "complete", "frames": n,
                  "input": {"frame_size_hw": [H, W]}, "columns": {}}
        (folder / "record.json").write_text(json.dumps(record))
        rows += [{"id": vid, "prompt": p, "status": "complete", "masks": "found", **group[vid]} for p in PROMPTS]
    return rows


def aligned_naive(mask, image=None):
    """The test's own alignment of one silhouette: box from the True pixels, 10 % of its height added on each side
    (clipped), bilinear resize to 64 rows keeping aspect (48 columns at most), zero padding centred. ``image``
    (default: the mask itself) is what is cropped, on the mask's box."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad = int(round(0.1 * (bottom - top)))
    top, left, bottom, right = max(0, top - pad), max(0, left - pad), min(H, bottom + pad), min(W, right + pad)
    crop = (mask if image is None else image)[top:bottom, left:right].astype(np.float32)
    h, w = crop.shape
    nh, nw = 64, max(1, int(round(w * 64 / h)))
    if nw > 48:
        nh, nw = max(1, int(round(h * 48 / w))), 48
    canvas = np.zeros((64, 48), np.float32)
    y0, x0 = (64 - nh) // 2, (48 - nw) // 2
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas


@pytest.fixture
def run_dir(tmp_path):
    """Two videos (7 and 5 frames) whose relevance is exactly the walker's mask (prompt 0) and the top 30 % of it
    (prompt 1); energies differ per frame and prompt."""
    videos = {}
    for seed, (vid, n) in enumerate((("v1-nm", 7), ("v2-bg", 5))):
        frames, masks = walker(n, seed)
        maps = np.stack([masks, np.stack([top_rows(m) for m in masks])], axis=1).astype(np.float32)
        energies = np.random.default_rng(seed).random((n, 2)).round(4)
        videos[vid] = (frames, masks, maps, energies)
    rows = fabricate(tmp_path, videos, {"v1-nm": {"cond": "nm", "all": "x"}, "v2-bg": {"cond": "bg", "all": "x"}})
    return tmp_path, videos, rows


def test_aligned_mean_equals_mean_silhouette(run_dir):
    """The object moves and grows, relevance is exactly its mask: the aligned mean map is the mean silhouette, as
    the test aligns it itself, frame-weighted over both videos. Catches a crop at the frame's own box instead of the
    silhouette's, a margin from the width, a stretched (aspect-losing) resize, padding off centre, video means
    averaged instead of frames, a frame index off by one between maps and 1-based masks, and prompts swapped."""
    out, videos, _ = run_dir
    records = {v: json.loads((out / "videos" / v / "record.json").read_text()) for v in videos}
    found = group_aligned([cached_aligned(out, r) for r in records.values()])
    masks = np.concatenate([videos[v][1] for v in videos])
    expected = np.mean([aligned_naive(m) for m in masks], axis=0)
    expected_head = np.mean([_naive_head(m) for m in masks], axis=0)
    assert found["frames"] == 12 and found["videos"] == 2
    assert found["maps"].shape == (2, ALIGNED_HEIGHT, ALIGNED_WIDTH)
    np.testing.assert_allclose(found["silhouette"], expected, atol=1e-5)
    np.testing.assert_allclose(found["maps"][0], expected, atol=1e-5)
    np.testing.assert_allclose(found["maps"][1], expected_head, atol=1e-5)
    assert np.abs(found["maps"][1] - found["maps"][0]).max() > 0.5  # the two prompts really differ


def _naive_head(mask):
    """The head-only relevance aligned on the *whole* silhouette's box (the box comes from the mask, not the map)."""
    return aligned_naive(mask, top_rows(mask))


def test_band_shares_match_numpy():
    """Shares of the relevance inside the box per band (top 15 % rows, middle, bottom 40 %), by a row loop in the
    test. Catches bands counted from the frame's top instead of the box's, legs as the bottom 60 %, columns outside
    the box counted, shares of the whole frame's relevance, and a zero map giving a number instead of NaN."""
    rng = np.random.default_rng(3)
    maps = rng.random((2, H, W)) * np.array([1.0, 3.0])[:, None, None]
    maps[1, 30:40] *= 5  # the second prompt weighs the middle rows
    box = (11, 20, 51, 45)  # 40 rows: head rows 11-16, legs rows 35-50
    expected = np.zeros((2, 3))
    for k in range(2):
        for r in range(11, 51):
            band = 0 if r - 11 < 6 else (2 if r - 11 >= 24 else 1)
            expected[k, band] += maps[k, r, 20:45].sum()
        expected[k] /= maps[k, 11:51, 20:45].sum()
    np.testing.assert_allclose(band_shares(maps, box), expected, rtol=1e-12)
    assert np.isnan(band_shares(np.zeros((1, H, W)), box)).all()
    assert silhouette_box(np.zeros((H, W), bool)) is None


def test_band_shares_in_group_rows(run_dir):
    """The share columns reach the per-video rows from the aligned pass: for relevance equal to the mask, the
    head share is the mask's own share of pixels in the top 15 % rows of its box. Catches shares computed on the
    aligned (resized) map instead of the frame, and prompts mixed up."""
    from gradeclip.batch.figures import add_band_shares

    out, videos, rows = run_dir
    add_band_shares(out, rows, PROMPTS)
    masks = videos["v1-nm"][1]
    heads = []
    for m in masks:
        ys = np.flatnonzero(m.any(1))
        h = ys[-1] + 1 - ys[0]
        heads.append(m[ys[0]:ys[0] + int(round(0.15 * h))].sum() / m.sum())
    row = next(r for r in rows if r["id"] == "v1-nm" and r["prompt"] == PROMPTS[0])
    assert row["head_share"] == pytest.approx(np.mean(heads), abs=1e-5)
    head_row = next(r for r in rows if r["id"] == "v1-nm" and r["prompt"] == PROMPTS[1])
    assert head_row["legs_share"] == pytest.approx(0.0, abs=1e-6)  # the head-only prompt has nothing on the legs
    assert row["legs_share"] > 0.2


def test_galleries_pick_lowest_and_highest_and_stale_figures_go(run_dir):
    """Per group and prompt the CSV lists exactly the k lowest and k highest energies of the group's frames (by
    numpy in the test), with the frames' true times; a rerun without a grouping removes that grouping's figures
    and keeps the others and files the command did not make; a cross of two columns has a cell per pair. Catches a gallery over one video only, prompts
    mixed up, ascending order for 'highest', times from the index instead of the record, and stale figures kept."""
    out, videos, rows = run_dir
    k = 3
    written = write_figures(out, rows, ["cond", "all"], PROMPTS, "grad_eclip", k=k)
    names = {p.relative_to(out).as_posix() for p in written}
    assert {"mean_maps_cond.png", "aligned_maps_cond.png", "mean_maps_all.png", "galleries/gallery_all.csv"} <= names
    with open(out / "galleries" / "gallery_all.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    for j, prompt in enumerate(PROMPTS):
        energies = [(videos[v][3][i, j], v, i) for v in videos for i in range(len(videos[v][0]))]
        order = sorted(energies, key=lambda e: (e[0], e[1], e[2]))
        for kind, expected in (("lowest", order[:k]), ("highest", sorted(energies, key=lambda e: (-e[0], e[1],
                                                                                                   e[2]))[:k])):
            got = [r for r in listed if r["prompt"] == prompt and r["kind"] == kind]
            assert [(r["video"], int(r["frame"])) for r in got] == [(v, i) for _, v, i in expected]
            assert [float(r["time_s"]) for r in got] == pytest.approx([i / 25 for _, _, i in expected])
    (out / "notes.png").write_bytes(b"mine")
    (out / "mean_maps_legacy.png").write_bytes(b"an older run's, before figures.json")
    again = write_figures(out, rows, ["cond", ("cond", "all")], PROMPTS, "grad_eclip", k=k)
    assert not (out / "mean_maps_all.png").exists() and not (out / "galleries" / "gallery_all.csv").exists()
    with open(out / "galleries" / "gallery_cond_all.csv", newline="") as f:  # a cross: one cell per pair of values
        assert {r["value"] for r in csv.DictReader(f)} == {"nm × x", "bg × x"}
    assert (out / "aligned_maps_cond_all.png").is_file()
    assert not list((out / "galleries").glob("gallery_all-*"))
    assert (out / "mean_maps_cond.png").is_file() and (out / "notes.png").read_bytes() == b"mine"
    assert not (out / "mean_maps_legacy.png").exists()
    assert all(p.is_file() for p in again)
    assert json.loads((out / "figures.json").read_text())["files"] == sorted(
        p.relative_to(out).as_posix() for p in again)


def _dataset_module():
    spec = importlib.util.spec_from_file_location("make_gait_dataset", ROOT / "data" / "make_gait_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_script_layout_found_by_batch(tmp_path):
    """The generated CASIA-B-style folder: every video's silhouettes are found by batch's CASIA-B rule, number
    1..N (0-based 0..N-1 once read), one per decoded frame, non-empty, and the AVIs are MPEG-4 part 2 (XVID) with
    B-frames at a non-square size; the bag makes bg's silhouette larger than nm's. Catches 0-based file numbers, a
    SUBJECT/COND-SEQ/VIEW path typo, masks that miss the walker, and a codec without B-frames."""
    import av

    from gradeclip.batch.runner import find_videos
    from gradeclip.eval.annotations import open_masks
    from gradeclip.io.frames import read_frames, video_info

    module = _dataset_module()
    videos = module.make_dataset(tmp_path, subjects=2, conditions=("nm", "bg"), views=("090",), frames=8)
    jobs = find_videos([tmp_path / "videos"], tmp_path / "silhouettes")
    assert [j["id"] for j in jobs] == ["001-bg-01-090", "001-nm-01-090", "002-bg-01-090", "002-nm-01-090"]
    assert len(videos) == 4 and all(j["masks"] for j in jobs)
    areas = {}
    for job in jobs:
        info = video_info(job["path"])
        assert (info.num_frames, info.height, info.width) == (8, 120, 160)
        source = open_masks(job["masks"], frame_size=(120, 160))
        assert source.indices == list(range(8))
        assert sorted(p.name for p in Path(job["masks"]).iterdir())[0].endswith("-001.png")
        masks = np.stack([source.mask(i, (120, 160)) for i in range(8)])
        frames = read_frames(job["path"], list(range(8))).astype(int)
        walker_pixels = np.abs(frames - module.background().astype(int)).sum(-1) > 40  # what differs from the scene
        assert all(m.any() for m in masks)
        assert (masks & walker_pixels).sum() > 0.8 * masks.sum()  # the silhouette lies on the drawn walker
        assert (masks & walker_pixels).sum() > 0.8 * walker_pixels.sum()  # and covers it
        areas[job["id"]] = masks.sum()
        with av.open(job["path"]) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "mpeg4" and stream.codec_tag.upper() == "XVID"
            types = [str(f.pict_type) for f in container.decode(stream)]
        assert any(t.endswith("B") or t == "3" for t in types), types
    assert areas["001-bg-01-090"] > areas["001-nm-01-090"]


def test_mean_maps_at_frame_aspect_one_scale_per_prompt():
    """The frame-coordinate figure: each panel at the frames' aspect (3:4 here, not square), each prompt's column on
    its own colour scale (a prompt with 10x larger values does not wash out the other), n in every title. Catches
    the old shared scale and square panels."""
    from gradeclip.batch.mean_maps import plot_group_maps

    rng = np.random.default_rng(0)
    means = {v: {"maps": rng.random((2, 64, 64)) * np.array([1.0, 10.0])[:, None, None], "videos": n,
                 "frames": 10 * n, "aspect": 0.75} for v, n in (("000", 3), ("090", 4))}
    fig = plot_group_maps(means, PROMPTS, "view")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4
    tops = [ax.images[0].get_clim()[1] for ax in panels]  # row-major: 000/p0, 000/p1, 090/p0, 090/p1
    assert tops[0] == tops[2] == pytest.approx(max(m["maps"][0].max() for m in means.values()))
    assert tops[1] == tops[3] == pytest.approx(max(m["maps"][1].max() for m in means.values()))
    assert all(ax.get_aspect() == pytest.approx(0.75) for ax in panels)
    assert "n=3 videos, 30 frames" in panels[0].get_title() and "n=4 videos, 40 frames" in panels[3].get_title()


def test_batch_on_generated_dataset(tmp_path, model, monkeypatch, capfd):
    """`batch` (its engine replaced by a loop in this process) on the dataset script's folder: masks for every
    video, the band-share columns in the group table, aligned maps and galleries written; a rerun asking for one
    grouping fewer removes that grouping's figures. Catches the figure step not wired into the command, shares
    missing from the group rows, and stale figures kept across runs."""
    from gradeclip.batch.runner import process_video
    from gradeclip.cli import main

    def run(jobs, settings, out, **_):
        return [process_video(model, job, settings, Path(out)) for job in jobs]

    monkeypatch.setattr("gradeclip.batch.engine.run_on_ray", run)
    checkpoint = tmp_path / "tiny.pt"
    import torch

    torch.save(model.state_dict(), checkpoint)
    _dataset_module().make_dataset(tmp_path / "gait", subjects=1, conditions=("nm", "bg"), views=("000", "090"),
                                   frames=6)
    casia = r"(?P<condition>nm|bg|cl)-\d{2}-(?P<view>\d{3})"
    args = ["batch", str(tmp_path / "gait" / "videos"), "--masks-root", str(tmp_path / "gait" / "silhouettes"),
            "-p", "a person", "-p", "a bag", "--model", str(checkpoint), "--out", str(tmp_path / "run"),
            "--frames", "2", "--quiet", "--gallery-k", "2"]
    assert main(args + ["--group-by", casia]) == 0
    text = capfd.readouterr().out
    assert "masks found for 4 of 4 videos" in text
    out = tmp_path / "run"
    with open(out / "summary_groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    view = [g for g in groups if g["group"] == "view"]
    assert len(view) == 4 and all(0 <= float(g["head_share"]) <= 1 for g in view)
    for g in view:  # shares of the relevance inside the box add up to 1
        assert float(g["head_share"]) + float(g["torso_share"]) + float(g["legs_share"]) == pytest.approx(1, abs=1e-4)
    assert (out / "aligned_maps_condition.png").is_file() and (out / "galleries" / "gallery_view.csv").is_file()
    assert main(args + [r"--group-by=(?P<view>\d{3})\.avi$"]) == 0
    assert not (out / "aligned_maps_condition.png").exists() and (out / "aligned_maps_view.png").is_file()
    assert not list((out / "galleries").glob("gallery_condition*"))
