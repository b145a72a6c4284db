"""Write data/sample_walk.avi: a synthetic side view of a person walking past a tree (320x240, 25 fps, MJPG).

It stands in for a gait clip such as CASIA-B's (same size and rate) so the notebooks, CLI and tests have a video
without downloading one. Deterministic: running it again writes the same frames.

    python data/make_sample_video.py [OUTPUT]
"""
import math
import sys
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 25, 2.0


def background() -> np.ndarray:
    """Sky gradient, grass, a path and a tree; BGR uint8 (H, W, 3)."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for y in range(HEIGHT):
        t = y / HEIGHT
        img[y] = (235 - 60 * t, 200 - 40 * t, 150 - 40 * t)  # BGR sky, lighter at the horizon
    img[170:] = (60, 140, 70)
    img[185:205] = (150, 170, 185)
    cv2.rectangle(img, (250, 95), (262, 185), (30, 60, 100), -1)  # trunk
    cv2.circle(img, (256, 85), 34, (40, 120, 40), -1)  # crown
    cv2.circle(img, (60, 40), 16, (90, 230, 250), -1)  # sun
    return img


def person(img: np.ndarray, x: float, phase: float) -> None:
    """Draw a walking person whose hips are at x; ``phase`` is the gait cycle angle in radians."""
    hip = np.array([x, 150.0])
    shoulder = hip + (0, -42)
    head = shoulder + (2, -16)
    swing = 0.45 * math.sin(phase)

    def limb(start, length, angle, colour, thickness):
        end = start + length * np.array([math.sin(angle), math.cos(angle)])
        cv2.line(img, tuple(int(v) for v in start), tuple(int(v) for v in end), colour, thickness, cv2.LINE_AA)
        return end

    for sign in (1, -1):  # legs with a bending knee, arms swinging against them
        knee = limb(hip, 22, sign * swing, (70, 50, 40), 7)
        limb(knee, 22, sign * swing - 0.3 * max(0.0, -sign * math.sin(phase)), (70, 50, 40), 6)
        limb(shoulder + (0, 3), 34, -sign * 0.8 * swing, (40, 40, 170), 5)
    cv2.line(img, tuple(int(v) for v in hip), tuple(int(v) for v in shoulder), (40, 40, 170), 11, cv2.LINE_AA)
    cv2.circle(img, tuple(int(v) for v in head), 9, (150, 180, 225), -1, cv2.LINE_AA)


def main(out: str) -> None:
    bg = background()
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 50)
    frames = int(SECONDS * FPS)
    for i in range(frames):
        img = bg.copy()
        person(img, 20 + 200 * i / (frames - 1), 2 * math.pi * i / 14)
        writer.write(img)
    writer.release()
    print(f"wrote {out}: {frames} frames, {WIDTH}x{HEIGHT}, {FPS} fps, {Path(out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent / "sample_walk.avi"))
