"""Shared fixtures: tiny random CLIP models built in code and small videos written in the test session."""
import warnings

import cv2
import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.model import CLIP


def tiny_clip(seed=0, *, vision_width=128, vision_layers=2, patch=8, resolution=32, text_width=128,
              text_layers=2, embed_dim=32):
    """A random openai-clip CLIP with the real vocabulary; widths are multiples of 64 so that heads = width // 64
    (as clip.model.build_model assumes) and checkpoints round-trip."""
    torch.manual_seed(seed)
    model = CLIP(embed_dim=embed_dim, image_resolution=resolution, vision_layers=vision_layers,
                 vision_width=vision_width, vision_patch_size=patch, context_length=77, vocab_size=49408,
                 transformer_width=text_width, transformer_heads=text_width // 64, transformer_layers=text_layers)
    # CLIP's init leaves some weights at zero or tiny values; perturb so every path carries signal
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def model():
    """2 vision blocks of width 128 (2 heads), patch 8 at 32 px (4x4 grid); 2 text blocks of width 128."""
    return tiny_clip()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, model):
    """The session model saved as a plain state dict (OpenAI format)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


def write_video(path, frames, fourcc="MJPG", fps=25):
    """Write uint8 RGB frames (N, H, W, 3) with OpenCV; returns the path as str."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def numbered_frames(n=30, h=48, w=64):
    """Frames whose mean brightness encodes their index (frame i has level 8 * i), with a moving square."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = 8 * i
        frames[i, 10:20, i % (w - 10):i % (w - 10) + 10] = (255, 0, 0)
    return frames


@pytest.fixture(scope="session")
def avi(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "numbered.avi", numbered_frames())


@pytest.fixture(scope="session")
def mp4(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "numbered.mp4", numbered_frames(), fourcc="mp4v")
