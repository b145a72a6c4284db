"""The adapter table (``backbones/adapters.py``) and the method registry: every module that registers something is
imported by its package, each model object gets the adapter it had before the table (the most specific one first),
and a lookup imports no library the model does not come from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gradeclip.backbones import adapters as table
from gradeclip.backbones.base import ACCEPTED_MODELS, backbone_of
from gradeclip.backbones.eva_tower import EvaTowerBackbone
from gradeclip.backbones.hf import HFClipBackbone, HFSiglipBackbone
from gradeclip.backbones.hf_families import AltCLIPBackbone, ChineseCLIPBackbone, CLIPSegBackbone
from gradeclip.backbones.hf_siglip2 import HFSiglip2Backbone
from gradeclip.backbones.open_clip import OpenClipBackbone, OpenClipPoolerBackbone
from gradeclip.backbones.openai import OpenAIBackbone
from gradeclip.backbones.resnet import OpenAIResNetBackbone, OpenClipResNetBackbone
from gradeclip.backbones.timm_tower import TimmTowerBackbone
from gradeclip.backbones.xclip import XClipBackbone

REPO = Path(__file__).resolve().parents[1]

# In a fresh interpreter: what importing the packages registers, then what importing each of their modules by
# name adds (nothing, when the package imports every registering module), and which libraries got imported.
_PROBE = """
import importlib, json, pkgutil, sys
import gradeclip.backbones.base, gradeclip.methods.registry
from gradeclip.backbones.adapters import adapters
from gradeclip.methods.registry import method_names
libraries = sorted(m for m in ("transformers", "open_clip", "timm", "clip") if m in sys.modules)
before = {"adapters": {a.name: a.module for a in adapters()}, "methods": method_names()}
for package in ("gradeclip.backbones", "gradeclip.methods"):
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(package + "." + info.name)
after = {"adapters": {a.name: a.module for a in adapters()}, "methods": method_names()}
print("PROBE" + json.dumps({"before": before, "after": after, "libraries": libraries}))
"""


@pytest.fixture(scope="module")
def probe():
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO)
    line = next((x for x in run.stdout.splitlines() if x.startswith("PROBE")), None)
    assert line, run.stdout + run.stderr
    return json.loads(line[len("PROBE"):])


def test_every_module_that_registers_an_adapter_is_imported_by_the_package(probe):
    """Catches an adapter module left out of ``backbones/__init__.py``: its models would be refused (or get a
    generic adapter) until some other code happened to import it. The message names the module to add."""
    before, after = probe["before"]["adapters"], probe["after"]["adapters"]
    missing = sorted({module for name, module in after.items() if name not in before})
    assert not missing, f"add these to the imports of gradeclip/backbones/__init__.py: {missing}"
    # the modules that register adapters, named from outside the code under test
    assert set(before.values()) == {f"gradeclip.backbones.{m}" for m in (
        "openai", "resnet", "open_clip", "timm_tower", "eva_tower", "hf", "hf_siglip2", "xclip", "hf_families")}


def test_every_module_that_registers_a_method_is_imported_by_the_package(probe):
    """Catches ``methods/__init__.py`` not importing ``baselines`` (``method_names()`` empty, every method
    unknown), or a new module of methods registered only when imported by hand."""
    missing = sorted(set(probe["after"]["methods"]) - set(probe["before"]["methods"]))
    assert not missing, f"methods registered only when their module is imported by name: {missing}"
    assert {"grad_eclip", "grad_cam", "rise", "legrad", "gem", "scorecam"} <= set(probe["before"]["methods"])


def test_importing_the_adapters_imports_no_model_library(probe):
    """Catches an adapter importing transformers, open_clip, timm or clip at its top: registration imports every
    adapter, so each library would load (seconds, or an ImportError without the extra) for any model."""
    assert probe["libraries"] == []


def _fake(module: str, name: str, bases=(), **attrs):
    """An instance of a new class called ``name`` defined in ``module`` (what the predicates read), with ``attrs``."""
    obj = type(name, bases, {"__module__": module})()
    obj.__dict__.update(attrs)
    return obj


def _open_clip(visual):
    return _fake("open_clip.model", "CLIP", visual=visual)


def test_each_model_kind_gets_its_adapter_the_most_specific_first():
    """Catches the orders swapped or sorted the wrong way (a SigLIP 2 model taken by SigLIP's adapter, an Eva
    trunk by the generic timm tower, a ResNet tower by the ViT adapter), a predicate reading the wrong attribute,
    and the pooler's predicate matching a timm tower (before the table, any timm tower went to the timm adapter)."""
    siglip = type("SiglipModel", (), {"__module__": "transformers.models.siglip"})
    clip_vit = _fake("clip.model", "CLIP", visual=_fake("clip.model", "VisionTransformer"))
    cases = [
        (clip_vit, OpenAIBackbone),
        (_fake("clip.model", "CLIP", visual=_fake("clip.model", "ModifiedResNet")), OpenAIResNetBackbone),
        (_open_clip(_fake("open_clip.transformer", "VisionTransformer", attn_pool=None)), OpenClipBackbone),
        (_open_clip(_fake("open_clip.transformer", "VisionTransformer", attn_pool=object())), OpenClipPoolerBackbone),
        (_open_clip(_fake("open_clip.modified_resnet", "ModifiedResNet")), OpenClipResNetBackbone),
        (_open_clip(_fake("open_clip.timm_model", "TimmModel", trunk=_fake("timm.models.eva", "Eva"))),
         EvaTowerBackbone),
        (_open_clip(_fake("open_clip.timm_model", "TimmModel", trunk=_fake("timm.models.vit", "VisionTransformer"),
                          attn_pool=object())), TimmTowerBackbone),
        (_fake("transformers.models.clip", "CLIPModel"), HFClipBackbone),
        (siglip(), HFSiglipBackbone),
        (_fake("transformers.models.siglip2", "Siglip2Model", (siglip,)), HFSiglip2Backbone),
        (_fake("transformers.models.x_clip", "XCLIPModel"), XClipBackbone),
        (_fake("transformers.models.clipseg", "CLIPSegModel"), CLIPSegBackbone),
        (_fake("transformers.models.altclip", "AltCLIPModel"), AltCLIPBackbone),
        (_fake("transformers.models.chinese_clip", "ChineseCLIPModel"), ChineseCLIPBackbone),
    ]
    got = [(type(model).__name__, table.adapter_for(model).build) for model, _ in cases]
    assert got == [(type(model).__name__, want) for model, want in cases]
    assert table.adapter_for(_fake("timm.models.vit", "VisionTransformer")) is None  # no library of ours
    assert table.adapter_for(_fake("clipper.model", "CLIP")) is None  # "clip." is a prefix of the module path


