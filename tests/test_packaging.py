"""Packaging: runtime dependencies vs the development install, and a light ``import gradeclip``."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import gradeclip

REPO = Path(__file__).resolve().parent.parent
DEV_TOOLS = ("pytest", "psutil", "nbclient", "nbformat", "ipykernel")  # ipywidgets: the explorer needs it at run time


def _names(lines):
    return {re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def test_runtime_dependencies_exclude_the_test_tools_which_the_dev_install_has():
    """The installed package needs no test or notebook-runner tool (in Colab those would upgrade Jupyter's own
    packages); `pip install -r requirements.txt -e .` still brings every one of them. Catches pyproject reading
    its dependencies from requirements.txt again, or a test tool dropped from both."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    dev = _names((REPO / "requirements.txt").read_text().splitlines())
    assert "dependencies" not in project.get("dynamic", [])
    assert {"torch", "openai-clip", "numpy", "matplotlib", "scipy", "grad-cam"} <= runtime
    assert not runtime & set(DEV_TOOLS)
    assert set(DEV_TOOLS) <= dev


def test_help_does_not_import_torch():
    """``python -m gradeclip --help`` answers without loading torch (it took 13-16 s when the package imported
    everything first). Catches an eager import in gradeclip/__init__.py or at the top of cli.py."""
    code = ("import runpy, sys\nsys.argv = ['gradeclip', '--help']\ntry:\n    runpy.run_module('gradeclip', "
            "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "usage:" in run.stdout and "TORCH False" in run.stdout, run.stdout + run.stderr
    for command in ("explain", "video", "evaluate"):
        sub = code.replace("'--help'", f"'{command}', '--help'")
        run = subprocess.run([sys.executable, "-c", sub], capture_output=True, text=True, cwd=REPO)
        assert "usage:" in run.stdout and "TORCH False" in run.stdout, command + run.stdout + run.stderr


def test_every_public_name_resolves_lazily():
    """Each name of ``gradeclip.__all__`` is importable (a wrong module in the lazy table fails here), and
    ``method_names`` sees the built-in methods (the registry alone would be empty)."""
    for name in gradeclip.__all__:
        assert getattr(gradeclip, name) is not None, name
    assert {"grad_eclip", "grad_cam", "rise"} <= set(gradeclip.method_names())
    assert set(gradeclip.__all__) <= set(dir(gradeclip))


def test_explain_stays_the_function_when_its_module_is_imported_first():
    """``gradeclip.explain`` names a function and a submodule; importing the submodule first (as any internal
    module does) must not replace the function (the lazy package broke ``gradeclip.explain(...)`` that way)."""
    code = ("import gradeclip.eval.compare, gradeclip, types\n"
            "print('FUNCTION', callable(gradeclip.explain) and not isinstance(gradeclip.explain, types.ModuleType))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "FUNCTION True" in run.stdout, run.stdout + run.stderr
