"""Server process lifecycle: settings, keys, limits, idle reaping, shutdown, dead kernels."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from remote_kernel.protocol import strip_ansi

from .conftest import ServerProcess, start_server
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(root: int) -> dict[int, str]:
    """pid → command name of every process below ``root`` (sandboxed kernels included: their
    pid inside the sandbox means nothing on the host)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = stat_line[stat_line.index("(") + 1 : stat_line.rindex(")")]
            parents[int(entry)] = (int(stat_line[stat_line.rindex(")") + 2 :].split()[1]), comm)
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, comm) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = comm
                frontier.append(pid)
    return found


def test_keys_create_prints_two_lines_and_stores_0600(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "keys", "create", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("BACKEND_ACCESS_KEY=AKIA") and len(lines[0]) == 19 + 20
    assert lines[1].startswith("BACKEND_SECRET_KEY=") and len(lines[1]) == 19 + 40
    mode = stat.S_IMODE((tmp_path / "keypairs.json").stat().st_mode)
    assert mode == 0o600
    assert lines[1].split("=", 1)[1] in (tmp_path / "keypairs.json").read_text()


def test_serve_help_lists_every_setting_with_its_env_twin() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "serve", "--help-all"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for trait in ("ip", "port", "state_dir", "auth", "extensions", "poll_hold", "poll_coalesce",
                  "max_sessions_per_key", "idle_timeout", "kernel_start_timeout",
                  "max_run_output_bytes", "max_request_bytes", "debug"):  # fmt: skip
        assert f"--ServerApp.{trait}=" in out, trait
        assert f"REMOTE_KERNEL_{trait.upper()}" in out, trait


async def test_limits_idle_reaping_and_env_settings(tmp_path: Path) -> None:
    os.environ["REMOTE_KERNEL_IDLE_TIMEOUT"] = "2"
    try:
        srv = start_server(tmp_path, "--ServerApp.max_sessions_per_key=2")
    finally:
        del os.environ["REMOTE_KERNEL_IDLE_TIMEOUT"]
    try:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            busy = await api.create("t-busy")
            idle = await api.create("t-idle")
            status, body = await api.call("POST", "/session", {"image": "python", "name": "t-3rd"})
            assert status == 429 and body["type"].endswith("/too-many-sessions")
            run_id = uuid.uuid4().hex
            result = await api.execute(busy, "query", "import time; time.sleep(5)", run_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 8
            idle_gone = False
            while result["status"] != "finished":  # the busy one keeps polling; the idle one goes
                result = await api.execute(busy, "continue", "", run_id)
                if not idle_gone:
                    # (checking with GET would count as use; the listing does not touch sessions)
                    status, listing = await api.call("GET", "/session")
                    idle_gone = idle not in [s["sessionId"] for s in listing["items"]]
                assert loop.time() < deadline
            assert idle_gone
            status, _ = await api.call("GET", f"/session/{busy}")
            assert status == 200
    finally:
        srv.stop()


async def test_sigterm_stops_every_kernel(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            for i in range(2):
                await api.run(await api.create(f"t-term-{i}"), "pass")
        below = _descendants(srv.proc.pid)
        assert sum(comm.startswith("python") for comm in below.values()) == 2, below
        pids = list(below)
    finally:
        code = srv.stop()
    assert code == 0
    await asyncio.sleep(0.5)
    assert not any(_alive(pid) for pid in pids)
    assert "shutting down" in srv.log()


async def test_anonymous_access_on_loopback(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--auth", "none", keys=0)
    try:
        async with RawAPI(srv.endpoint, "", "") as api:
            status, body = await api.call("POST", "/session", {"image": "python", "name": "anon"},
                                          sign=False)  # fmt: skip
            assert status == 201
            records, _ = await api.run(body["sessionId"], "print('anon ok')")
            assert records == [["stdout", "anon ok\n"]]
    finally:
        srv.stop()


async def test_dead_kernel_ends_the_run_and_the_session_recovers(server: ServerProcess) -> None:
    async with RawAPI(server.endpoint, server.access_key, server.secret_key) as api:
        sid = await api.create(f"t-dead-{uuid.uuid4().hex[:6]}")
        try:
            records, result = await api.run(sid, "import os; os._exit(3)", jupyter=True)
            assert result["status"] == "finished" and result["exitCode"] == 1
            assert records[-1][0] == "error" and records[-1][1]["ename"] == "DeadKernelError"
            assert result["reply"]["ename"] == "DeadKernelError"
            records, result = await api.run(sid, "print('back')")
            assert records == [["stdout", "back\n"]]
        finally:
            await api.destroy(sid)


async def test_restart_during_a_run_ends_it(server: ServerProcess) -> None:
    async with RawAPI(server.endpoint, server.access_key, server.secret_key) as api:
        sid = await api.create(f"t-rr-{uuid.uuid4().hex[:6]}")
        try:
            run_id = uuid.uuid4().hex
            first = await api.execute(sid, "query", "import time; time.sleep(20)", run_id)
            assert first["status"] == "continued"
            status, _ = await api.call("PATCH", f"/session/{sid}")
            assert status == 204
            result = await api.execute(sid, "continue", "", run_id)
            assert result["status"] == "finished" and result["exitCode"] == 1
            assert "restarted" in strip_ansi(result["console"][0][1])
            records, _ = await api.run(sid, "print('fresh')")
            assert records == [["stdout", "fresh\n"]]
        finally:
            await api.destroy(sid)


def test_sigint_also_shuts_down(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(20) == 0


async def test_any_installed_kernelspec_is_an_image(tmp_path: Path) -> None:
    """Kernels start through jupyter_client's provisioner machinery, from the kernelspec."""
    import json

    spec = tmp_path / "share" / "jupyter" / "kernels" / "marked-python"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Marked Python",
        "language": "python",
        "env": {"RK_SPEC_MARKER": "from-the-kernelspec"},
        "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}},
    }))  # fmt: skip
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(tmp_path / "share" / "jupyter")
    try:
        srv = start_server(tmp_path / "srv")
    finally:
        if saved is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = saved
    try:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            status, body = await api.call("POST", "/session", {"image": "cobol", "name": "t-xyz"})
            assert status == 404 and "marked-python" in body["data"]["available"]
            sid = await api.create("t-marked", image="marked-python")
            status, info = await api.call("GET", f"/session/{sid}")
            assert info["kernelName"] == "marked-python"
            records, _ = await api.run(sid, "import os; print(os.environ['RK_SPEC_MARKER'])")
            assert records == [["stdout", "from-the-kernelspec\n"]]
    finally:
        srv.stop()


async def test_kernel_log_stays_bounded(server: ServerProcess) -> None:
    from remote_kernel.server.kernel_log import LOG_KEEP, LOG_MAX

    async with RawAPI(server.endpoint, server.access_key, server.secret_key) as api:
        sid = await api.create(f"t-log-{uuid.uuid4().hex[:6]}")
        try:
            chunks = LOG_MAX // 65536 + 8
            code = (
                f"import os\nfor _ in range({chunks}):\n"
                "    os.write(2, b'x' * 65535 + b'\\n')\n"
                "os.write(2, b'LAST-LINE\\n')"
            )
            _, result = await api.run(sid, code)
            assert result["exitCode"] == 0
            log_file = server.state_dir / "sessions" / sid / "kernel.log"
            assert LOG_KEEP <= log_file.stat().st_size <= LOG_KEEP + 1024
            status, body = await api.call("GET", f"/session/{sid}/logs")
            assert status == 200
            assert body["result"]["logs"].rstrip().endswith("LAST-LINE")
            assert len(body["result"]["logs"]) <= 256 * 1024
        finally:
            await api.destroy(sid)
