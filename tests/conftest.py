"""Shared fixtures: a real ``remote-kernel serve`` on loopback, its keypair, isolated Jupyter dirs.

Every server started here is a real subprocess (``python -m remote_kernel serve``) and is stopped
(SIGTERM, then SIGKILL) when its fixture ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from remote_kernel.proxy.forkserver import stop_servers
from remote_kernel.server.app import make_app
from remote_kernel.server.keystore import KeyStore
from remote_kernel.server.sessions import SessionManager
from remote_kernel.server.settings import ServerSettings

from .kernel_helpers import TEST_TMP_ENV
from .rawapi import RawAPI

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _isolated_jupyter_dirs() -> Iterator[None]:
    """Keep tests away from the user's Jupyter config, runtime and IPython profile."""
    base = Path(tempfile.mkdtemp(prefix="rk-jupyter-"))
    saved = dict(os.environ)
    os.environ[TEST_TMP_ENV] = str(base)  # kernelspecs the tests install go here too
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    os.environ["JUPYTER_CONFIG_DIR"] = str(base / "config")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(base / "runtime")
    os.environ["IPYTHONDIR"] = str(base / "ipython")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    # Servers the tests start keep no warm pool (two spare kernels per server would double the
    # suite's kernel starts on a 2-core machine); tests of the pool turn it on themselves.
    os.environ["REMOTE_KERNEL_POOL_SIZE"] = "0"
    # Proxy kernels fork from a fork server of this session's own (a short path: it holds a
    # Unix socket), stopped at the end.
    forkservers = Path(tempfile.mkdtemp(prefix="rkfs-"))
    os.environ["REMOTE_KERNEL_FORKSERVER_DIR"] = str(forkservers)
    os.environ.pop("BACKEND_ENDPOINT", None)
    os.environ.pop("BACKEND_ACCESS_KEY", None)
    os.environ.pop("BACKEND_SECRET_KEY", None)
    yield
    stop_servers(forkservers)
    shutil.rmtree(forkservers, ignore_errors=True)
    os.environ.clear()
    os.environ.update(saved)
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class ServerProcess:
    """A running ``remote-kernel serve`` subprocess and the keypair to talk to it."""

    endpoint: str
    access_key: str
    secret_key: str
    state_dir: Path
    proc: subprocess.Popen[str]
    log_path: Path
    extra_keys: list[tuple[str, str]] = field(default_factory=list)
    sandbox: str = "none"  # what the banner says: "bubblewrap" or "none"

    @property
    def env(self) -> dict[str, str]:
        """SDK-style environment for a client of this server."""
        return {
            "BACKEND_ENDPOINT": self.endpoint,
            "BACKEND_ACCESS_KEY": self.access_key,
            "BACKEND_SECRET_KEY": self.secret_key,
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def create_keypair(state_dir: Path) -> tuple[str, str]:
    """Run ``remote-kernel keys create`` and return (access, secret)."""
    out = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "keys", "create", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    values = dict(line.split("=", 1) for line in out.strip().splitlines())
    return values["BACKEND_ACCESS_KEY"], values["BACKEND_SECRET_KEY"]


def start_server(tmp: Path, *args: str, keys: int = 1, timeout: float = 60) -> ServerProcess:
    """Start a real server on a free loopback port; wait until it prints its endpoint."""
    state_dir = tmp / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    pairs = [create_keypair(state_dir) for _ in range(keys)]
    log_path = tmp / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel", "serve", "--ip", "127.0.0.1", "--port", "0",
         "--state-dir", str(state_dir), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    endpoint = None
    sandbox = "none"
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if match:
            endpoint = match.group(1)
            found = re.search(r"sandbox (\w+)", line)
            sandbox = found.group(1) if found else "none"
            break
    if endpoint is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not start: {log_path.read_text()}")
    access, secret = pairs[0] if pairs else ("", "")
    return ServerProcess(
        endpoint, access, secret, state_dir, proc, log_path, pairs[1:], sandbox=sandbox
    )


def restart_server(old: ServerProcess, *args: str, timeout: float = 60) -> ServerProcess:
    """Start a server again on ``old``'s state directory, port and keypairs (``old`` is gone,
    e.g. killed); wait until it listens."""
    port = old.endpoint.rsplit(":", 1)[1]
    log_path = old.log_path.with_name(f"{old.log_path.stem}-again.log")
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel", "serve", "--ip", "127.0.0.1", "--port", port,
         "--state-dir", str(old.state_dir), *args],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if old.endpoint in line:
            return ServerProcess(old.endpoint, old.access_key, old.secret_key, old.state_dir,
                                 proc, log_path, old.extra_keys, sandbox=old.sandbox)  # fmt: skip
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server did not start again: {log_path.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server with extensions on and two keypairs (``extra_keys[0]`` is the second)."""
    srv = start_server(tmp_path_factory.mktemp("server"), keys=2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pooled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server with the default warm pool (the suite's servers otherwise keep none)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REMOTE_KERNEL_POOL_SIZE")
        srv = start_server(tmp_path_factory.mktemp("pooled"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server with extensions off: it behaves like a real Backend.AI manager."""
    srv = start_server(tmp_path_factory.mktemp("base-server"), "--ServerApp.extensions=False")
    yield srv
    srv.stop()


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[RawAPI]:
    """A signed raw-HTTP client of the ``server`` fixture, with its first keypair."""
    async with RawAPI(server.endpoint, server.access_key, server.secret_key) as client:
        yield client


@pytest.fixture
async def sid(api: RawAPI) -> AsyncIterator[str]:
    """A fresh session on the ``server`` fixture, destroyed after the test."""
    session_id = await api.create(f"t-{uuid.uuid4().hex[:12]}")
    yield session_id
    await api.destroy(session_id)


@pytest.fixture
async def app_client(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """The server's aiohttp app in this process (anonymous, real kernels), on loopback through
    pytest-aiohttp: for tests that need no server subprocess."""
    manager = SessionManager(tmp_path / "state")
    app = make_app(manager, KeyStore(tmp_path / "state"), ServerSettings(auth_required=False))
    client = await aiohttp_client(app)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No pool, and an image (``slowpy``) whose kernels take two seconds to start."""
    base = tmp_path_factory.mktemp("slow-start")
    spec = base / "share" / "kernels" / "slowpy"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["/bin/sh", "-c", f"sleep 2; exec {sys.executable} -m ipykernel_launcher -f \"$0\"",
                 "{connection_file}"],
        "display_name": "Python (slow to start)", "language": "python",
    }))  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(base / "share"))
        srv = start_server(base)
    yield srv
    srv.stop()
