"""Write a tiny CASIA-B-shaped dataset of moving shapes with exact per-frame masks, for the README's examples of
``evaluate --video --masks`` and ``batch``.

    python scripts/make_annotated_shapes.py OUT

OUT/videos/<subject>/<subject>-<condition>-01-<view>.avi: 192x192, 15 fps, 30 frames, MJPG; a red circle crosses
the frame (left to right at view 000, top to bottom at view 090); with condition ``bg`` a blue square travels with
it. OUT/masks/<subject>/<name>/<name>-<frame from 001>.png: the red circle's visible pixels, CASIA-B style naming.
Deterministic.
"""
import sys
from pathlib import Path

import cv2
import numpy as np

from gradeclip.eval.shapes import ShapeObject, render_scene

SIZE, FPS, FRAMES = 192, 15, 30


def scene(t: int, subject: int, condition: str, view: str):
    along = 36 + 4.0 * t  # pixels along the path
    across = 60 + 14 * subject
    y, x = (across, along) if view == "000" else (along, across)
    objects = [ShapeObject("circle", "red", (y, x), 34.0)]
    if condition == "bg":
        objects.insert(0, ShapeObject("square", "blue", (y + 50, x + 10) if view == "000" else (y + 10, x + 55),
                                      20.0))
    return render_scene(objects, size=SIZE, kind="gradient", seed=subject)


def main(out: str) -> None:
    root = Path(out)
    count = 0
    for subject in (1, 2):
        for condition in ("nm", "bg"):
            for view in ("000", "090"):
                name = f"{subject:03d}-{condition}-01-{view}"
                video = root / "videos" / f"{subject:03d}" / f"{name}.avi"
                masks = root / "masks" / f"{subject:03d}" / name
                video.parent.mkdir(parents=True, exist_ok=True)
                masks.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIZE, SIZE))
                for t in range(FRAMES):
                    s = scene(t, subject, condition, view)
                    writer.write(cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
                    cv2.imwrite(str(masks / f"{name}-{t + 1:03d}.png"), s.masks[-1].astype(np.uint8) * 255)
                writer.release()
                count += 1
    print(f"wrote {count} videos of {FRAMES} frames and their masks under {root}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/annotated_shapes")
