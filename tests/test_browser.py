"""JupyterLab in a real browser: notebook 01's sliders move the depth map, the appearance render and the
generated face.

A unit test of ``FaceExplorer`` cannot see the kernel comm, the image widgets or the layout; this test uses the real
client. It starts JupyterLab on a free localhost port with a token, opens a copy of notebook 01 in headless Chromium
(Debian's ``chromium``, installed by ``make browser``; Playwright's own browser download is not reachable here) and
runs it through the JupyterLab UI. The copy is notebook 01 as it is on disk, cut after its explorer cell, with one
cell after the parameters cell that sets the project's tiny parameters (notebooks/params/tiny.yaml, output folders
moved under outputs/browser/) and ``INTERACTIVE = True``. If notebook 01's explorer has no appearance panel, the test
adds one cell through JupyterLab: ``FaceExplorer.with_pretrained(..., n_appearance=8)`` (depth, the appearance
model's render, the shipped generator's face) when the package ships a generator, else
``FaceExplorer.with_appearance`` (depth and the appearance render; the appearance model always ships).

The test drags sliders with the mouse and ticks the "appearance from shape" box, comparing element screenshots after
each: a shape slider must change every image; an appearance slider (the appearance model's, found by its DOM class)
and the switch the appearance render only (and the face too when the shipped generator reads the appearance model's
buffers, as the default one does); the generator's latent slider ("z dir 0"), when there is a generator, its face
only; and no cell may end in an error. Screenshots and the server log go to outputs/browser/. The server and its
kernels are shut down whatever happens (REST shutdown, then the process group and every child process).
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "outputs" / "browser"
NOTEBOOK = ROOT / "notebooks" / "01_data_generation.ipynb"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling out, and the closed network refuses it.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Shape and latent sliders are found by their description (FaceExplorer: "c0".."c14" for shape, GeneratorPanel:
# "z dir 0"...), the appearance model's sliders and switch by their DOM classes (AppearancePanel.controls).
SHAPE_SLIDER = re.compile(r"^\s*c0\s*$")
LATENT_SLIDER = re.compile(r"^\s*z dir\s*0\s*$", re.I)
APPEARANCE_SLIDER = ".appearance-slider"
APPEARANCE_SWITCH = ".appearance-from-shape input"
JS_APP = "window.jupyterapp"  # JupyterLab exposes its application object with --expose-app-in-browser
JS_KERNEL = f"{JS_APP}?.shell?.currentWidget?.sessionContext?.session?.kernel"
# Settings: render every cell (no virtual scrolling, so the explorer stays in the DOM) and no news pop-up.
VIEWPORT = {"width": 1600, "height": 2000}  # tall enough for the explorer's images (the slider column sets their height)
MEASURED = {}  # filled by the slider test, read by the layout test below
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_generator() -> bool:
    """Whether the package ships a generator that ``FaceExplorer.with_pretrained`` can show."""
    try:
        from frankenstein_utils.pretrained.shipped import load_pretrained

        load_pretrained()
        return True
    except (ImportError, FileNotFoundError, ValueError):
        return False


def reads_appearance() -> bool:
    """Whether the default shipped generator reads the appearance model's buffers (its face follows the appearance
    sliders as the appearance render does)."""
    from frankenstein_utils.pretrained.shipped import load_pretrained

    return bool(load_pretrained().cfg.buffers)


def code_cell(source: str, cell_id: str) -> dict:
    return {"cell_type": "code", "id": cell_id, "metadata": {}, "execution_count": None, "outputs": [],
            "source": source}


def notebook_copy(dest: Path) -> Path:
    """Notebook 01 cut after its explorer cell, with the tiny parameters injected after its parameters cell."""
    nb = json.loads(NOTEBOOK.read_text())
    cells = nb["cells"]
    params = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    explorer = [i for i, c in enumerate(cells)
                if c["cell_type"] == "code" and re.search(r"FaceExplorer(\.\w+)?\(", "".join(c["source"]))]
    assert params and explorer, f"{NOTEBOOK}: no parameters cell or no FaceExplorer cell"
    tiny = yaml.safe_load((ROOT / "notebooks" / "params" / "tiny.yaml").read_text())
    values = {**(tiny.get("common") or {}), **(tiny.get(NOTEBOOK.stem) or {})}
    values = {k: (str(dest / "out" / k.lower()) if k.endswith("_DIR") else v) for k, v in values.items()}
    values["INTERACTIVE"] = True
    inject = code_cell("# tests/test_browser.py: tiny parameters\n" +
                       "\n".join(f"{k} = {v!r}" for k, v in values.items()), "browser-test-parameters")
    cells = cells[:params[0] + 1] + [inject] + cells[params[0] + 1:explorer[0] + 1]
    for c in cells:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    nb["cells"] = cells
    path = dest / "01_browser_test.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path


# Typed into a new cell through JupyterLab when notebook 01's explorer has no appearance panel: with the shipped
# generator's face when the package has one.
PRETRAINED_CELL = """# tests/test_browser.py: notebook 01's explorer has no appearance panel; depth, appearance, generator's face
face_explorer = FaceExplorer.with_pretrained(model, n_components=K, n_appearance=8)
face_explorer.widget"""
APPEARANCE_CELL = """# tests/test_browser.py: notebook 01's explorer has no appearance panel; depth and appearance render
face_explorer = FaceExplorer.with_appearance(model, n_components=K)
face_explorer.widget"""


def stop_server(proc: subprocess.Popen, base: str, token: str) -> None:
    """REST shutdown (kernels first), then SIGKILL to the process group and to every child still running."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)  # the kernels, started in their own sessions
    except psutil.Error:
        children = []
    try:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"), timeout=10)
        proc.wait(timeout=20)
    except Exception:
        pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def lab():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: run `make browser` (apt-get install chromium), or set CHROMIUM=<path>")
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT / "lab"
    work.mkdir(parents=True)
    nb = notebook_copy(work)
    jupyter = {k: OUT / "jupyter" / k for k in ("config", "data", "runtime", "settings", "workspaces")}
    for name, settings in LAB_SETTINGS.items():
        f = jupyter["settings"] / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(settings))
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(jupyter["config"]),
               JUPYTER_RUNTIME_DIR=str(jupyter["runtime"]), JUPYTERLAB_SETTINGS_DIR=str(jupyter["settings"]),
               JUPYTERLAB_WORKSPACES_DIR=str(jupyter["workspaces"]))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--expose-app-in-browser",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(OUT / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {OUT / 'server.log'}") from None
                time.sleep(0.3)
        yield {"url": f"{base}/lab/tree/{nb.name}?token={token}", "notebook": nb}
    finally:
        stop_server(proc, base, token)
        log.close()


