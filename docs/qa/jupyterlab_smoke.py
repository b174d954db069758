"""Manual QA: the remote kernel in JupyterLab 4, driven by headless Chromium (not part of CI).

Set-up (once, in a separate virtual environment; Debian's Chromium, no browser download):

    apt-get install -y chromium fonts-dejavu-core
    python3 -m venv /tmp/labvenv && /tmp/labvenv/bin/pip install jupyterlab playwright -e .
    /tmp/labvenv/bin/python docs/qa/jupyterlab_smoke.py

It starts a throwaway server, installs a "Python (remote)" kernelspec, opens a notebook in
JupyterLab and checks, in the page: the stdin box of input(), streamed output, the interrupt
button (a remote KeyboardInterrupt), rich HTML, a display updated in place, Out[n] and an error.
It writes a screenshot to ./jupyterlab_smoke.png and prints "QA passed" or "QA FAILED".
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from remote_kernel.demo import DemoServer

work = Path(tempfile.mkdtemp(prefix="labqa-"))
srv = DemoServer(work)
srv.start(60)
env = dict(
    os.environ,
    BACKEND_ENDPOINT=srv.endpoint,
    BACKEND_ACCESS_KEY=srv.access_key,
    BACKEND_SECRET_KEY=srv.secret_key,
    JUPYTER_PATH=str(work / "pfx/share/jupyter"),
    JUPYTER_CONFIG_DIR=str(work / "cfg"),
    JUPYTER_DATA_DIR=str(work / "data"),
    XDG_CONFIG_HOME=str(work / "xdg"),
)  # the throwaway keypair stays in the temp dir
subprocess.run(
    [
        sys.executable,
        "-m",
        "remote_kernel",
        "install",
        "--prefix",
        str(work / "pfx"),
        "--name",
        "remote-python",
        "--display-name",
        "Python (remote)",
    ],
    env=env,
    check=True,
)
lab = work / "lab"
lab.mkdir()
settings = Path(sys.prefix) / "share/jupyter/lab/settings"
settings.mkdir(parents=True, exist_ok=True)
(settings / "overrides.json").write_text(
    json.dumps(
        {
            "@jupyterlab/apputils-extension:notification": {
                "fetchNews": "false",
                "checkForUpdates": False,
            }
        }
    )
)
cells = [
    "name = input('Your name: ')\nprint(f'hello {name}, from the remote session')",
    "import time\nfor i in range(100):\n    print('tick', i, flush=True)\n    time.sleep(0.5)",
    "from IPython.display import HTML, display\n"
    "display(HTML('<b>Rich</b> <i>HTML</i>'))\n"
    "h = display('step 1', display_id=True)\n"
    "h.update('step 2 (updated in place)')\n"
    "6 * 7",
    "1 / 0",
]
nb = {
    "cells": [
        {"cell_type": "code", "source": c, "metadata": {}, "outputs": [], "execution_count": None}
        for c in cells
    ],
    "metadata": {
        "kernelspec": {
            "name": "remote-python",
            "display_name": "Python (remote)",
            "language": "python",
        }
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}
(lab / "demo.ipynb").write_text(json.dumps(nb))
port = "8899"
proc = subprocess.Popen(
    [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={lab}",
    ],
    env=env,
    stdout=open(work / "lab.log", "w"),  # noqa: SIM115 - lives as long as the process
    stderr=subprocess.STDOUT,
)
time.sleep(8)

ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
ok = False
try:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = b.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(
            f"http://127.0.0.1:{port}/lab/tree/demo.ipynb?reset", wait_until="domcontentloaded"
        )
        expect(
            page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName").first
        ).to_contain_text("Python (remote)", timeout=60_000)
        cellsl = page.locator(".jp-NotebookPanel:visible .jp-CodeCell")
        cellsl.nth(0).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        box = page.locator(".jp-Stdin-input")
        box.wait_for(timeout=60_000)
        box.fill("Ada")
        box.press("Enter")
        expect(cellsl.nth(0).locator(".jp-OutputArea")).to_contain_text(
            "hello Ada, from the remote session", timeout=30_000
        )
        cellsl.nth(1).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        expect(cellsl.nth(1).locator(".jp-OutputArea")).to_contain_text("tick 2", timeout=30_000)
        page.locator("jp-button[data-command='notebook:interrupt-kernel']").first.click()
        expect(cellsl.nth(1).locator(".jp-OutputArea")).to_contain_text(
            "KeyboardInterrupt", timeout=30_000
        )
        cellsl.nth(2).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        expect(cellsl.nth(2).locator(".jp-OutputArea")).to_contain_text("42", timeout=30_000)
        expect(cellsl.nth(2).locator(".jp-OutputArea")).to_contain_text(
            "step 2 (updated in place)", timeout=30_000
        )
        cellsl.nth(3).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        expect(cellsl.nth(3).locator(".jp-OutputArea")).to_contain_text(
            "ZeroDivisionError", timeout=30_000
        )
        time.sleep(1)
        page.screenshot(path="jupyterlab_smoke.png", full_page=True)
        ok = True
        b.close()
finally:
    proc.terminate()
    proc.wait(20)
    srv.stop()
print("QA", "passed" if ok else "FAILED")
