"""Nothing lost when something restarts (issue 12), with real processes and ``kill -9``:
the server killed and started again, proxies killed, sessions destroyed behind the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from .conftest import ServerProcess, restart_server, start_server
from .kernel_helpers import execute, install_kernelspec, running_kernel
from .rawapi import RawAPI
from .test_kernel import _reply_for, _sessions, _texts, _wait

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def _stdout(outputs: list[dict[str, Any]]) -> str:
    return _texts(outputs, "stdout")


def _stderr(outputs: list[dict[str, Any]]) -> str:
    return _texts(outputs, "stderr")


def _late_output(kc: Any, word: str) -> None:
    """A thread prints after its cell ended; the text arrives with the cell as its parent."""
    code = f"import threading, time\nthreading.Timer(0.3, print, ({word!r},)).start()"
    msg_id = kc.execute(code)
    late = _Collect(kc, msg_id)
    late.until(lambda m: word in m["content"].get("text", ""), 30)
    assert late.text("stdout") == f"{word}\n"


def _kill(srv: ServerProcess) -> None:
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)


def test_a_killed_server_started_again_keeps_the_session(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv")
    again: ServerProcess | None = None
    try:
        install_kernelspec("remote-python-recover", srv.env, prefix=tmp_path / "spec")
        with running_kernel("remote-python-recover") as (_km, kc):
            reply, _ = execute(kc, "x = 41")
            assert reply["status"] == "ok"
            _late_output(kc, "before")  # what belongs to no cell: numbered by the server
            _kill(srv)
            again = restart_server(srv)
            reply, outputs = execute(kc, "print(x + 1)")
            assert reply["status"] == "ok", (reply, _stderr(outputs))
            assert _stdout(outputs) == "42\n"
            assert "[remote_kernel]" not in _stderr(outputs)
            _late_output(kc, "after")  # still arrives: the new server numbers from 0 again
    finally:
        (again or srv).stop()
        srv.stop()
    sessions = tmp_path / "srv" / "state" / "sessions"
    assert not sessions.exists() or list(sessions.iterdir()) == []


class _Collect:
    """IOPub messages of one request, read as they come."""

    def __init__(self, kc: Any, msg_id: str) -> None:
        self.kc, self.msg_id, self.seen = kc, msg_id, []

    def until(self, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(predicate(m) for m in self.seen):
            assert time.monotonic() < deadline, [m["msg_type"] for m in self.seen]
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == self.msg_id:
                self.seen.append(msg)

    def text(self, stream: str) -> str:
        return _stdout(self.seen) if stream == "stdout" else _stderr(self.seen)


def _idle(msg: dict[str, Any]) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def test_a_cell_running_across_a_server_restart_finishes(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv")
    again: ServerProcess | None = None
    try:
        install_kernelspec("remote-python-midcell", srv.env, prefix=tmp_path / "spec")
        with running_kernel("remote-python-midcell") as (_km, kc):
            code = "import time\nprint('before', flush=True)\ntime.sleep(9)\nprint('after')\nz = 3"
            msg_id = kc.execute(code)
            cell = _Collect(kc, msg_id)
            cell.until(lambda m: "before" in m["content"].get("text", ""), 30)
            _kill(srv)
            time.sleep(4)  # longer than the push channel's reconnect budget: polling waits
            again = restart_server(srv)
            cell.until(_idle, 60)
            reply = _reply_for(kc, msg_id, 10)
            assert reply["content"]["status"] == "ok", reply["content"]
            assert cell.text("stdout") == "before\nafter\n"
            assert "may be missing" in cell.text("stderr")
            assert "Lost the server" in cell.text("stderr")
            assert "The server answers again" in cell.text("stderr")
            reply, outputs = execute(kc, "print(z)")
            assert _stdout(outputs) == "3\n"
    finally:
        (again or srv).stop()
        srv.stop()


def _kill_proxy(km: Any) -> None:
    """SIGKILL the proxy process: no shutdown request reaches the server."""
    km.signal_kernel(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while km.is_alive():
        assert time.monotonic() < deadline, "the proxy did not die"
        time.sleep(0.05)
    km.cleanup_resources()


def test_reattach_finds_the_notebooks_session_after_the_proxy_died(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv")
    try:
        env = {**srv.env, "JPY_SESSION_NAME": str(tmp_path / "analysis.ipynb")}
        install_kernelspec("remote-python-reattach", env, prefix=tmp_path / "spec",
                           extra_argv=["--RemoteKernel.reattach=True"])  # fmt: skip
        km, kc = start_new_kernel(kernel_name="remote-python-reattach", startup_timeout=60)
        try:
            reply, _ = execute(kc, "x = 5")
            assert reply["status"] == "ok"
            kc.execute("import time\ntime.sleep(2)\ny = 7")  # still running when the proxy dies
            time.sleep(0.5)
        finally:
            kc.stop_channels()
            _kill_proxy(km)
        (session,) = _sessions(srv)
        assert session["statusInfo"] == "busy"
        with running_kernel("remote-python-reattach") as (_km2, kc2):
            reply, outputs = execute(kc2, "print(x, y)")
            assert reply["status"] == "ok", reply
            assert _stdout(outputs) == "5 7\n"
            assert "Re-attached to the remote session" in _stderr(outputs)
            assert "still running" in _stderr(outputs)
            assert [s["sessionId"] for s in _sessions(srv)] == [session["sessionId"]]
        assert _sessions(srv) == []  # an explicit shutdown ends it
    finally:
        srv.stop()


def test_orphans_are_destroyed_mid_cell_and_mid_input(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv", "--ServerApp.orphan_timeout=10")
    try:
        install_kernelspec("remote-python-orphan", srv.env, prefix=tmp_path / "spec")
        kernels = [start_new_kernel(kernel_name="remote-python-orphan", startup_timeout=60)
                   for _ in range(2)]  # fmt: skip
        try:
            (_, kc1), (_, kc2) = kernels
            busy = kc1.execute("import time\nprint('go', flush=True)\ntime.sleep(300)")
            _Collect(kc1, busy).until(lambda m: "go" in m["content"].get("text", ""), 30)
            kc2.execute("input('name? ')", allow_stdin=True)
            assert kc2.get_stdin_msg(timeout=30)["msg_type"] == "input_request"
            assert len(_sessions(srv)) == 2
        finally:
            for km, kc in kernels:
                kc.stop_channels()
                _kill_proxy(km)
        killed = time.monotonic()
        while _sessions(srv):
            assert time.monotonic() - killed < 30, _sessions(srv)
            time.sleep(0.5)
        assert time.monotonic() - killed >= 9  # not before the timeout
        # the reaper's destroy stops the kernels and removes their directories in the background
        sessions = srv.state_dir / "sessions"
        assert _wait(lambda: list(sessions.iterdir()) == [], 15), list(sessions.iterdir())
    finally:
        srv.stop()


def test_sessions_that_died_meanwhile_are_cleaned_up_at_start(tmp_path: Path) -> None:
    """Killed server; then one session's kernel dies too: the server started again re-adopts
    the live one and removes the dead one (404, no directory, no process)."""
    srv = start_server(tmp_path / "srv")
    again: ServerProcess | None = None

    async def setup() -> tuple[str, str]:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            live, dead = await api.create("stays"), await api.create("dies")
            for sid in (live, dead):
                await api.run(sid, "v = 1")
            return live, dead

    async def check() -> None:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            records, result = await api.run(live, "print(v + 1)")
            assert records == [["stdout", "2\n"]] and result["exitCode"] == 0
            status, _ = await api.call("GET", f"/session/{dead}")
            assert status == 404

    try:
        live, dead = asyncio.run(setup())
        sessions = srv.state_dir / "sessions"
        record = json.loads((sessions / dead / "session.json").read_text())
        pid = record["process"]["pid"]
        _kill(srv)
        os.killpg(record["process"]["pgid"], signal.SIGKILL)
        again = restart_server(srv)
        asyncio.run(check())
        assert sorted(p.name for p in sessions.iterdir()) == [live]
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    finally:
        (again or srv).stop()
        srv.stop()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_keep_work_dirs_keeps_a_destroyed_sessions_files(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv", "--ServerApp.keep_work_dirs=True")

    async def scenario() -> str:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            sid = await api.create("keeper")
            await api.run(sid, "open('result.txt', 'w').write('kept')")
            await api.destroy(sid)
            status, _ = await api.call("GET", f"/session/{sid}")
            assert status == 404
            return sid

    try:
        sid = asyncio.run(scenario())
        sdir = srv.state_dir / "sessions" / sid
        deadline = time.monotonic() + 10  # the kernel stops after the DELETE's answer
        while sorted(p.name for p in sdir.iterdir()) != ["work"]:  # no record: not recovered
            assert time.monotonic() < deadline, sorted(p.name for p in sdir.iterdir())
            time.sleep(0.05)
        assert (sdir / "work" / "result.txt").read_text() == "kept"
    finally:
        srv.stop()
