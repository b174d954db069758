"""The session asked for while the kernel process starts (remote_kernel/proxy/early.py).

Pure tests of the prediction, then real servers: a real kernel process takes the early session
and answers its very first kernel_info with the remote kernel's info at once; an early session
nobody takes (a kernel that fails to start, a mismatched prediction) is destroyed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from remote_kernel.client import negotiate_version
from remote_kernel.proxy import early
from remote_kernel.proxy.session import SessionSpec
from remote_kernel.signed_http import DEFAULT_ENDPOINT

from .conftest import ServerProcess
from .kernel_helpers import execute, install_kernelspec
from .test_kernel import _sessions, _wait

pytestmark = pytest.mark.timeout(120)

KEYS = {"BACKEND_ACCESS_KEY": "AKTEST", "BACKEND_SECRET_KEY": "secret"}


# -- the prediction (pure) -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, {"endpoint": DEFAULT_ENDPOINT, "image": "python:3", "resources": {}}),
        (["--RemoteKernel.endpoint=http://h:1/"], {}, {"endpoint": "http://h:1"}),
        ([], {"BACKEND_ENDPOINT": "http://e:2"}, {"endpoint": "http://e:2"}),
        (["--RemoteKernel.image=r:4", '--RemoteKernel.resources={"cpu": 2}'], {},
         {"image": "r:4", "resources": {"cpu": 2}}),
        ([], {"REMOTE_KERNEL_IMAGE": "julia:1", "REMOTE_KERNEL_SESSION_NAME": "mine"},
         {"image": "julia:1", "name": "mine"}),
        (["--RemoteKernel.environ={'A': 1}", "--RemoteKernel.reattach=False"], {},
         {"environ": {"A": "1"}}),
        (["--RemoteKernel.session_name=nb1", "--log-level=INFO"], {}, {"name": "nb1"}),
    ],
)  # fmt: skip
def test_the_prediction_follows_the_kernels_settings(
    argv: list[str], env: dict[str, str], expected: dict[str, Any], tmp_path: Path
) -> None:
    pred = early.predict(["-f", "conn.json", *argv], {"IPYTHONDIR": str(tmp_path), **KEYS, **env})
    assert pred is not None
    assert (pred.access_key, pred.secret_key) == ("AKTEST", "secret")
    for key, value in expected.items():
        assert getattr(pred, key) == value
    assert pred.name.startswith("rk-") or "name" in expected


@pytest.mark.parametrize(
    "argv",
    [["--profile=other"], ["--config=x.py"], ["--RemoteKernel.reattach=True"],
     ["--RemoteKernel.image", "python:3"], ["--RemoteKernel.endpoint=ftp://h"]],
)  # fmt: skip
def test_no_prediction_when_the_settings_may_differ(argv: list[str], tmp_path: Path) -> None:
    assert early.predict(["-f", "c.json", *argv], {"IPYTHONDIR": str(tmp_path), **KEYS}) is None


def test_no_prediction_when_a_config_file_configures_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"IPYTHONDIR": str(tmp_path / "ipython"), **KEYS}
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    assert early.predict([], env) is not None
    (tmp_path / "config" / "jupyter_remote_kernel_config.py").write_text(
        "c.RemoteKernel.image = 'x'"
    )
    assert early.predict([], env) is None
    (tmp_path / "config" / "jupyter_remote_kernel_config.py").unlink()
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text("c.RemoteKernel.endpoint = 'http://x:1'")
    assert early.predict([], env) is None


def test_the_early_client_agrees_with_the_async_client() -> None:
    assert early.DEFAULT_ENDPOINT == DEFAULT_ENDPOINT
    for server in ("v9.20250722", "v4.20190615", "v10.20300101", "", "garbage"):
        assert early._negotiated(server) == negotiate_version(server)
    assert early._host_port("http", "127.0.0.1", 8090) == "127.0.0.1:8090"
    assert early._host_port("https", "example.org", 443) == "example.org"
    assert early._host_port("http", "::1", 80) == "[::1]"


# -- real servers --------------------------------------------------------------------------------
def _log_lines(srv: ServerProcess, word: str) -> list[str]:
    return [line for line in srv.log_path.read_text().splitlines() if f") {word}" in line]


def _first_kernel_info(kc: Any) -> dict[str, Any]:
    msg_id = kc.kernel_info()
    while (msg := kc.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
        pass
    return dict(msg["content"])


def test_the_session_starts_while_the_kernel_process_starts(
    slow_server: ServerProcess, tmp_path: Path
) -> None:
    """A kernel process that takes 3 s to start and a session that takes 2 s: the session is
    ready when the kernel is, so the very first kernel_info (answered at once, by default) is
    already the remote kernel's, and the first cell does not wait."""
    install_kernelspec(
        "rk-slow-import", {**slow_server.env, "PYTHONPATH": str(Path(__file__).parents[1])},
        prefix=tmp_path,
        extra_argv=["--RemoteKernel.image=slowpy",
                    "--RemoteKernelApp.kernel_class=tests.slow_import_kernel.SlowImportKernel"],
    )  # fmt: skip
    km = KernelManager(kernel_name="rk-slow-import")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        content = _first_kernel_info(kc)
        assert "Python Reference" in [link["text"] for link in content["help_links"]], content
        assert "remote session" in content["banner"]
        kc.wait_for_ready(timeout=30)  # IOPub subscribed too (else the cell's output is dropped)
        reply, outputs = execute(kc, "print(6 * 7)")
        assert reply["status"] == "ok"
        assert [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"] == ["42\n"]
        (session,) = _sessions(slow_server)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert _wait(lambda: _sessions(slow_server) == [], 10), _sessions(slow_server)
    assert len(_log_lines(slow_server, "started:")) == 1  # the early session was the kernel's
    name = session["sessionName"]  # the DELETE answers at once; the kernel stops right after
    assert _wait(lambda: any(name in line for line in _log_lines(slow_server, "destroyed")), 10)


def test_a_kernel_that_fails_to_start_leaves_no_session(
    pooled_server: ServerProcess, tmp_path: Path
) -> None:
    started_before = len(_log_lines(pooled_server, "started:"))
    env = {**os.environ, **pooled_server.env, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "-f", str(tmp_path / "c.json"),
         "--RemoteKernelApp.kernel_class=no_such_module.Kernel"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr
    assert len(_log_lines(pooled_server, "started:")) == started_before + 1  # created early...
    assert _wait(lambda: _sessions(pooled_server) == [], 10), _sessions(pooled_server)  # ...ended


def test_an_early_session_the_kernel_does_not_want_is_destroyed(
    pooled_server: ServerProcess,
) -> None:
    argv = [f"--RemoteKernel.endpoint={pooled_server.endpoint}", "--RemoteKernel.image=python:3"]
    env = {**os.environ, **pooled_server.env}
    pred = early.predict(argv, env)
    assert pred is not None
    session = early.EarlySession(pred)
    session.start()
    assert session.future.result(timeout=60) is not None
    assert [s["sessionName"] for s in _sessions(pooled_server)] == [pred.name]
    early._current = session
    other = SessionSpec(image="python:3", name="someone-else")
    assert early.claim(pooled_server.endpoint, pred.access_key, pred.secret_key, other) is None
    assert _wait(lambda: _sessions(pooled_server) == [], 10), _sessions(pooled_server)
