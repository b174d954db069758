"""The proxy in a real frontend: JupyterLab 4 in headless Chromium, next to a local kernel.

Each test runs twice, with the "Python (remote)" kernel (the proxy, against a real
``remote-kernel serve`` on loopback) and with the local ``python3`` kernel, with the same
assertions. One JupyterLab, one browser, and one notebook page per kernel serve the whole module;
each test runs its own cells of that notebook. A screenshot per test and kernel, and the logs of
JupyterLab and the server, are kept in test-artifacts/jupyterlab/ (listed at the end of the run).

The browser is Debian's ``chromium`` through Playwright's ``executable_path`` (``.ci/run``
installs it); ``playwright install`` is never needed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from .conftest import ServerProcess, start_server
from .lab_helpers import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    JupyterLab,
    Notebook,
    descendants,
    find_chromium,
    install_remote_kernelspec,
    reap,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

KERNELS = {
    "local": ("python3", "Python 3 (ipykernel)"),
    "remote": ("remote-python", "Python (remote)"),
}

BOTH = pytest.mark.parametrize(
    "notebook",
    [pytest.param("local", id="local"), pytest.param("remote", id="remote")],
    indirect=True,
    scope="module",
)
# The cells of each test notebook, by name; a test runs its own cells only.
CELLS = {
    "slider": (
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=0, min=0, max=10, description='n')\n"
        "slider"
    ),
    "slider_value": "print('slider value:', slider.value)",
    "slider_set": "slider.value = 7",
    "button": (
        "clicks = []\n"
        "out = widgets.Output()\n"
        "button = widgets.Button(description='Click me')\n"
        "def on_click(b):\n"
        "    clicks.append(b)\n"
        "    with out:\n"
        "        print('clicked', len(clicks))\n"
        "button.on_click(on_click)\n"
        "display(button, out)"
    ),
    "tqdm": (
        "import time\nfrom tqdm.auto import tqdm\nfor i in tqdm(range(40)):\n    time.sleep(0.01)"
    ),
    "input": "name = input('Your name: ')\nprint(f'hello {name}, from the kernel')",
    "interrupt": (
        "import time\n"
        "for i in range(3):\n"
        "    print('tick', i, flush=True)\n"
        "    time.sleep(0.2)\n"
        "time.sleep(60)\n"
        "print('not interrupted')"
    ),
    "rich": (
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>Rich</b> <i>HTML</i>'))\n"
        "h = display('step 1', display_id=True)\n"
        "h.update('step 2 (updated in place)')\n"
        "6 * 7"
    ),
    "error": "1 / 0",
    "before_restart": "state = 'set before the restart'\nprint(state)",
    "after_restart": "print(state)",
}

WIDGET_TIMEOUT = 10_000  # ms: a local kernel renders a widget in well under a second
RUN_TIMEOUT = 30_000


@dataclass
class Lab:
    """What the module shares: the server, JupyterLab and the browser."""

    server: ServerProcess
    jupyterlab: JupyterLab
    browser: Browser
    screenshots: list[Path]


class _ScreenshotReport:
    """Lists the screenshots at the end of the pytest run."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.paths:
            terminalreporter.write_sep("-", "JupyterLab screenshots")
            for path in self.paths:
                terminalreporter.write_line(str(path))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Lab]:
    chromium = find_chromium()
    work = tmp_path_factory.mktemp("jupyterlab")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.log")]:
        old.unlink()
    report = request.config.pluginmanager.get_plugin("jupyterlab-screenshots")
    if report is None:
        report = _ScreenshotReport([])
        request.config.pluginmanager.register(report, "jupyterlab-screenshots")
    screenshots: list[Path] = report.paths

    server = start_server(work / "server")
    jupyterlab: JupyterLab | None = None
    try:
        env = dict(
            os.environ,
            **server.env,
            # our prefix only; sys.prefix/share/jupyter (python3 and the widgets extension)
            # stays on the default data path
            JUPYTER_PATH=str(work / "pfx" / "share" / "jupyter"),
            JUPYTER_CONFIG_DIR=str(work / "config"),
            JUPYTER_DATA_DIR=str(work / "data"),
            JUPYTER_RUNTIME_DIR=str(work / "runtime"),
            XDG_CONFIG_HOME=str(work / "xdg"),  # where the installer keeps the keypair
            IPYTHONDIR=str(work / "ipython"),
        )
        install_remote_kernelspec(work / "pfx", env)
        jupyterlab = JupyterLab(work / "lab", env)
        jupyterlab.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield Lab(server, jupyterlab, browser, screenshots)
            finally:
                browser.close()
    finally:
        server_children = descendants(server.proc.pid)
        if jupyterlab is not None:
            jupyterlab.stop()
            if jupyterlab.log_path.exists():
                shutil.copy(jupyterlab.log_path, ARTIFACTS / "jupyterlab.log")
        server.stop()
        reap(server_children)  # session kernels that outlived the server
        shutil.copy(server.log_path, ARTIFACTS / "server.log")


@pytest.fixture(scope="module")
def notebook(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Notebook]:
    """A notebook of CELLS open with the kernel ``request.param`` ("local" or "remote")."""
    kernel, display_name = KERNELS[request.param]
    jl = lab.jupyterlab
    name = jl.write_notebook(f"{request.param}-kernel", kernel, display_name, list(CELLS.values()))
    page = lab.browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(
            f"{jl.base_url}/lab/tree/{name}?reset&token={jl.token}", wait_until="domcontentloaded"
        )
        kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName").first
        expect(kernel_name).to_contain_text(display_name, timeout=60_000)
        nb = Notebook(page, list(CELLS))
        nb.wait_idle()
        yield nb
    finally:
        page.close()
        jl.shutdown_sessions()


