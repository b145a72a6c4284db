"""Write a small CASIA-B-style gait dataset: synthetic walkers, Xvid AVIs with B-frames, 1-based silhouette PNGs.

    python data/make_gait_dataset.py OUT [--subjects 3] [--conditions nm bg cl] [--views 000 090 180] [--frames 40]

Layout (CASIA-B's):

* ``OUT/videos/SUBJECT-COND-SEQ-VIEW.avi``: MPEG-4 part 2 tagged ``XVID`` with B-frames (FFmpeg from
  imageio-ffmpeg), 160x120 (width x height: not square), 25 fps, ``--frames`` frames;
* ``OUT/silhouettes/SUBJECT/COND-SEQ/VIEW/SUBJECT-COND-SEQ-VIEW-FFF.png``: the walker's binary silhouette (0/255,
  uint8), frame numbers from 1 as in CASIA-B.

Walker: head, torso, swinging arms and legs drawn with OpenCV; a bag at the hip in ``bg``, a long coat in ``cl``
(both part of the silhouette, as in CASIA-B). View ``090`` walks across the frame (left to right), ``000`` walks
towards the camera (growing, drifting right), ``180`` away from it (shrinking, drifting left); any other view walks
right to left. Subjects differ in height and colours. Deterministic; a few seconds for the default 27 videos.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # gradeclip.files when run from a clone
from gradeclip.files import atomic_path  # noqa: E402

WIDTH, HEIGHT, FPS, SEQ = 160, 120, 25, "01"
CLOTHES = [(40, 40, 170), (160, 60, 40), (40, 130, 60), (120, 40, 120)]  # RGB torso colours per subject


def background() -> np.ndarray:
    """(H, W, 3) uint8 RGB: a wall, a floor and a door, so the frame is not empty around the walker."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = (196, 190, 176)
    img[int(HEIGHT * 0.78):] = (120, 116, 104)
    cv2.rectangle(img, (118, 20), (140, int(HEIGHT * 0.78)), (110, 80, 60), -1)
    return img


def walker(canvas: np.ndarray, mask: np.ndarray, x: float, feet: float, scale: float, phase: float,
           condition: str, subject: int) -> None:
    """Draw the walker (hips at ``x``, feet at row ``feet``, ``scale`` 1 = 62 px tall) on ``canvas`` (RGB) and
    its silhouette on ``mask`` (uint8, 255 inside)."""
    s = scale * (1 + 0.08 * (subject % 3))
    leg, body, head_r = 26 * s, 22 * s, 6 * s
    hip = np.array([x, feet - leg])
    shoulder = hip + (0, -body)
    swing = 0.5 * math.sin(phase)
    shirt = CLOTHES[subject % len(CLOTHES)]
    trousers = (50, 50, 70)

    def line(a, b, colour, width):
        pa, pb = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b)
        w = max(1, int(round(width * s)))
        cv2.line(canvas, pa, pb, colour, w, cv2.LINE_8)
        cv2.line(mask, pa, pb, 255, w, cv2.LINE_8)

    def poly(points, colour):
        pts = np.round(np.array(points)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], colour)
        cv2.fillPoly(mask, [pts], 255)

    for sign in (1, -1):
        knee = hip + 0.5 * leg * np.array([math.sin(sign * swing), 1.0])
        line(hip, knee, trousers, 5)
        line(knee, knee + 0.5 * leg * np.array([math.sin(sign * swing * 0.6), 1.0]), trousers, 4)
        line(shoulder + (0, 2 * s), shoulder + (0, 2 * s) + 0.8 * body * np.array([math.sin(-sign * swing), 1]),
             shirt, 3)
    line(hip, shoulder, shirt, 9)
    if condition == "cl":  # a coat from the shoulders to the knees
        poly([shoulder + (-6 * s, 0), shoulder + (6 * s, 0), hip + (8 * s, 0.5 * leg), hip + (-8 * s, 0.5 * leg)],
             (90, 70, 40))
    if condition == "bg":  # a bag hanging at the hip, in front of the body
        poly([hip + (3 * s, -6 * s), hip + (13 * s, -6 * s), hip + (13 * s, 6 * s), hip + (3 * s, 6 * s)],
             (30, 30, 30))
    centre = tuple(int(round(v)) for v in shoulder + (1, -head_r - 1))
    cv2.circle(canvas, centre, max(1, int(round(head_r))), (225, 180, 150), -1, cv2.LINE_8)
    cv2.circle(mask, centre, max(1, int(round(head_r))), 255, -1, cv2.LINE_8)