def png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def changed_fraction(a: bytes, b: bytes) -> float:
    """Share of pixels that differ by more than 2 grey levels in some channel (same-size screenshots)."""
    x, y = png_array(a), png_array(b)
    assert x.shape == y.shape, f"screenshot sizes differ: {x.shape} vs {y.shape}"
    return float((np.abs(x - y).max(-1) > 2).mean())


def wait_idle(page, timeout_ms=240_000):
    """Kernel idle and no cell waiting to run ("[*]")."""
    page.wait_for_function(f"""() => {{ const k = {JS_KERNEL};
        return k && k.status === 'idle' &&
               [...document.querySelectorAll('.jp-InputPrompt')].every(e => !e.textContent.includes('*')); }}""",
                           timeout=timeout_ms, polling=250)


def code_cells(page) -> list[dict]:
    return [c for c in page.evaluate(f"""() => {{ const m = {JS_APP}.shell.currentWidget.content.model;
        return Array.from({{length: m.cells.length}}, (_, i) => m.cells.get(i).toJSON()); }}""")
            if c["cell_type"] == "code"]


def error_outputs(page) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for c in code_cells(page) for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def find_explorer(page):
    """The last output area with a shape slider, and its image widgets."""
    shape = page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=SHAPE_SLIDER))
    explorer = page.locator(".jp-OutputArea-output").filter(has=shape).last
    return explorer, explorer.locator(".widget-image")


def run_new_cell(page, code: str):
    """Add a code cell at the end of the open notebook and run it, as the Insert and Run commands do."""
    page.evaluate(f"""async (code) => {{
        const app = {JS_APP}, nb = app.shell.currentWidget.content;
        nb.activeCellIndex = nb.widgets.length - 1;
        await app.commands.execute('notebook:insert-cell-below');
        nb.activeCell.model.sharedModel.setSource(code);
        await app.commands.execute('notebook:run-cell');
    }}""", code)
    page.wait_for_timeout(500)
    wait_idle(page)


def drag_slider(page, slider, dx: int) -> float:
    """Drag the slider's handle by ``dx`` pixels with the mouse, as a user does; returns its new value."""
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=6)
    page.mouse.up()
    return float(handle.get_attribute("aria-valuenow"))


def shots(images) -> list[bytes]:
    """Element screenshots of the images, each centred in the notebook first and checked to be wholly visible (a
    toolbar or a scroll offset in the picture would count as a change)."""
    out = []
    for i in range(images.count()):
        img = images.nth(i)
        img.evaluate("e => e.scrollIntoView({block: 'center'})")
        visible = img.evaluate("""e => { const r = e.getBoundingClientRect(), x = r.left + r.width / 2;
            return [r.top + 1, r.bottom - 1].every(y => document.elementFromPoint(x, y) === e); }""")
        assert visible, f"image {i} of the explorer is not wholly visible in the {VIEWPORT} viewport"
        out.append(img.screenshot())
    return out


def wait_images_changed(page, images, which: int, act) -> list[bytes]:
    """Do ``act()``, wait until image ``which`` got a new PNG from the kernel and the kernel is done updating, and
    return screenshots of every image."""
    old = images.nth(which).get_attribute("src")
    act()
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[images.nth(which).element_handle(), old], timeout=60_000)
    wait_idle(page, 60_000)
    page.wait_for_timeout(300)  # let the last PNG decode
    return shots(images)


