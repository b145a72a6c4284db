"""Drive notebook 00_explorer in a real browser: Voilà serves it, headless Chromium (through Playwright) uses it.

A parameter-injected copy of the notebook (the shipped shapes model and shapes video: offline) is served on
127.0.0.1 only. The script waits for the explorer, types a prompt, drags the frame slider and presses Export,
checking after each step that the image and the score table changed as they should, and saves a screenshot of
each step to ``--out``. The server and the browser are always stopped at the end. Exit status 0 when every check
passes. Needs Debian's ``chromium`` (``apt-get install -y chromium``); never downloads a browser.

    python scripts/browser_explorer.py --out outputs/browser [--docs docs/explorer.png]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def injected_notebook(workdir: Path) -> Path:
    """Notebook 00 with the shapes model, shapes video and prompts injected after its parameters cell, without
    the Colab cell (as ``tests/notebook_runner.py`` does)."""
    sys.path.insert(0, str(ROOT))
    import gradeclip

    book = nbformat.read(str(ROOT / "notebooks" / "00_explorer.ipynb"), as_version=4)
    book.cells = [c for c in book.cells if not (c.cell_type == "code" and "google.colab" in c.source)]
    index = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    values = {"VIDEO": gradeclip.shapes_video(), "MODEL": gradeclip.shapes_model(),
              "PROMPTS": ["a red circle", "a blue square"], "SCALE": "model",
              "OUT_DIR": str(workdir / "outputs" / "00_explorer")}
    book.cells.insert(index + 1, nbformat.v4.new_code_cell("".join(f"{k} = {v!r}\n" for k, v in values.items())))
    path = workdir / "00_explorer.ipynb"
    nbformat.write(book, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(port: int, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"voila exited with status {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"voila did not listen on port {port} within {timeout:.0f} s")


def scores(page) -> list:
    """The score table as shown: [(prompt, cosine, probability), ...]."""
    rows = page.locator("table.gc-scores tr:has(td)")
    return [(rows.nth(i).locator(".gc-prompt").inner_text(), float(rows.nth(i).locator(".gc-cos").inner_text()),
             float(rows.nth(i).locator(".gc-prob").inner_text())) for i in range(rows.count())]


def status(page) -> str:
    return page.locator(".gc-status").inner_text()


def wait_status(page, text: str, timeout: float = 120) -> str:
    """Wait until the explorer's status line contains ``text``; fail on a shown error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = status(page)
        if text in line:
            return line
        if "Error" in line:
            raise AssertionError(f"explorer shows an error: {line}")
        time.sleep(0.25)
    raise TimeoutError(f"status never showed {text!r}; last: {status(page)!r}")


def drive(url: str, out: Path, workdir: Path, docs: Optional[Path] = None) -> list:
    """Run the checks in Chromium; returns the screenshots written."""
    from playwright.sync_api import sync_playwright

    shots = []

    def shot(page, name):
        path = out / f"{len(shots) + 1:02d}_{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, timeout=180_000)
            page.wait_for_selector("table.gc-scores", timeout=180_000)
            wait_status(page, "frame 0 ·")
            image = page.locator("img.gc-view")
            first_image, first_scores = image.screenshot(), scores(page)
            assert [s[0] for s in first_scores] == ["a red circle", "a blue square"], first_scores
            shot(page, "loaded")

            box = page.locator(".gc-prompts textarea")
            box.click()
            box.press("End")
            box.press("Control+End")
            box.type("\na yellow triangle")
            page.locator(".gc-status").click()  # leaving the box sends the text (continuous_update=False)
            page.wait_for_function("document.querySelectorAll('table.gc-scores tr').length === 4", timeout=120_000)
            wait_status(page, "frame 0 ·")
            typed_scores = scores(page)
            assert [s[0] for s in typed_scores] == ["a red circle", "a blue square", "a yellow triangle"]
            typed_image = image.screenshot()
            assert typed_image != first_image, "the image did not change after typing a prompt"
            shot(page, "prompt_typed")

            handle = page.locator(".gc-frame .noUi-handle, .gc-frame .ui-slider-handle").first
            track = page.locator(".gc-frame .noUi-target, .gc-frame .ui-slider").first
            start, end = handle.bounding_box(), track.bounding_box()
            page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
            page.mouse.down()
            page.mouse.move(end["x"] + 0.5 * end["width"], start["y"] + start["height"] / 2, steps=8)
            page.mouse.up()
            page.wait_for_function("!document.querySelector('.gc-status').innerText.includes('frame 0 ·')",
                                   timeout=120_000)
            line = wait_status(page, " · Grad-ECLIP · ")  # set once the new image and scores are shown
            frame = int(line.split("frame ")[1].split(" ")[0])
            assert frame > 0, line
            moved_image, moved_scores = image.screenshot(), scores(page)
            assert moved_image != typed_image, "the image did not change after moving the slider"
            assert [s[1:] for s in moved_scores] != [s[1:] for s in typed_scores], "the scores did not change"
            shot(page, f"slider_frame{frame}")
            if docs:
                page.locator(".gc-explorer").screenshot(path=str(docs))

            page.locator("button.gc-export").click()
            page.wait_for_selector("text=exported:", timeout=120_000)
            written = sorted(p.name for p in (workdir / "outputs" / "00_explorer").glob("*"))
            assert len(written) == 4 and any(n.endswith(".pdf") for n in written), written
            shot(page, "exported")
            print(f"ok: frame 0 -> {frame}; scores {first_scores} -> {moved_scores}; exported {written}")
        finally:
            browser.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/browser", help="folder for the screenshots")
    parser.add_argument("--docs", default=None, help="also save the explorer widget, after the slider move, here")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the server")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradeclip_browser_") as tmp:
        workdir = Path(tmp)
        notebook = injected_notebook(workdir)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               "MPLBACKEND": "Agg"}
        log = open(workdir / "voila.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
                                   "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
                                  cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_server(port, server, args.timeout)
            docs = Path(args.docs).resolve() if args.docs else None
            shots = drive(f"http://127.0.0.1:{port}/", out, workdir, docs)
        except Exception:
            log.flush()
            print((workdir / "voila.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            # the server and the kernel it started are one process group, ours: stop it and wait
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
            log.close()
    print("screenshots:", ", ".join(str(s) for s in shots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