@pytest.fixture(autouse=True)
def _screenshot(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    """After each test (passed or not), a screenshot of its notebook at the last cell it ran."""
    yield
    nb = request.node.funcargs.get("notebook")
    if isinstance(nb, Notebook):
        path = ARTIFACTS / (re.sub(r"[^\w.-]+", "-", request.node.name).strip("-") + ".png")
        try:
            nb.screenshot(path, nb.last)
        except Exception as exc:  # a screenshot must not hide the test's own result
            print(f"no screenshot for {request.node.name}: {exc}", file=sys.stderr)
        else:
            lab.screenshots.append(path)
            print(f"screenshot: {path}")


@BOTH
def test_slider_renders_and_syncs_both_ways(notebook: Notebook) -> None:
    out = notebook.run("slider")
    handle = out.locator(".widget-slider .noUi-handle")
    expect(handle).to_be_visible(timeout=WIDGET_TIMEOUT)
    readout = out.locator(".widget-slider .widget-readout")
    expect(readout).to_have_text("0")

    handle.focus()
    for _ in range(3):
        notebook.page.keyboard.press("ArrowRight")
    expect(readout).to_have_text("3")
    expect(notebook.run("slider_value")).to_contain_text("slider value: 3", timeout=RUN_TIMEOUT)

    notebook.run("slider_set")  # kernel -> frontend
    expect(readout).to_have_text("7", timeout=RUN_TIMEOUT)
    expect(handle).to_have_attribute("aria-valuenow", re.compile(r"^7(\.0)?$"))


@BOTH
def test_button_callback_prints_into_output_widget(notebook: Notebook) -> None:
    out = notebook.run("button")
    button = out.locator("button.widget-button", has_text="Click me")
    expect(button).to_be_visible(timeout=WIDGET_TIMEOUT)
    captured = out.locator(".widget-output")
    button.click()
    expect(captured).to_contain_text("clicked 1", timeout=RUN_TIMEOUT)
    button.click()
    expect(captured).to_contain_text("clicked 2", timeout=RUN_TIMEOUT)


@BOTH
def test_tqdm_auto_ends_at_100_percent(notebook: Notebook) -> None:
    out = notebook.run("tqdm")
    bar = out.locator(".widget-hbox", has=notebook.page.locator(".widget-hprogress"))
    expect(bar).to_be_visible(timeout=WIDGET_TIMEOUT)
    expect(bar).to_contain_text("100%", timeout=RUN_TIMEOUT)
    expect(bar).to_contain_text("40/40")
    expect(bar.locator(".progress-bar")).to_have_attribute("style", re.compile(r"width: 100%"))


@BOTH
def test_input_box(notebook: Notebook) -> None:
    out = notebook.run("input")
    box = notebook.page.locator(".jp-NotebookPanel:visible .jp-Stdin-input")
    expect(box).to_be_visible(timeout=RUN_TIMEOUT)
    expect(out.locator(".jp-Stdin-prompt")).to_contain_text("Your name:")
    box.fill("Ada")
    box.press("Enter")
    expect(out).to_contain_text("hello Ada, from the kernel", timeout=RUN_TIMEOUT)


@BOTH
def test_interrupt_button(notebook: Notebook) -> None:
    out = notebook.run("interrupt")
    expect(out).to_contain_text("tick 2", timeout=RUN_TIMEOUT)  # streamed while the cell runs
    notebook.page.locator(
        ".jp-NotebookPanel:visible jp-button[data-command='notebook:interrupt-kernel']"
    ).click()
    expect(out).to_contain_text("KeyboardInterrupt", timeout=RUN_TIMEOUT)
    stdout = out.locator("[data-mime-type='application/vnd.jupyter.stdout']")
    expect(stdout.first).to_contain_text("tick 0")
    expect(stdout.filter(has_text="not interrupted")).to_have_count(0)
    notebook.wait_idle(RUN_TIMEOUT)


@BOTH
def test_rich_output_and_error(notebook: Notebook) -> None:
    out = notebook.run("rich")
    expect(out.locator("b")).to_have_text("Rich", timeout=RUN_TIMEOUT)
    expect(out).to_contain_text("step 2 (updated in place)")
    expect(out).not_to_contain_text("step 1")
    result = out.locator(".jp-OutputArea-executeResult")
    expect(result).to_contain_text("42")
    expect(result.locator(".jp-OutputPrompt")).to_have_text(re.compile(r"\[\d+\]:"))
    expect(notebook.run("error")).to_contain_text("ZeroDivisionError", timeout=RUN_TIMEOUT)


@BOTH
def test_restart_from_kernel_menu(notebook: Notebook) -> None:
    expect(notebook.run("before_restart")).to_contain_text(
        "set before the restart", timeout=RUN_TIMEOUT
    )
    notebook.wait_idle(RUN_TIMEOUT)
    notebook.restart_kernel()
    out = notebook.run("after_restart")
    expect(out).to_contain_text("NameError", timeout=RUN_TIMEOUT)
    expect(out).not_to_contain_text("set before the restart")