def test_refusals_keep_their_one_line_messages():
    """Catches the transformers refusal entry lost or tried before the specific classes (every transformers model
    refused), and the lookup's own refusal losing the accepted-model list."""
    with pytest.raises(TypeError, match=r"^expected .*; got transformers BertModel, which lacks an image or a text"):
        backbone_of(_fake("transformers.models.bert", "BertModel"))
    both = _fake("transformers.models.blip", "BlipModel", get_text_features=1, get_image_features=1)
    with pytest.raises(TypeError, match=r"got transformers BlipModel, which has both towers but is none of"):
        backbone_of(both)
    with pytest.raises(TypeError, match=r"got transformers CLIPSegForImageSegmentation, whose output is a segm"):
        backbone_of(_fake("transformers.models.clipseg", "CLIPSegForImageSegmentation"))
    with pytest.raises(TypeError) as info:
        backbone_of(_fake("mylib.models", "Net"))
    assert str(info.value) == f"expected {ACCEPTED_MODELS}; got mylib.models.Net"


def test_register_adapter_orders_entries_and_replaces_by_name(monkeypatch):
    """A new entry is tried by its order (catches appending without sorting, or sorting by name first), the same
    name registered again replaces the entry instead of adding one, and ``backbone_of`` builds with the entry
    found, passing the tokenizer through (catches the tokenizer dropped or passed as the name)."""
    monkeypatch.setattr(table, "_ADAPTERS", list(table._ADAPTERS))
    model = _fake("clip.model", "CLIP")
    table.register_adapter("a late test entry", lambda m: m is model, lambda *a: ("late", a), order=table.LIBRARY + 1)
    assert table.adapter_for(model).build is OpenAIBackbone  # the openai-clip entry comes first
    table.register_adapter("z test entry", lambda m: m is model, lambda *a: ("first", a), order=0)
    assert backbone_of(model, "tok") == ("first", (model, "tok", ""))
    table.register_adapter("z test entry", lambda m: m is model, lambda *a: ("again", a), order=0)
    assert [a.name for a in table.adapters()].count("z test entry") == 1
    assert backbone_of(model)[0] == "again"
    with pytest.raises(TypeError, match="order must be an int"):
        table.register_adapter("bad", lambda m: False, OpenAIBackbone, order="first")
