"""Explorer latency on a ViT-B/32-shaped CLIP with random weights, on the CPU.

Measures, in one run: one ``explain`` call on a frame with 4 prompts (the reference); the explorer showing a new
frame with those 4 prompts (explain + view; with and without word importance of the selected prompt); and redraws
that must not run the model (opacity, colour map, colour scale, selected prompt); and the text encoding of the 4
prompts, which ``explain`` repeats on every call and the explorer does once per prompt set. Prints the times and the
ratios against the targets: redraw <= 0.1 s, new frame <= 1.5x one explain call.

    python benchmarks/explorer_latency.py [--repeat 5] [--method grad_eclip]
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
    """Median wall-clock and process CPU seconds of ``action(i)`` for i in range(repeat)."""
    wall, cpu = [], []
    for i in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        action(i)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--method", default="grad_eclip")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12).eval()
    video = gradeclip.sample_video()
    info = gradeclip.video_info(video)
    frames = gradeclip.read_frames(video, list(range(args.repeat + 2)))
    print(f"ViT-B/32 shapes, random weights, CPU ({torch.get_num_threads()} threads); frame {info.height}x"
          f"{info.width}, {len(PROMPTS)} prompts, {args.method}")
    gradeclip.explain(model, frames[0], PROMPTS, method=args.method, progress=False)  # warm-up
    with tempfile.TemporaryDirectory() as out:
        plain = gradeclip.explore(model, video, PROMPTS, method=args.method, out_dir=out, words=False)
        worded = gradeclip.explore(model, video, PROMPTS, method=args.method, out_dir=out, words=True)
        shown = []  # when the view's image changes: it is drawn before the word importance is computed
        worded.image.observe(lambda _: shown.append(time.perf_counter()), "value")
        starts, runs = [], {"explain": [], "new frame": [], "new frame + words": []}

        def worded_step(i):
            starts.append(time.perf_counter())
            worded.slider.value = i + 1

        # interleaved, one of each per round, so that a load change on the machine affects all three alike
        for i in range(args.repeat):
            runs["explain"].append(timed(lambda _: gradeclip.explain(model, frames[i + 1], PROMPTS,
                                                                     method=args.method, progress=False), 1))
            runs["new frame"].append(timed(lambda _: setattr(plain.slider, "value", i + 1), 1))
            runs["new frame + words"].append(timed(lambda _: worded_step(i), 1))
        view_first = statistics.median(t - s for s, t in zip(starts, shown))
        computed = worded.forwards
        for j in range(len(PROMPTS)):  # word importance of every prompt cached, so selecting one is a redraw
            worded.selected.value = j
        redraws = {
            "opacity": lambda i: setattr(worded.opacity, "value", 0.3 + 0.1 * i),
            "colour map": lambda i: setattr(worded.cmap, "value", ("viridis", "magma", "jet", "turbo")[i % 4]),
            "colour scale": lambda i: setattr(worded.scale, "value", ("shared", "per frame", "per map")[i % 3]),
            "selected prompt": lambda i: setattr(worded.selected, "value", i % len(PROMPTS)),
        }
        redraw_s = {name: timed(action, max(args.repeat, 4))[0] for name, action in redraws.items()}
        assert worded.forwards == computed, "a redraw recomputed an explanation"

    # explain encodes the prompts again for each new frame: what a cache of text features would save at most
    with torch.no_grad():
        text_s = timed(lambda _: gradeclip.encode_prompts(model, PROMPTS), args.repeat)
    median = {name: tuple(statistics.median(r[k] for r in rows) for k in (0, 1)) for name, rows in runs.items()}
    ref_wall, ref_cpu = median["explain"]
    print(f"{'':40s} {'wall s':>8s} {'cpu s':>8s}  ratio to explain (wall, cpu)")
    for name, (wall, cpu) in median.items():
        print(f"{name:40s} {wall:8.3f} {cpu:8.3f}  {wall / ref_wall:5.2f} {cpu / ref_cpu:5.2f}"
              + ("  (target <= 1.5)" if name == "new frame" else ""))
    print(f"{'view shown, before the words':40s} {view_first:8.3f} {'':8s}  {view_first / ref_wall:5.2f}")
    print(f"{'text features of the 4 prompts':40s} {text_s[0]:8.3f} {text_s[1]:8.3f}  {text_s[0] / ref_wall:5.2f} "
          f"{text_s[1] / ref_cpu:5.2f}  (inside each explain call)")
    for name, seconds in redraw_s.items():
        print(f"redraw without recompute ({name + '):':17s}      {seconds:8.3f}  (target <= 0.1)")
    print(f"new_frame_ratio={median['new frame'][0] / ref_wall:.2f} "
          f"new_frame_words_ratio={median['new frame + words'][0] / ref_wall:.2f} "
          f"max_redraw_s={max(redraw_s.values()):.3f}")


if __name__ == "__main__":
    main()
