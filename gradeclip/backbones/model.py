"""Model loading (openai-clip, open_clip, transformers) and prompt encoding.

``load_clip`` accepts an OpenAI model name (downloaded by ``clip.load`` on first use), a local checkpoint in the
OpenAI format (a TorchScript archive as OpenAI publishes them, or a plain state dict saved with ``torch.save``),
``open_clip:ARCH/PRETRAINED``, ``hf:REPO_OR_FOLDER``, or a local folder of either library. open_clip and
transformers are imported only when such a name is given. The model always comes back in eval mode and float32,
because gradients in float16 overflow.
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


ACCEPTED_NAMES = ("an openai-clip name ({names}); 'open_clip:ARCH/PRETRAINED' (e.g. "
                  "open_clip:ViT-B-32/laion2b_s34b_b79k; PRETRAINED a tag or a checkpoint file) or 'open_clip:FOLDER' "
                  "(with open_clip_config.json); 'hf:REPO_OR_FOLDER' (e.g. hf:openai/clip-vit-base-patch32, "
                  "hf:google/siglip-base-patch16-224); or the path of an OpenAI-format checkpoint or a model folder")


def _load_openai(name_or_path: str, download_root: Optional[str]):
    if os.path.isfile(name_or_path):
        state = _load_checkpoint(name_or_path)
        try:
            model = build_model(dict(state))
            # build_model rounds every weight to float16; reload the checkpoint's own precision
            extra = ("input_resolution", "context_length", "vocab_size")
            model.float().load_state_dict({k: v.float() for k, v in state.items() if k not in extra})
        except Exception as err:
            raise ValueError(f"{name_or_path}: cannot build a CLIP model from this checkpoint ({err})") from None
        return model
    root = download_root or DEFAULT_CACHE
    try:
        model, _ = clip.load(name_or_path, device="cpu", jit=False, download_root=root)
    except Exception as err:
        raise RuntimeError(
            f"could not load CLIP model {name_or_path!r}: its weights are not in the cache folder {root} "
            f"and downloading them failed ({type(err).__name__}: {err}). Download them where the network is "
            f"reachable, copy the .pt file into {root}, or pass the path of a local checkpoint instead of the name"
        ) from None
    return model


def default_input_of(path: str) -> Optional[str]:
    """The input mode a local model asks for (``"native"``, ``"model"`` or ``"library"``), from the field
    ``default_input`` of its JSON sidecar: ``NAME.json`` beside a checkpoint file ``NAME.pt``, or ``gradeclip.json``
    in a model folder. None where there is no such field (then ``"native"`` applies)."""
    import json

    sidecar = os.path.join(path, "gradeclip.json") if os.path.isdir(path) else os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar) as f:
            mode = json.load(f).get("default_input")
    except (OSError, ValueError, AttributeError):
        return None
    from .inputs import INPUT_MODES

    if mode is not None and mode not in INPUT_MODES:
        raise ValueError(f"{sidecar}: default_input {mode!r} is not one of {', '.join(INPUT_MODES)}")
    return mode


def _download_failed(what: str, err: Exception) -> RuntimeError:
    return RuntimeError(f"could not load {what}: {type(err).__name__}: {' '.join(str(err).split())[:300]}. "
                        f"Without the network, pass a local folder or file of the model instead")


def _load_open_clip(spec: str, device):
    try:
        import open_clip
    except ImportError:
        raise ImportError("open_clip models need the open_clip extra: from the gradeclip folder, "
                          "pip install '.[open_clip]'") from None
    from .base import build_backbone

    if os.path.isdir(spec):
        name, pretrained = "local-dir:" + spec, None
    else:
        name, _, pretrained = spec.partition("/")
        if not pretrained:
            raise ValueError(f"'open_clip:{spec}' names no weights; give 'open_clip:ARCH/PRETRAINED' (e.g. "
                             f"open_clip:ViT-B-32/laion2b_s34b_b79k) or 'open_clip:FOLDER'")
        if name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {name!r}; see open_clip.list_models()")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device="cpu")
        tokenizer = open_clip.get_tokenizer(name)
    except (OSError, RuntimeError, ValueError) as err:
        raise _download_failed(f"open_clip model {spec!r}", err) from None
    model = model.float().eval().to(device)
    return build_backbone(model, tokenizer, name=f"open_clip:{spec}"), preprocess


def _load_hf(spec: str, device):
    try:
        import transformers
    except ImportError:
        raise ImportError("transformers models need the hf extra: from the gradeclip folder, "
                          "pip install '.[hf]'") from None
    from transformers.utils import logging as hf_logging

    from .base import build_backbone

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar (downloads keep huggingface_hub's own bars)
    try:
        model = transformers.AutoModel.from_pretrained(spec)
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise _download_failed(f"transformers model {spec!r}", err) from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    model = model.float().eval().to(device)
    backbone = build_backbone(model, tokenizer, name=f"hf:{spec}")
    try:  # the checkpoint's own normalisation, where it ships an image processor configuration
        processor = transformers.AutoImageProcessor.from_pretrained(spec)
        backbone.mean, backbone.std = tuple(processor.image_mean), tuple(processor.image_std)
        backbone.image_processor = processor  # input="library" feeds the model what this processor makes
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return backbone, backbone.preprocess()


def load_clip(name_or_path: str = "ViT-B/32", device=None, *, download_root: Optional[str] = None
              ) -> Tuple[object, Callable]:
    """Load a CLIP-family model and its preprocessing transform.

    ``name_or_path``: a name from ``clip.available_models()`` (e.g. ``"ViT-B/32"``, downloaded on first use into
    ``download_root``, default ``~/.cache/clip``); the path of a local checkpoint in the OpenAI format (TorchScript
    archive or state dict); ``"open_clip:ARCH/PRETRAINED"`` (``PRETRAINED`` a tag of ``open_clip.list_pretrained()``
    or a checkpoint file) or ``"open_clip:FOLDER"`` (``open_clip_config.json`` and weights); ``"hf:REPO_OR_FOLDER"``
    (a transformers ``CLIPModel`` or ``SiglipModel`` with its tokenizer); or a local folder of either library.
    ``device``: where the model goes (default: CUDA when available, else CPU). A local model whose JSON sidecar
    (``NAME.json`` beside ``NAME.pt``, ``gradeclip.json`` in a folder) has ``"default_input"`` carries that input
    mode as its default (``model.default_input``; the shipped shapes CLIP: ``"model"``).

    Returns ``(model, preprocess)``: for OpenAI names and checkpoints a ``clip.model.CLIP``; for open_clip and
    transformers a ``gradeclip.backbones.Backbone`` holding the library's model (``.model``), its tokenizer and
    its name. Either way in eval mode, float32, on ``device``, and every gradeclip function accepts it.
    ``preprocess``: the library's own transform (PIL image -> normalised (3, S, S) float tensor).
    """
    device = _device(device)
    name_or_path = os.fspath(name_or_path)
    model, preprocess = _load(name_or_path, device, download_root)
    mode = default_input_of(name_or_path) if os.path.exists(name_or_path) else None
    if mode is not None:  # on the library's object, so that every Backbone made of it sees it
        getattr(model, "model", model).default_input = mode
    return model, preprocess


def _load(name_or_path: str, device, download_root):
    if name_or_path.startswith("open_clip:"):
        return _load_open_clip(name_or_path[len("open_clip:"):], device)
    if name_or_path.startswith("hf:"):
        return _load_hf(name_or_path[len("hf:"):], device)
    if os.path.isdir(name_or_path):
        if os.path.isfile(os.path.join(name_or_path, "open_clip_config.json")):
            return _load_open_clip(name_or_path, device)
        if os.path.isfile(os.path.join(name_or_path, "config.json")):
            return _load_hf(name_or_path, device)
        raise ValueError(f"{name_or_path} is a folder with neither open_clip_config.json (open_clip) nor "
                         f"config.json (transformers); accepted: " + ACCEPTED_NAMES.format(names="ViT-B/32, ..."))
    if not os.path.isfile(name_or_path) and name_or_path not in clip.available_models():
        raise ValueError(f"{name_or_path!r} is neither a file nor a CLIP model name; accepted: "
                         + ACCEPTED_NAMES.format(names=", ".join(clip.available_models())))
    model = _load_openai(name_or_path, download_root)
    model = model.float().eval().to(device)
    return model, clip_preprocess(model)


def check_vit(model) -> None:
    """Raise TypeError unless ``model`` is an openai-clip CLIP with a ViT visual encoder."""
    if not isinstance(model, CLIP):
        raise TypeError(f"expected an openai-clip clip.model.CLIP, got {type(model).__name__}")
    if not hasattr(model.visual, "transformer"):
        raise TypeError(f"gradeclip cannot explain this openai-clip image encoder ({type(model.visual).__name__}): "
                        f"it explains openai-clip's ViT (VisionTransformer) and ResNet (ModifiedResNet) encoders")


def tokenize_with_clip_bpe(prompts: Sequence[str], length: int, truncate: bool = False) -> torch.Tensor:
    """Token ids (K, length) int64 on the CPU from CLIP's BPE tokenizer (openai-clip's and open_clip's default).

    A prompt longer than ``length`` raises ValueError, or is cut (with a warning) when ``truncate=True``.
    """
    from .tokens import too_long

    for prompt in prompts:
        n = len(clip.clip._tokenizer.encode(prompt)) + 2
        if n > length:
            too_long(prompt, n, length, truncate)
    return clip.tokenize(list(prompts), context_length=length, truncate=truncate).long()


def tokenize(model, prompts: Union[str, Sequence[str]], *, truncate: Optional[bool] = None,
             tokenizer=None) -> torch.Tensor:
    """Token ids (K, T) int64 on the model's device for K prompts, exactly as the library's own tokenizer gives
    them; T is the tokenizer's context length (77 for CLIP's BPE, 64 for SigLIP's, ...).

    ``model``: any model ``explain`` accepts; ``tokenizer`` where the model carries none (see ``explain``).
    A prompt longer than the context length raises ValueError, or is cut (with a warning) when ``truncate=True``
    (or where the model is a Backbone made by ``with_truncation``).
    """
    from .base import backbone_of, check_prompts

    if isinstance(model, CLIP) and tokenizer is None:
        prompts = check_prompts(prompts)
        return tokenize_with_clip_bpe(prompts, model.context_length, bool(truncate)).to(
            model.token_embedding.weight.device)
    return backbone_of(model, tokenizer).tokenize(prompts, truncate=truncate)


@torch.no_grad()
def encode_prompts(model, prompts: Union[str, Sequence[str]], *, truncate: Optional[bool] = None,
                   tokenizer=None) -> torch.Tensor:
    """Text features (K, D) float32, the library's own (``encode_text`` / ``get_text_features``), not normalised."""
    from .base import backbone_of

    return backbone_of(model, tokenizer).encode_prompts(prompts, truncate=truncate)


def clip_preprocess(model) -> Callable:
    """The library's own transform for this model: PIL image -> (3, S, S) float tensor (CLIP: resize, centre crop,
    normalise; SigLIP: resize to the square, normalise)."""
    if isinstance(model, CLIP):
        return _clip_transform(model.visual.input_resolution)
    from .base import backbone_of

    return backbone_of(model).preprocess()


def token_words(tokens: torch.Tensor) -> list:
    """The word tokens (strings) of one tokenised prompt (T,), between its start and end tokens."""
    end = int(tokens.argmax())
    return [clip.clip._tokenizer.decode([t]).strip() for t in tokens[1:end].tolist()]