def path(view: str, t: float):
    """(x of the hips, row of the feet, scale) at ``t`` in [0, 1] for a view."""
    if view == "090":
        return 15 + 130 * t, 108.0, 1.0
    if view == "000":
        return 60 + 30 * t, 96 + 18 * t, 0.65 + 0.45 * t
    if view == "180":
        return 95 - 30 * t, 114 - 18 * t, 1.1 - 0.45 * t
    return 145 - 130 * t, 108.0, 1.0


def sequence(subject: int, condition: str, view: str, frames: int):
    """(frames, H, W, 3) uint8 RGB and (frames, H, W) uint8 silhouettes (0/255) of one walk."""
    bg = background()
    images = np.empty((frames, HEIGHT, WIDTH, 3), np.uint8)
    masks = np.zeros((frames, HEIGHT, WIDTH), np.uint8)
    for i in range(frames):
        images[i] = bg
        x, feet, scale = path(view, i / max(1, frames - 1))
        walker(images[i], masks[i], x, feet, scale, 2 * math.pi * i / 16, condition, subject)
    return images, masks


def write_xvid(path: Path, images: np.ndarray) -> None:
    """An MPEG-4 part 2 AVI tagged XVID with B-frames (2 between references, a key frame every 12)."""
    import imageio_ffmpeg

    with atomic_path(path) as temp:
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
                   "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-", "-c:v", "mpeg4",
                   "-vtag", "XVID", "-bf", "2", "-g", "12", "-q:v", "3", "-pix_fmt", "yuv420p", str(temp)]
        subprocess.run(command, input=images.tobytes(), check=True)


def make_dataset(out, subjects: int = 3, conditions=("nm", "bg", "cl"), views=("000", "090", "180"),
                 frames: int = 40) -> list:
    """Write the dataset under ``out``; returns the video paths."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    written = []
    for subject in range(1, subjects + 1):
        for condition in conditions:
            for view in views:
                name = f"{subject:03d}-{condition}-{SEQ}-{view}"
                images, masks = sequence(subject, condition, view, frames)
                video = out / "videos" / f"{name}.avi"
                write_xvid(video, images)
                folder = out / "silhouettes" / f"{subject:03d}" / f"{condition}-{SEQ}" / view
                folder.mkdir(parents=True, exist_ok=True)
                for i, mask in enumerate(masks, start=1):
                    with atomic_path(folder / f"{name}-{i:03d}.png") as temp:
                        if not cv2.imwrite(str(temp), mask):
                            raise OSError(f"cannot write {temp}")
                written.append(video)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder (videos/ and silhouettes/ are made in it)")
    parser.add_argument("--subjects", type=int, default=3, help="number of subjects (default: 3)")
    parser.add_argument("--conditions", nargs="+", default=["nm", "bg", "cl"], help="default: nm bg cl")
    parser.add_argument("--views", nargs="+", default=["000", "090", "180"], help="default: 000 090 180")
    parser.add_argument("--frames", type=int, default=40, help="frames per video (default: 40)")
    args = parser.parse_args(argv)
    if args.subjects < 1 or args.frames < 1:
        parser.error(f"--subjects and --frames must be at least 1, got {args.subjects} and {args.frames}")
    bad = [c for c in args.conditions if c not in ("nm", "bg", "cl")]
    if bad:
        parser.error(f"unknown condition {bad[0]!r}; allowed: nm, bg, cl")
    videos = make_dataset(args.out, args.subjects, args.conditions, args.views, args.frames)
    print(f"wrote {len(videos)} videos to {Path(args.out) / 'videos'} and their silhouettes to "
          f"{Path(args.out) / 'silhouettes'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