def test_sliders_move_depth_and_face_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(OUT / "chromium-profile"), executable_path=CHROMIUM,
                                                   headless=True, args=CHROMIUM_ARGS,
                                                   viewport=VIEWPORT)
        page_errors = []
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(lab["url"])
            page.wait_for_function(f"() => !!{JS_KERNEL}", timeout=120_000, polling=250)
            page.evaluate(f"{JS_APP}.commands.execute('notebook:run-all-cells')")
            page.wait_for_function("() => [...document.querySelectorAll('.jp-InputPrompt')]"
                                   ".some(e => /\\d/.test(e.textContent))", timeout=120_000)
            wait_idle(page)
            page.screenshot(path=str(OUT / "notebook.png"))

            # Every code cell ran and none ended in an error.
            assert not error_outputs(page), f"error output in the notebook: {error_outputs(page)}"
            assert all(c.get("execution_count") for c in code_cells(page)), "some code cells did not run"
            assert page.get_by_text("Error displaying widget").count() == 0

            # The explorer: the last output holding a shape slider; its images are depth, appearance, then face.
            explorer, images = find_explorer(page)
            if explorer.locator(APPEARANCE_SLIDER).count() == 0:  # notebook 01 has no appearance panel: add one
                run_new_cell(page, PRETRAINED_CELL if shipped_generator() else APPEARANCE_CELL)
                assert not error_outputs(page), f"error output in the added cell: {error_outputs(page)}"
                explorer, images = find_explorer(page)
            n = images.count()
            kinds = ["depth", "appearance", "face"][:n]
            assert n >= 2, "the explorer shows no appearance render beside the depth map"
            def slider(pattern):
                return explorer.locator(".widget-slider").filter(
                    has=page.locator(".widget-label", has_text=pattern)).first

            appearance = explorer.locator(APPEARANCE_SLIDER).first
            assert appearance.count() == 1, "the explorer has no appearance slider"
            images.nth(0).scroll_into_view_if_needed()
            before = shots(images)
            moved = {}

            def drag(name, s, dx):
                value = drag_slider(page, s, dx)
                assert value > 0.5, f"dragging the {name} slider moved it to {value} only"

            steps = [("shape", 0, lambda: drag("shape", slider(SHAPE_SLIDER), 60)),
                     ("appearance", 1, lambda: drag("appearance", appearance, 80)),
                     ("from_shape", 1, lambda: explorer.locator(APPEARANCE_SWITCH).first.check())]
            if n > 2:
                steps.append(("latent", 2, lambda: drag("latent", slider(LATENT_SLIDER), 80)))
            shown = before
            for name, which, act in steps:
                after = wait_images_changed(page, images, which, act)
                moved[name] = dict(zip(kinds, (changed_fraction(a, b) for a, b in zip(shown, after))))
                for kind, data in zip(kinds, after):
                    (OUT / f"{kind}_after_{name}.png").write_bytes(data)
                shown = after
            for kind, data in zip(kinds, before):
                (OUT / f"{kind}_before.png").write_bytes(data)
            explorer.screenshot(path=str(OUT / "explorer.png"))
            # displayed height / width over the PNG's own (1 = shown undistorted)
            stretch = [images.nth(i).evaluate("e => (e.clientHeight / e.clientWidth) / "
                                              "(e.naturalHeight / e.naturalWidth)") for i in range(n)]
            MEASURED["stretch"] = stretch
            (OUT / "checks.json").write_text(json.dumps({
                "changed_fraction": moved, "displayed_aspect_over_png_aspect": dict(zip(kinds, stretch))}, indent=1))
            assert all(x > 0.005 for x in moved["shape"].values()), f"shape slider: changed fractions {moved['shape']}"
            # a generator that reads the appearance model's buffers follows the appearance controls too
            reads = reads_appearance() and n > 2
            for name, which in (("appearance", "appearance"), ("from_shape", "appearance"), ("latent", "face")):
                if name in moved:  # only its own images change
                    own = {which, "face"} if reads and name != "latent" else {which}
                    for kind in own:
                        assert moved[name][kind] > 0.005, f"{name}: the {kind} image did not change ({moved[name]})"
                    assert all(v == 0 for k, v in moved[name].items() if k not in own), f"{name}: {moved[name]}"
            assert not error_outputs(page), f"error output after moving the sliders: {error_outputs(page)}"
            assert not page_errors, f"JavaScript errors in JupyterLab: {page_errors}"
        finally:
            ctx.close()


def test_explorer_images_are_not_distorted():
    """Measured in the slider test's browser session: each image shown with its PNG's aspect ratio (within 2 %)."""
    assert "stretch" in MEASURED, "the slider test did not get as far as measuring the images"
    assert all(abs(r - 1) < 0.02 for r in MEASURED["stretch"]), f"height/width distorted by {MEASURED['stretch']}"
