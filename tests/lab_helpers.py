"""JupyterLab 4 in headless Chromium for tests/test_jupyterlab.py.

``JupyterLab`` runs ``jupyter lab`` as a subprocess on a free loopback port, with a token, its own
JUPYTER_* dirs and the ipywidgets lab extension (a prebuilt extension in the venv's
``share/jupyter/labextensions``, found through the default data path). ``Notebook`` is one
notebook open in a Playwright page, with its cells written beforehand and run by name.

The browser is Debian's ``chromium`` package through ``executable_path``: Playwright's own
browser download is never used (``.ci/run`` installs the package when it is missing).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from playwright.sync_api import Locator, Page, expect

ROOT = Path(__file__).resolve().parent.parent
# Kept after the run (gitignored): one screenshot per test and kernel, plus the server logs.
ARTIFACTS = ROOT / "test-artifacts" / "jupyterlab"

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
]

# Lab settings for a test: no news toast or update check, every cell in the DOM (no windowing),
# and no "build recommended" dialog (page_config).
SETTING_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}
PAGE_CONFIG = {"buildCheck": False, "buildAvailable": False}


def find_chromium() -> str:
    """Debian's chromium; a clear failure (not a skip) when it is missing."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        "chromium is not installed: .ci/run installs it "
        "(apt-get install chromium fonts-dejavu-core)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (kernels run in their own sessions but are still children)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def reap(procs: Iterable[psutil.Process], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL, whichever of ``procs`` are still running."""
    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, left = psutil.wait_procs(alive, timeout=timeout)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)


def install_remote_kernelspec(prefix: Path, env: dict[str, str]) -> None:
    """The project's own installer, as a user would run it (into a private prefix)."""
    subprocess.run(
        [sys.executable, "-m", "remote_kernel", "install", "--prefix", str(prefix),
         "--name", "remote-python", "--display-name", "Python (remote)"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip


@dataclass
class JupyterLab:
    """A ``jupyter lab`` subprocess; ``stop()`` ends it and every kernel it started."""

    work: Path
    env: dict[str, str]
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def root_dir(self) -> Path:
        return self.work / "notebooks"

    @property
    def log_path(self) -> Path:
        return self.work / "jupyterlab.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        labconfig = Path(self.env["JUPYTER_CONFIG_DIR"]) / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "default_setting_overrides.json").write_text(json.dumps(SETTING_OVERRIDES))
        (labconfig / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
        for _ in range(3):  # another process may take the free port before jupyter lab binds it
            if self._start_once(timeout):
                return
        raise RuntimeError(f"jupyter lab found no free port:\n{self.log()}")

    def _start_once(self, timeout: float) -> bool:
        self.port = free_port()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                 "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                 "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                 "--ServerApp.password=", f"--ServerApp.root_dir={self.root_dir}",
                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest reaches us only; we stop it in order
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if f"port {self.port} is not available" in self.log():
                    return False
                raise RuntimeError(f"jupyter lab exited:\n{self.log()}")
            try:
                self.api("GET", "/api/status")
                return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(
            self.base_url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_sessions(self) -> None:
        """Shut every notebook session's kernel down the way the UI's "Shut Down Kernel" does."""
        with contextlib.suppress(OSError, urllib.error.URLError):
            for session in self.api("GET", "/api/sessions"):
                with contextlib.suppress(OSError, urllib.error.URLError):
                    self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self.shutdown_sessions()
            children = descendants(proc.pid)
            proc.send_signal(signal.SIGTERM)  # jupyter_server shuts its kernels down on SIGTERM
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            reap(children)  # whatever kernel outlived it

    def write_notebook(
        self, name: str, kernel: str, display_name: str, cells: Sequence[str]
    ) -> str:
        nb = {
            "cells": [
                {"cell_type": "code", "source": src, "metadata": {}, "outputs": [],
                 "execution_count": None, "id": f"cell-{i}"}
                for i, src in enumerate(cells)
            ],
            "metadata": {
                "kernelspec": {"name": kernel, "display_name": display_name, "language": "python"}
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }  # fmt: skip
        path = self.root_dir / f"{name}.ipynb"
        path.write_text(json.dumps(nb, indent=1))
        return path.name


# Records every kernel status the visible notebook's toolbar shows, in window.__rkStatuses.
_RECORD_STATUS_JS = """() => {
  const root = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const seen = (window.__rkStatuses = []);
  const record = () => {
    const el = root.querySelector('.jp-Notebook-ExecutionIndicator');
    const status = el && el.getAttribute('data-status');
    if (status && seen[seen.length - 1] !== status) seen.push(status);
  };
  record();
  new MutationObserver(record).observe(root, {attributes: true, childList: true, subtree: true});
}"""


class Notebook:
    """One notebook open in its own page; cells are addressed by the keys of ``cells``."""

    def __init__(self, page: Page, keys: Sequence[str]) -> None:
        self.page = page
        self.keys = list(keys)
        self.last: str | None = None  # the cell run last (screenshots scroll to it)

    def cell(self, key: str) -> Locator:
        cells = self.page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-CodeCell")
        return cells.nth(self.keys.index(key))

    def output(self, key: str) -> Locator:
        return self.cell(key).locator(".jp-OutputArea")

    def run(self, key: str) -> Locator:
        """Put the cursor in the cell's editor, press Shift+Enter; returns the output area."""
        self.last = key
        cell = self.cell(key)
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")
        return self.output(key)

    def wait_idle(self, timeout: float = 60_000) -> None:
        """Wait until the toolbar's kernel status says idle."""
        status = self.page.locator(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator")
        expect(status).to_have_attribute("data-status", "idle", timeout=timeout)

    def restart_kernel(self, timeout: float = 60_000) -> None:
        """Kernel menu, "Restart Kernel…", accept the dialog; return once the new kernel is idle.

        The toolbar's status is recorded from before the click, so a restart quicker than a
        poll is still seen going through a state other than idle and busy.
        """
        self.page.evaluate(_RECORD_STATUS_JS)
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
        self.page.locator(".lm-Menu-item[data-command='kernelmenu:restart']").click()
        dialog = self.page.locator(".jp-Dialog")
        dialog.locator("button.jp-mod-accept").click()
        expect(dialog).to_have_count(0)
        self.page.wait_for_function(
            "() => window.__rkStatuses.some(s => s !== 'idle' && s !== 'busy')"
            " && window.__rkStatuses.at(-1) === 'idle'",
            timeout=timeout,
        )

    def screenshot(self, path: Path, key: str | None = None) -> None:
        if key is not None:
            with contextlib.suppress(Exception):
                self.cell(key).scroll_into_view_if_needed(timeout=2_000)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
