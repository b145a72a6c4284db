"""Run a notebook headless the way papermill does: the values a test passes are injected in a new cell right after
the cell tagged ``parameters``, so they win over what that cell says, exactly as a user's edit would."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def parameters_cell_index(book) -> int:
    """Index of the one code cell tagged ``parameters`` (AssertionError if there is not exactly one)."""
    tagged = [i for i, c in enumerate(book.cells)
              if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def parameter_names(book) -> list:
    """Names the parameters cell assigns, in order (AssertionError if it holds anything but plain assignments)."""
    tree = ast.parse(book.cells[parameters_cell_index(book)].source)
    assert all(isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
               for node in tree.body), "the parameters cell must hold plain assignments only (NAME = value)"
    return [node.targets[0].id for node in tree.body]


def run_notebook(path, parameters: Dict[str, object], workdir, *, timeout: int = 600, colab_cell: bool = False):
    """Execute ``path`` in ``workdir`` with ``parameters`` injected after its parameters cell.

    The Colab-only install cell (any code cell mentioning ``google.colab``) is removed unless ``colab_cell`` is
    true, so the notebook is shown to run without it. Every injected name must be one the parameters cell
    assigns (so a renamed parameter cannot make a test silently run the default). Returns the executed notebook; a cell that raises makes
    nbclient raise ``CellExecutionError`` with that cell's traceback.
    """
    book = nbformat.read(str(path), as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), "outputs must be stripped"
    if not colab_cell:
        book.cells = [c for c in book.cells if not (c.cell_type == "code" and "google.colab" in c.source)]
    index = parameters_cell_index(book)
    unknown = sorted(set(parameters) - set(parameter_names(book)))
    assert not unknown, f"{Path(path).name} has no parameter(s) {unknown}; it has {parameter_names(book)}"
    injected = nbformat.v4.new_code_cell("# Parameters injected by the tests\n" + "".join(
        f"{name} = {value!r}\n" for name, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    book.cells.insert(index + 1, injected)
    NotebookClient(book, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return book


def cell_text(cell) -> str:
    """Everything a code cell printed (stream and plain-text results), as one string."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "".join(parts)
