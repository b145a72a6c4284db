"""Synthetic scenes with ground truth: coloured shapes on varied backgrounds, with exact per-object masks.

A scene is one to three objects (circle, square, triangle; red, green, blue, yellow) of random size and position
on a flat, gradient, textured or noisy background, and a caption such as "a red circle and a blue square". Later
objects occlude earlier ones; each mask holds exactly the pixels where its object is visible. Everything is
deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 225), "yellow": (240, 220, 20)}
BACKGROUNDS = ("flat", "gradient", "texture", "noise")


@dataclass
class ShapeObject:
    """One object: ``shape``, ``colour``, centre ``(y, x)`` and ``size`` (circumradius) in pixels."""

    shape: str
    colour: str
    center: Tuple[float, float]
    size: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """``image`` (H, W, 3) uint8 RGB, its ``objects``, their visible ``masks`` (n, H, W) bool, and ``caption``."""

    image: np.ndarray
    objects: List[ShapeObject]
    masks: np.ndarray
    caption: str
    background: str = "flat"
    extras: dict = field(default_factory=dict)


def shape_mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Pixels (size, size) bool covered by ``obj`` (pixel centres inside the shape)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    cy, cx = obj.center
    r = obj.size
    if obj.shape == "circle":
        return (ys - cy) ** 2 + (xs - cx) ** 2 <= r ** 2
    if obj.shape == "square":
        half = r / np.sqrt(2)
        return (np.abs(ys - cy) <= half) & (np.abs(xs - cx) <= half)
    if obj.shape == "triangle":  # upright equilateral triangle with circumradius r
        top = (cy - r, cx)
        left = (cy + r / 2, cx - r * np.sqrt(3) / 2)
        right = (cy + r / 2, cx + r * np.sqrt(3) / 2)

        def side(a, b):
            return (b[1] - a[1]) * (ys - a[0]) - (b[0] - a[0]) * (xs - a[1])

        d1, d2, d3 = side(top, left), side(left, right), side(right, top)
        return ((d1 <= 0) & (d2 <= 0) & (d3 <= 0)) | ((d1 >= 0) & (d2 >= 0) & (d3 >= 0))
    raise ValueError(f"unknown shape {obj.shape!r}; allowed: {', '.join(SHAPES)}")


def background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 background of the given kind, in muted colours that no object uses."""
    base = rng.integers(90, 170, size=3)
    if kind == "flat":
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float64)
    elif kind == "gradient":
        other = rng.integers(60, 200, size=3)
        t = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
        img = base * (1 - t) + other * t + np.zeros((size, size, 1))
    elif kind == "texture":
        period = int(rng.integers(4, 10))
        ys, xs = np.mgrid[0:size, 0:size]
        stripes = ((ys + xs * rng.integers(0, 2)) // period) % 2
        img = base + 35 * stripes[..., None] * np.array([1, 1, 1])
    elif kind == "noise":
        img = base + rng.normal(0, 25, size=(size, size, 3))
    else:
        raise ValueError(f"unknown background {kind!r}; allowed: {', '.join(BACKGROUNDS)}")
    grey = img.mean(-1, keepdims=True)
    return np.clip(0.55 * img + 0.45 * grey, 0, 255).astype(np.uint8)  # desaturated: objects stand out


def caption(objects: Sequence[ShapeObject]) -> str:
    """"a red circle", "a red circle and a blue square", ... in the order given."""
    return " and ".join(f"a {o.name}" for o in objects)


def render_scene(objects: Sequence[ShapeObject], *, size: int = 64, kind: str = "flat", seed: int = 0,
                 text: Optional[str] = None) -> Scene:
    """Draw ``objects`` (later ones on top) on a background; ``text`` writes words into the image (for failure
    cases). Masks are the visible pixels of each object."""
    rng = np.random.default_rng(seed)
    image = background(kind, size, rng).copy()
    masks = np.zeros((len(objects), size, size), bool)
    for i, obj in enumerate(objects):
        if obj.colour not in COLOURS:
            raise ValueError(f"unknown colour {obj.colour!r}; allowed: {', '.join(COLOURS)}")
        m = shape_mask(obj, size)
        masks[:i] &= ~m
        masks[i] = m
        image[m] = COLOURS[obj.colour]
    if text:
        import cv2

        cv2.putText(image, text, (2, size - 6), cv2.FONT_HERSHEY_SIMPLEX, size / 160, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return Scene(image, list(objects), masks, caption(objects), kind, {"text": text} if text else {})


def random_scene(seed: int, *, size: int = 64, max_objects: int = 3) -> Scene:
    """A random scene: 1..max_objects objects of distinct (colour, shape), each at least partly visible."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, max_objects + 1))
    kinds = rng.permutation([(c, s) for c in COLOURS for s in SHAPES])[:count]
    objects = []
    for colour, shape in kinds:
        r = float(rng.uniform(0.12, 0.24) * size)
        objects.append(ShapeObject(str(shape), str(colour), (float(rng.uniform(r, size - r)),
                                                              float(rng.uniform(r, size - r))), r))
    scene = render_scene(objects, size=size, kind=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
                         seed=int(rng.integers(2 ** 31)))
    visible = scene.masks.sum((1, 2)) >= 0.3 * np.array([shape_mask(o, size).sum() for o in objects])
    if not visible.all():  # an object mostly hidden: draw the scene without it
        kept = [o for o, v in zip(objects, visible) if v]
        scene = render_scene(kept, size=size, kind=scene.background, seed=int(rng.integers(2 ** 31)))
    return scene


def scenes(start: int, count: int, *, size: int = 64, max_objects: int = 3) -> List[Scene]:
    """``count`` random scenes with seeds start, start + 1, ..."""
    return [random_scene(start + i, size=size, max_objects=max_objects) for i in range(count)]


def class_prompts() -> List[str]:
    """The zero-shot prompts "a {colour} {shape}" for every colour and shape."""
    return [f"a {c} {s}" for c in COLOURS for s in SHAPES]


def failure_cases(size: int = 64) -> dict:
    """Scenes and prompts that probe where explanations (or CLIP) fail, by name: an absent object, negation, two
    objects of one colour, a tiny object, text drawn in the image, unrelated prompts. Values: (Scene, prompts)."""
    s = size / 64  # scenes are laid out on a 64-pixel canvas and scaled

    def obj(shape, colour, y, x, r):
        return ShapeObject(shape, colour, (y * s, x * s), r * s)

    red_circle, blue_square = obj("circle", "red", 22, 20, 12), obj("square", "blue", 42, 44, 12)
    return {
        "absent object": (render_scene([red_circle, blue_square], size=size, seed=1),
                          ["a red circle", "a green triangle"]),
        "negation": (render_scene([red_circle, blue_square], size=size, seed=1),
                     ["a red circle", "no red circle"]),
        "same colour": (render_scene([red_circle, obj("square", "red", 42, 44, 12)], size=size, seed=2),
                        ["a red circle", "a red square"]),
        "tiny object": (render_scene([obj("circle", "blue", 30, 26, 15), obj("triangle", "yellow", 52, 52, 4)],
                                     size=size, seed=3), ["a yellow triangle", "a blue circle"]),
        "text in the image": (render_scene([blue_square], size=size, seed=4, text="red circle"),
                              ["a red circle", "a blue square"]),
        "unrelated prompts": (render_scene([red_circle, blue_square, obj("triangle", "yellow", 48, 14, 10)],
                                           size=size, seed=5, kind="texture"),
                              ["a red circle", "a blue square", "a yellow triangle", "a green square"]),
    }


_OF_THE_MODEL = ("SHAPES_VOCABULARY", "is_shapes_model", "unknown_words", "warn_unknown_words")


def __getattr__(name: str):
    """The shapes CLIP's words and warning live with the backbones (``backbones.shapes_model``); they are importable
    from here too, without importing torch for the scenes alone."""
    if name in _OF_THE_MODEL:
        from ..backbones import shapes_model

        return getattr(shapes_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
