"""The proxy kernel forked from a warm fork server (remote_kernel/proxy/launch.py, forkserver.py).

Real processes throughout: the kernelspec's ``python -m remote_kernel -f ...`` started by
jupyter_client, a real fork server, a real remote server. Each test has a fork-server directory
of its own, and stops the servers in it at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from remote_kernel.proxy import launch
from remote_kernel.proxy.forkserver import alive, kernel_of, servers_in, stop_servers

from .conftest import ServerProcess
from .kernel_helpers import (
    TIMEOUT,
    execute,
    install_kernelspec,
    running_kernel,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fs_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="rkfs-"))  # short: it holds a Unix socket
    monkeypatch.setenv(launch.DIR_ENV, str(directory))
    monkeypatch.delenv(launch.SWITCH_ENV, raising=False)
    yield directory
    stop_servers(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def spec(server: ServerProcess) -> str:
    install_kernelspec("rk-forked", server.env)
    return "rk-forked"


def _spawn_server(warm_after: float = 0) -> None:
    """Start a fork server as a launcher would: from a fresh interpreter, whose ``sys.path`` (and
    so the socket's fingerprint) is the kernel's, whatever path pytest was started with."""
    code = f"from remote_kernel.proxy import launch; launch.spawn_server({warm_after})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def _until(ready: Callable[[], object], timeout: float) -> object:
    """Poll ``ready`` every 50 ms until it gives something true; that, or None at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found or time.monotonic() > deadline:
            return found or None
        time.sleep(0.05)


def _wait_for_server(directory: Path, timeout: float = 30) -> int:
    def listening() -> int | None:
        pids = servers_in(directory)
        return pids[0] if pids and list(directory.glob("*.sock")) else None

    pid = _until(listening, timeout)
    assert isinstance(pid, int), f"no fork server came up in {directory}; log:\n{_log(directory)}"
    return pid


def _log(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.glob("*.log"))


def _logged(directory: Path, line: str, timeout: float = 10) -> bool:
    """Whether the fork server logs ``line`` within ``timeout`` (it reaps its children in its
    own loop, so a kernel can be a zombie, gone for ``_gone``, before its end is logged)."""
    return _until(lambda: line in _log(directory), timeout) is not None


def _forked_for(directory: Path, launcher: int, timeout: float = 10) -> int:
    """The pid of the kernel forked for ``launcher`` (from the fork server's log)."""
    kernel = _until(lambda: kernel_of(directory, launcher), timeout)
    assert isinstance(kernel, int), f"no kernel forked for {launcher}; log:\n{_log(directory)}"
    return kernel


def _gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` ends (or is a zombie) within ``timeout``."""
    return _until(lambda: not alive(pid), timeout) is not None


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError("no PPid")


def _outputs(kc: object, code: str) -> list[tuple[str, str]]:
    reply, outputs = execute(kc, code)  # type: ignore[arg-type]
    assert reply["status"] == "ok", reply
    found = []
    for msg in outputs:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            found.append(("stream", content["text"]))
        elif msg["msg_type"] == "execute_result":
            found.append(("result", content["data"]["text/plain"]))
    return found


def test_the_first_start_runs_in_process_and_starts_a_server_the_next_is_forked(
    fs_dir: Path, spec: str, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "nb1", tmp_path / "nb2"
    first_dir.mkdir()
    second_dir.mkdir()
    with running_kernel(spec, cwd=first_dir) as (km, kc):
        first = km.provisioner.process.pid  # type: ignore[union-attr]
        assert _outputs(kc, "print('hi'); 6 * 7") == [("stream", "hi\n"), ("result", "42")]
    server_pid = _wait_for_server(fs_dir)
    assert f"for launcher {first} " not in _log(fs_dir)  # no server yet: it ran in-process

    with running_kernel(spec, cwd=second_dir) as (km, kc):
        launcher = km.provisioner.process.pid  # type: ignore[union-attr]
        kernel = _forked_for(fs_dir, launcher)
        assert kernel != launcher
        assert _ppid(kernel) == server_pid
        assert Path(f"/proc/{kernel}/cwd").resolve() == second_dir.resolve()
        assert _outputs(kc, "print('hi'); 6 * 7") == [("stream", "hi\n"), ("result", "42")]
        assert _outputs(kc, "x = 5\nx + 1") == [("result", "6")]
        reply, _ = execute(kc, "1/0")
        assert (reply["status"], reply["ename"]) == ("error", "ZeroDivisionError")
    assert _gone(kernel)
    assert _logged(fs_dir, f"kernel {kernel} ended (0)"), _log(fs_dir)
    assert servers_in(fs_dir) == [server_pid]  # it stays for the next kernel


def test_a_server_waits_before_warming_up_and_kernels_start_in_process_meanwhile(
    fs_dir: Path, spec: str
) -> None:
    """A server started beside an in-process kernel leaves that kernel's start the CPU: it holds
    its lock at once (no second server is started) and listens only after ``warm_after``."""
    started = time.monotonic()
    _spawn_server(warm_after=4)
    assert _until(lambda: servers_in(fs_dir), 30), _log(fs_dir)
    server = servers_in(fs_dir)[0]
    with running_kernel(spec) as (km, kc):  # meanwhile: in-process, and no other server
        launcher = km.provisioner.process.pid  # type: ignore[union-attr]
        assert _outputs(kc, "1 + 1") == [("result", "2")]
    assert f"for launcher {launcher} " not in _log(fs_dir)
    assert servers_in(fs_dir) == [server]
    assert _wait_for_server(fs_dir) == server
    assert time.monotonic() - started >= 4
    with running_kernel(spec) as (km, kc):  # then forked
        launcher = km.provisioner.process.pid  # type: ignore[union-attr]
        assert _ppid(_forked_for(fs_dir, launcher)) == server
        assert _outputs(kc, "1 + 1") == [("result", "2")]


def test_killing_the_launcher_kills_its_kernel(fs_dir: Path, spec: str) -> None:
    _spawn_server()
    _wait_for_server(fs_dir)
    km, kc = start_new_kernel(kernel_name=spec, startup_timeout=TIMEOUT)
    try:
        launcher = km.provisioner.process.pid  # type: ignore[union-attr]
        kernel = _forked_for(fs_dir, launcher)
        assert _outputs(kc, "1 + 1") == [("result", "2")]
        os.kill(launcher, signal.SIGKILL)  # what jupyter_client's kill does
        assert _gone(kernel), "the forked kernel outlived its launcher"
        assert _logged(fs_dir, f"kernel {kernel} ended (-9)"), _log(fs_dir)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_signal_reaches_the_kernel_and_its_end_comes_back(fs_dir: Path, spec: str) -> None:
    _spawn_server()
    _wait_for_server(fs_dir)
    km, kc = start_new_kernel(kernel_name=spec, startup_timeout=TIMEOUT)
    try:
        process = km.provisioner.process  # type: ignore[union-attr]
        kernel = _forked_for(fs_dir, process.pid)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(10) == -signal.SIGTERM  # the launcher ends as its kernel did
        assert _gone(kernel)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_switch_turns_forking_off(
    fs_dir: Path, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spawn_server()
    _wait_for_server(fs_dir)
    monkeypatch.setenv(launch.SWITCH_ENV, "0")
    with running_kernel(spec) as (km, kc):
        launcher = km.provisioner.process.pid  # type: ignore[union-attr]
        assert _outputs(kc, "1 + 1") == [("result", "2")]
    assert f"for launcher {launcher} " not in _log(fs_dir)


def test_the_fingerprint_follows_sources_and_python_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text("x = 1\n")
    monkeypatch.setattr(launch, "PACKAGE", source.parent)
    first = launch.fingerprint()
    assert launch.fingerprint() == first
    os.utime(source, ns=(1, 1))  # an upgrade or an edit
    second = launch.fingerprint()
    assert second != first
    monkeypatch.setenv("PYTHONWARNINGS", "error")
    assert launch.fingerprint() != second
    monkeypatch.delenv("PYTHONWARNINGS")
    assert launch.fingerprint() == second
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    third = launch.fingerprint()
    (site / "notes.txt").write_text("a file a test or an editor wrote")
    (site / "__pycache__").mkdir()
    assert launch.fingerprint() == third
    (site / "somelib-2.0.dist-info").mkdir()  # an install or an upgrade
    assert launch.fingerprint() != third


def test_the_socket_directory_must_be_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv(launch.DIR_ENV, str(shared))
    with pytest.raises(launch.Unavailable, match="not private"):
        launch.socket_path()


def _serve(path: Path, idle: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, launch.IDLE_ENV: idle}
    return subprocess.Popen(
        [sys.executable, "-m", "remote_kernel.proxy.forkserver", str(path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_one_server_per_socket_and_an_idle_one_leaves(fs_dir: Path) -> None:
    path = fs_dir / "fs-test.sock"
    first = _serve(path, "2")
    try:
        _wait_for_server(fs_dir)
        second = _serve(path, "2")
        assert second.wait(30) == 0  # the lock is taken: it leaves at once
        assert first.poll() is None
        assert first.wait(15) == 0  # idle for 2 s
        assert not path.exists()
        assert b"leaving" in (first.stdout.read() if first.stdout else b"")
    finally:
        first.kill()
        first.wait()


def test_a_malformed_request_is_refused_and_the_server_keeps_serving(fs_dir: Path) -> None:
    path = fs_dir / "fs-test.sock"
    proc = _serve(path, "60")
    try:
        _wait_for_server(fs_dir)
        for body in (b"[1, 2]", b"not json", json.dumps({"argv": ["x"], "fds": [0, 1]}).encode()):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                socket.send_fds(sock, [launch.HEADER.pack(len(body))], [0])
                sock.sendall(body)
                answer = json.loads(sock.makefile().readline())
            assert set(answer) == {"error"}, answer
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_a_directory_that_is_not_private_means_an_in_process_start(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(launch.DIR_ENV, str(shared))
    monkeypatch.delenv(launch.SWITCH_ENV, raising=False)
    with running_kernel(spec) as (_km, kc):
        assert _outputs(kc, "1 + 1") == [("result", "2")]
    assert list(shared.iterdir()) == []  # no socket, no server: nothing was left there
