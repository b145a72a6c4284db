"""Write data/shapes_demo.avi: coloured shapes moving over a gradient, for the offline demo with the shapes CLIP.

192x192, 15 fps, 4 s, MJPG. A red circle, a blue square and a yellow triangle drift and bounce; the green circle
enters halfway. Scene sizes match the training scenes of scripts/train_shapes_clip.py at 3x scale (the demo
explains frames at 64x64). Deterministic.

    python data/make_shapes_video.py [OUTPUT]
"""
import sys
from pathlib import Path

import cv2

from gradeclip.eval.shapes import ShapeObject, render_scene

SIZE, FPS, SECONDS, MODEL_SIZE = 192, 15, 4, 64


def main(out: str) -> None:
    frames = SECONDS * FPS
    movers = [  # (shape, colour, start (y, x), velocity per frame (y, x), radius), at model scale (64 px)
        ("circle", "red", (18.0, 16.0), (0.35, 0.55), 10.0),
        ("square", "blue", (46.0, 44.0), (-0.45, 0.25), 11.0),
        ("triangle", "yellow", (44.0, 14.0), (0.20, -0.40), 11.0),
    ]
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIZE, SIZE))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 85)
    scale = SIZE / MODEL_SIZE
    for t in range(frames):
        objects = []
        for shape, colour, (y, x), (vy, vx), r in movers:
            # bounce between the walls: a triangle wave of the straight path
            span = MODEL_SIZE - 2 * r
            yy = r + abs((y - r + vy * t) % (2 * span) - span)
            xx = r + abs((x - r + vx * t) % (2 * span) - span)
            objects.append(ShapeObject(shape, colour, (yy * scale, xx * scale), r * scale))
        if t >= frames // 2:
            objects.append(ShapeObject("circle", "green", (52 * scale, (70 - 0.8 * (t - frames // 2)) * scale),
                                       9 * scale))
        scene = render_scene(objects, size=SIZE, kind="gradient", seed=7)
        writer.write(cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    writer.release()
    print(f"wrote {out}: {frames} frames, {SIZE}x{SIZE}, {FPS} fps, {Path(out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent / "shapes_demo.avi"))
