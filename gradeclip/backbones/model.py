"""CLIP loading and prompt encoding on top of the openai-clip package.

``load_clip`` accepts an OpenAI model name (downloaded by ``clip.load`` on first use) or a local checkpoint in the
OpenAI format: a TorchScript archive as OpenAI publishes them, or a plain state dict saved with ``torch.save``.
The model always comes back in eval mode and float32, because gradients in float16 overflow.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

with warnings.catch_warnings():
    # openai-clip imports pkg_resources (hence setuptools<82), which warns on import; nothing for users to act on
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import clip
from clip.clip import _transform as _clip_transform
from clip.model import CLIP, build_model

DEFAULT_CACHE = os.path.expanduser("~/.cache/clip")


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_torchscript(path: str) -> bool:
    # TorchScript archives (as OpenAI publishes them) are zip files with constants.pkl and code/ entries;
    # torch.save state dicts are zip files without them.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_checkpoint(path: str) -> dict:
    # clip.load(path) fails on a plain state dict (EOFError: its TorchScript attempt consumes the file handle),
    # so the format is decided first and the file read once.
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.load's deprecation notice
                return torch.jit.load(path, map_location="cpu").state_dict()
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is neither a TorchScript CLIP archive nor a state dict "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "text_projection" not in state:
        raise ValueError(f"{path} does not hold an OpenAI-format CLIP state dict (no 'text_projection' key)")
    return dict(state)


def load_clip(name_or_path: str = "ViT-B/32", device=None, *, download_root: Optional[str] = None
              ) -> Tuple[CLIP, Callable]:
    """Load an OpenAI CLIP model and its preprocessing transform.

    ``name_or_path``: a name from ``clip.available_models()`` (e.g. ``"ViT-B/32"``, downloaded on first use into
    ``download_root``, default ``~/.cache/clip``) or the path of a local checkpoint (TorchScript archive or state
    dict in the OpenAI format). ``device``: where the model goes (default: CUDA when available, else CPU).

    Returns ``(model, preprocess)``: a ``clip.model.CLIP`` in eval mode, float32, on ``device``, and CLIP's own
    transform (PIL image -> normalised (3, S, S) float tensor, resize and centre crop).
    """
    device = _device(device)
    name_or_path = os.fspath(name_or_path)
    if os.path.isfile(name_or_path):
        state = _load_checkpoint(name_or_path)
        try:
            model = build_model(dict(state))
            # build_model rounds every weight to float16; reload the checkpoint's own precision
            extra = ("input_resolution", "context_length", "vocab_size")
            model.float().load_state_dict({k: v.float() for k, v in state.items() if k not in extra})
        except Exception as err:
            raise ValueError(f"{name_or_path}: cannot build a CLIP model from this checkpoint ({err})") from None
    elif name_or_path in clip.available_models():
        root = download_root or DEFAULT_CACHE
        try:
            model, _ = clip.load(name_or_path, device="cpu", jit=False, download_root=root)
        except Exception as err:
            raise RuntimeError(
                f"could not load CLIP model {name_or_path!r}: its weights are not in the cache folder {root} "
                f"and downloading them failed ({type(err).__name__}: {err}). Download them where the network is "
                f"reachable, copy the .pt file into {root}, or pass the path of a local checkpoint instead of the name"
            ) from None
    else:
        raise ValueError(f"{name_or_path!r} is neither a file nor a CLIP model name; "
                         f"available names: {', '.join(clip.available_models())}")
    model = model.float().eval().to(device)
    return model, clip_preprocess(model)


def check_vit(model) -> None:
    """Raise TypeError unless ``model`` is an openai-clip CLIP with a ViT visual encoder."""
    if not isinstance(model, CLIP):
        raise TypeError(f"expected an openai-clip clip.model.CLIP, got {type(model).__name__}")
    if not hasattr(model.visual, "transformer"):
        raise TypeError(f"this method needs a ViT image encoder; this model has {type(model.visual).__name__} "
                        f"(a ResNet CLIP). Use a ViT model such as ViT-B/32")


def tokenize(model: CLIP, prompts: Union[str, Sequence[str]], *, truncate: bool = False) -> torch.Tensor:
    """Token ids (K, T) int64 on the model's device for K prompts; T is the model's context length.

    A prompt longer than the context length raises ValueError, or is cut (with a warning) when ``truncate=True``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass at least one text prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    length = model.context_length
    for prompt in prompts:
        n = len(clip.clip._tokenizer.encode(prompt)) + 2
        if n > length:
            if not truncate:
                raise ValueError(f"prompt {prompt[:60]!r}... is {n} tokens long; the context length is {length} "
                                 f"(including start and end tokens). Shorten it or pass truncate=True")
            warnings.warn(f"prompt {prompt[:60]!r}... has {n} tokens; truncated to the context length {length}")
    tokens = clip.tokenize(prompts, context_length=length, truncate=truncate).long()
    return tokens.to(model.token_embedding.weight.device)


@torch.no_grad()
def encode_prompts(model: CLIP, prompts: Union[str, Sequence[str]], *, truncate: bool = False) -> torch.Tensor:
    """Text features (K, D) float32 from ``model.encode_text``, not normalised."""
    return model.encode_text(tokenize(model, prompts, truncate=truncate)).float()


def clip_preprocess(model: CLIP) -> Callable:
    """CLIP's own transform for this model: PIL image -> (3, S, S) float tensor (resize, centre crop, normalise)."""
    return _clip_transform(model.visual.input_resolution)


def token_words(tokens: torch.Tensor) -> list:
    """The word tokens (strings) of one tokenised prompt (T,), between its start and end tokens."""
    end = int(tokens.argmax())
    return [clip.clip._tokenizer.decode([t]).strip() for t in tokens[1:end].tolist()]
