"""Explorer latency on a ViT-B/32-shaped CLIP with random weights, on the CPU.

Measures, in one run: one ``explain`` call on a frame with 4 prompts (the reference); the explorer showing a new
frame with those 4 prompts (explain + view; with and without word importance of the selected prompt); and redraws
that must not run the model (opacity, colour map, colour scale, selected prompt). Prints the times and the ratios
against the targets: redraw <= 0.1 s, new frame <= 1.5x one explain call.

    python benchmarks/explorer_latency.py [--repeat 3] [--method grad_eclip]
"""
import argparse
import statistics
import tempfile
import time

import torch

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
from clip.model import CLIP

PROMPTS = ["a person walking", "a tree", "the sun in the sky", "a road"]


def timed(action, repeat):
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--method", default="grad_eclip")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12).eval()
    video = gradeclip.sample_video()
    info = gradeclip.video_info(video)
    frames = gradeclip.read_frames(video, list(range(2 * args.repeat + 2)))
    print(f"ViT-B/32 shapes, random weights, CPU ({torch.get_num_threads()} threads); frame {info.height}x"
          f"{info.width}, {len(PROMPTS)} prompts, {args.method}")
    gradeclip.explain(model, frames[0], PROMPTS, method=args.method, progress=False)  # warm-up
    explain_s = timed(lambda i: gradeclip.explain(model, frames[i + 1], PROMPTS, method=args.method,
                                                  progress=False), args.repeat)

    with tempfile.TemporaryDirectory() as out:
        plain = gradeclip.explore(model, video, PROMPTS, method=args.method, out_dir=out, words=False)
        new_frame_s = timed(lambda i: setattr(plain.slider, "value", i + 1), args.repeat)
        worded = gradeclip.explore(model, video, PROMPTS, method=args.method, out_dir=out, words=True)
        shown = []  # when the view's image changes: it is drawn before the word importance is computed
        worded.image.observe(lambda _: shown.append(time.perf_counter()), "value")
        starts = []

        def step(i):
            starts.append(time.perf_counter())
            worded.slider.value = args.repeat + i + 1

        new_frame_words_s = timed(step, args.repeat)
        view_first_s = statistics.median(t - s for s, t in zip(starts, shown))
        computed = worded.forwards
        for j in range(len(PROMPTS)):  # word importance of every prompt cached, so selecting one is a redraw
            worded.selected.value = j
        redraws = {
            "opacity": lambda i: setattr(worded.opacity, "value", 0.3 + 0.1 * i),
            "colour map": lambda i: setattr(worded.cmap, "value", ("viridis", "magma", "jet", "turbo")[i % 4]),
            "colour scale": lambda i: setattr(worded.scale, "value", ("shared", "per frame", "per map")[i % 3]),
            "selected prompt": lambda i: setattr(worded.selected, "value", i % len(PROMPTS)),
        }
        redraw_s = {name: timed(action, max(args.repeat, 4)) for name, action in redraws.items()}
        assert worded.forwards == computed, "a redraw recomputed an explanation"

    print(f"one explain call, 4 prompts:              {explain_s:7.3f} s")
    print(f"explorer, new frame (no word importance): {new_frame_s:7.3f} s  ratio {new_frame_s / explain_s:5.2f}"
          f"  (target <= 1.5)")
    print(f"explorer, new frame + word importance:    {new_frame_words_s:7.3f} s  ratio "
          f"{new_frame_words_s / explain_s:5.2f}  (view shown after {view_first_s:.3f} s, ratio "
          f"{view_first_s / explain_s:.2f}; then the words)")
    for name, seconds in redraw_s.items():
        print(f"redraw without recompute ({name + '):':17s} {seconds:7.3f} s  (target <= 0.1)")
    print(f"new_frame_ratio={new_frame_s / explain_s:.2f} new_frame_words_ratio={new_frame_words_s / explain_s:.2f} "
          f"max_redraw_s={max(redraw_s.values()):.3f}")


if __name__ == "__main__":
    main()
