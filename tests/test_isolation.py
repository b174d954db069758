"""The adversarial suite: code in one key's session attacks the other key, the server and the host.

A real ``remote-kernel serve`` with ``sandbox = bubblewrap`` (``.ci/run`` installs bubblewrap)
and two keypairs, A and B. Each test is one attack from the issue's list, run as a cell in A's
session (or through the API as A), and asserts that it is blocked *and* that the target is
intact. The memory-limit test needs cgroups (the CI machine has them, v1); everything else needs
only bwrap.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .conftest import ServerProcess, start_server
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(180)

CANARY = f"canary-{uuid.uuid4().hex}"
SECRET = f"SECRET{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    assert shutil.which("bwrap"), "bubblewrap is not installed: .ci/run installs it (apt-get)"
    os.environ["RK_SERVER_CANARY"] = CANARY  # in the server's environment, never a kernel's
    try:
        srv = start_server(
            tmp_path_factory.mktemp("isolated"), "--ServerApp.sandbox=bubblewrap", keys=2
        )
    finally:
        del os.environ["RK_SERVER_CANARY"]
    assert srv.sandbox == "bubblewrap"
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ids(sandboxed: ServerProcess) -> Iterator[dict[str, str]]:
    """One session of key A and one of key B, for the whole module."""

    async def make() -> dict[str, str]:
        key_b = sandboxed.extra_keys[0]
        async with RawAPI(sandboxed.endpoint, sandboxed.access_key, sandboxed.secret_key) as a:
            sid_a = await a.create("victim-a")
        async with RawAPI(sandboxed.endpoint, *key_b) as b:
            sid_b = await b.create("victim-b")
            await b.run(sid_b, f"token = '{SECRET}'\nopen('private.txt', 'w').write('{SECRET}')")
        return {"a": sid_a, "b": sid_b}

    yield asyncio.run(make())


@pytest.fixture
async def a(sandboxed: ServerProcess) -> AsyncIterator[RawAPI]:
    async with RawAPI(sandboxed.endpoint, sandboxed.access_key, sandboxed.secret_key) as api:
        yield api


@pytest.fixture
async def b(sandboxed: ServerProcess) -> AsyncIterator[RawAPI]:
    async with RawAPI(sandboxed.endpoint, *sandboxed.extra_keys[0]) as api:
        yield api


async def attack(api: RawAPI, sid: str, code: str) -> str:
    """Run ``code`` in the session; return what it printed (stdout), failing on an error."""
    records, result = await api.run(sid, code)
    assert result["exitCode"] == 0, records
    return "".join(text for kind, text in records if kind == "stdout")


def probe(expr: str) -> str:
    """Code that prints ``BLOCKED <exception type>`` if ``expr`` raises, else what it gives."""
    return (
        "try:\n"
        f"    print('GOT', repr({expr})[:200])\n"
        "except Exception as exc:\n"
        "    print('BLOCKED', type(exc).__name__)\n"
    )


# -- one key against the other, and against the server's secrets -----------------------------
async def test_state_dir_and_keypairs_are_invisible(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    keypairs = sandboxed.state_dir / "keypairs.json"
    assert keypairs.exists()
    out = await attack(a, ids["a"], probe(f"open({str(keypairs)!r}).read()"))
    assert out == "BLOCKED FileNotFoundError\n"
    listing = probe(f"os.listdir({str(sandboxed.state_dir)!r})")
    out = await attack(a, ids["a"], "import os\n" + listing)
    assert out == "BLOCKED FileNotFoundError\n"


async def test_other_keys_work_dir_is_invisible(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    other = sandboxed.state_dir / "sessions" / ids["b"] / "work"
    assert (other / "private.txt").read_text() == SECRET  # it is there, on the host
    for expr in (
        f"os.listdir({str(other)!r})",
        f"open({str(other / 'private.txt')!r}).read()",
        f"open({str(other / 'planted.txt')!r}, 'w').write('x')",
    ):
        out = await attack(a, ids["a"], "import os\n" + probe(expr))
        assert out == "BLOCKED FileNotFoundError\n", expr
    assert not (other / "planted.txt").exists()


async def test_server_process_is_invisible_and_unsignallable(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    pid = sandboxed.proc.pid
    out = await attack(a, ids["a"], probe(f"open('/proc/{pid}/environ', 'rb').read()"))
    assert out == "BLOCKED FileNotFoundError\n"
    out = await attack(a, ids["a"], "import os, signal\n" + probe(f"os.kill({pid}, 15)"))
    assert out == "BLOCKED ProcessLookupError\n"
    # The only processes in sight are the sandbox's own: its init (pid 1) and the kernel.
    out = await attack(
        a, ids["a"], "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    )
    assert json.loads(out)[:2] == [1, 2]
    out = await attack(a, ids["a"], "import os\n" + probe("os.kill(1, 9)"))
    assert out == "BLOCKED PermissionError\n"
    assert sandboxed.proc.poll() is None


async def test_kernel_environment_is_a_fixed_set(a: RawAPI, ids: dict[str, str]) -> None:
    out = await attack(a, ids["a"], "import os, json\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(out)
    assert CANARY not in out
    assert env["HOME"] == "/home/work" and env["USER"] == "work"
    assert not {k for k in env if k.startswith(("REMOTE_KERNEL", "BACKEND_", "JPY_"))}


async def test_history_is_per_session(
    a: RawAPI, b: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    await b.run(ids["b"], f"x = '{SECRET}'")  # now in B's history
    out = await attack(a, ids["a"], f"%history -g {SECRET}")
    assert f"x = '{SECRET}'" not in out and "1 (session" not in out
    out = await attack(b, ids["b"], f"%history -g {SECRET}")
    assert f"x = '{SECRET}'" in out  # B's own history works
    # and no IPython state inside the work directories (not among the user's files)
    assert not (sandboxed.state_dir / "sessions" / ids["a"] / "work" / ".ipython").exists()


async def test_private_tmp(a: RawAPI, b: RawAPI, ids: dict[str, str]) -> None:
    await attack(b, ids["b"], f"open('/tmp/b-only', 'w').write('{SECRET}')")
    out = await attack(a, ids["a"], probe("open('/tmp/b-only').read()"))
    assert out == "BLOCKED FileNotFoundError\n"
    assert not Path("/tmp/b-only").exists()  # nor on the host


# -- the host -------------------------------------------------------------------------------
async def test_no_root_power_over_the_host(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test checks what a root server does: run the suite as root (CI does)")
    out = await attack(a, ids["a"], "import getpass, pathlib\nprint(getpass.getuser(), "
                       "pathlib.Path.home(), __import__('pwd').getpwuid(__import__('os').getuid())"
                       ".pw_name)")  # fmt: skip
    assert out == "work /home/work work\n"  # the session's user has a name inside
    out = await attack(a, ids["a"], "import os\nprint(os.getuid(), os.geteuid(), os.getgroups())")
    uid, euid, groups = out.split(maxsplit=2)
    assert int(uid) == int(euid) != 0 and groups.strip() == "[]"
    for expr in (
        "os.setuid(0)",
        "open('/etc/passwd', 'a')",
        "open('/usr/bin/planted', 'w')",
        "os.chown('/home/work', 0, 0)",
    ):
        out = await attack(a, ids["a"], "import os\n" + probe(expr))
        assert out.startswith("BLOCKED ") and out.split()[1] in (
            "PermissionError", "OSError"
        ), (expr, out)  # fmt: skip
    out = await attack(a, ids["a"], "print(open('/proc/self/status').read())")
    caps = dict(line.split(":\t") for line in out.splitlines() if line.startswith("Cap"))
    assert caps["CapEff"].strip("0\n") == "" and caps["CapBnd"].strip("0\n") == ""
    # What the session writes is its user's on the host, never root's.
    setuid = "import os\nopen('mine.txt', 'w').write('x')\nos.chmod('mine.txt', 0o4755)"
    await attack(a, ids["a"], setuid)
    mine = sandboxed.state_dir / "sessions" / ids["a"] / "work" / "mine.txt"
    assert mine.stat().st_uid == int(uid) != 0


async def test_batch_steps_are_sandboxed_too(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    keypairs = sandboxed.state_dir / "keypairs.json"
    result = await a.execute(
        ids["a"], "batch", "", uuid.uuid4().hex,
        options={"exec": f"cat {keypairs}; id -u; echo $RK_SERVER_CANARY"},
    )  # fmt: skip
    console = list(result["console"])
    while result["status"] != "finished":
        result = await a.execute(ids["a"], "continue", "", result["runId"])
        console += result["console"]
    text = "".join(r[1] for r in console if r[0] in ("stdout", "stderr"))
    assert "No such file or directory" in text
    assert CANARY not in text and "AKIA" not in text
    assert "\n0\n" not in f"\n{text}"


# -- limits ---------------------------------------------------------------------------------
async def test_memory_limit_names_the_limit_and_others_carry_on(
    a: RawAPI, b: RawAPI, ids: dict[str, str]
) -> None:
    small = await a.create(f"small-{uuid.uuid4().hex[:6]}", config={"resources": {"mem": "256m"}})
    try:
        status, info = await a.call("GET", f"/session/{small}")
        assert status == 200 and info["occupiedSlots"]["mem"] == str(256 * 1024 * 1024)
        await a.run(small, "x = 1")
        hog = asyncio.ensure_future(
            a.run(small, "blob = bytearray(512 * 1024 * 1024)\nprint('allocated')", jupyter=True)
        )
        # Meanwhile B's session answers, before and after the other one hits its limit.
        out = await attack(b, ids["b"], "print(6 * 7)")
        assert out == "42\n"
        records, result = await asyncio.wait_for(hog, 90)
        errors = [r[1] for r in records if r[0] == "error"]
        assert errors and errors[-1]["ename"] == "MemoryError", records
        assert "256 MiB" in errors[-1]["evalue"] and "restarted" in errors[-1]["evalue"]
        assert not any(r[0] == "stdout" and "allocated" in r[1] for r in records)
        assert result["exitCode"] == 1
        # The session restarted (a fresh kernel) and answers again; so does B's.
        records, _ = await a.run(small, "print('x' in dir())")
        assert records == [["stdout", "False\n"]]
        assert await attack(b, ids["b"], f"print(token == '{SECRET}')") == "True\n"
    finally:
        await a.destroy(small)


async def test_resources_above_the_maximum_or_unknown_are_400(a: RawAPI) -> None:
    for resources, words in (
        ({"mem": "lots"}, "'mem' must be a size"),
        ({"cpu": -1}, "'cpu' must be a positive number"),
        ({"cuda.shares": 1}, "no resource slot 'cuda.shares'"),
        ("1g", "must be an object of resource slots"),
    ):
        status, body = await a.call(
            "POST", "/session", {"image": "python", "name": f"bad-{uuid.uuid4().hex[:6]}",
                                 "config": {"resources": resources}},
        )  # fmt: skip
        assert status == 400, body
        assert words in body["title"] + body.get("detail", ""), body


async def test_killing_everything_in_sight_harms_no_one_else(
    a: RawAPI, b: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    out = await attack(
        a, ids["a"],
        "import os, signal\n"
        "killed = []\n"
        "for pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    if pid != os.getpid():\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL); killed.append(pid)\n"
        "        except OSError:\n"
        "            pass\n"
        "print(killed)",
    )  # fmt: skip
    assert out == "[]\n"  # the sandbox's init is root's; nothing else is in sight
    assert sandboxed.proc.poll() is None
    assert await attack(b, ids["b"], "print('b alive')") == "b alive\n"


async def test_process_count_is_limited(a: RawAPI) -> None:
    sid = await a.create(f"pids-{uuid.uuid4().hex[:6]}", config={"resources": {"pids": 32}})
    try:
        out = await attack(
            a, sid,
            "import subprocess\n"
            "procs = []\n"
            "try:\n"
            "    for _ in range(100):\n"
            "        procs.append(subprocess.Popen(['sleep', '60']))\n"
            "    print('unlimited')\n"
            "except OSError as exc:\n"
            "    print('stopped at', len(procs), type(exc).__name__)\n"
            "for p in procs:\n"
            "    p.kill(); p.wait()\n",
        )  # fmt: skip
        words = out.split()
        assert words[0] == "stopped" and int(words[2]) < 32 and words[3] == "BlockingIOError", out
    finally:
        await a.destroy(sid)


# -- no network -------------------------------------------------------------------------------
async def test_network_cut_session_still_runs_cells(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path, "--ServerApp.sandbox=bubblewrap", "--ServerApp.sandbox_network=False"
    )
    try:
        port = int(srv.endpoint.rsplit(":", 1)[1])
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            sid = await api.create("offline")
            code = "import socket\nprint(socket.if_nameindex())\n" + probe(
                f"socket.create_connection(('127.0.0.1', {port}), 2)"
            )
            out = await attack(api, sid, code)
            assert out == "[(1, 'lo')]\nBLOCKED ConnectionRefusedError\n"
            # the kernel talks to the server over IPC sockets: output, errors, interrupts work
            run_id = uuid.uuid4().hex
            first = await api.execute(sid, "query", "import time; time.sleep(30)", run_id)
            assert first["status"] == "continued"
            status, _ = await api.call("POST", f"/session/{sid}/interrupt", {})
            assert status == 204
            result = await api.drain(sid, first)
            assert result["status"] == "finished" and result["exitCode"] == 1
            assert await attack(api, sid, "print('still here')") == "still here\n"
    finally:
        srv.stop()


# -- files through the API, against links the session plants ----------------------------------
async def test_planted_links_cannot_redirect_uploads_or_downloads(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess, tmp_path: Path
) -> None:
    victim = tmp_path / "host-file.txt"  # a host file the server (root) could write
    victim.write_text("host data")
    keypairs = sandboxed.state_dir / "keypairs.json"
    await attack(
        a, ids["a"],
        "import os\n"
        f"os.symlink({str(victim)!r}, '.report.txt.uploading')\n"
        f"os.symlink({str(victim)!r}, 'to-host.txt')\n"
        f"os.symlink({str(keypairs)!r}, 'keys.json')\n"
        f"os.symlink({str(sandboxed.state_dir)!r}, 'state')\n",
    )  # fmt: skip
    status, _ = await a.upload(ids["a"], {"report.txt": b"uploaded"})
    assert status == 204
    status, body = await a.upload(ids["a"], {"to-host.txt": b"overwrite?"})
    assert status == 400 and "leaves the session's work directory" in body["msg"], body
    status, body = await a.upload(ids["a"], {"state/keypairs.json": b"{}"})
    assert status == 400, body
    assert victim.read_text() == "host data"
    assert json.loads(keypairs.read_text())  # intact
    for name in ("keys.json/..", "state/keypairs.json", "to-host.txt"):
        status, body = await a.download(ids["a"], name)
        assert status in (400, 404), (name, body)
    # the uploaded file is the session's own: it can read and replace it
    out = await attack(
        a, ids["a"],
        "print(open('report.txt').read())\nopen('report.txt', 'w').write('changed')\nprint('ok')",
    )  # fmt: skip
    assert out == "uploaded\nok\n"
    work = sandboxed.state_dir / "sessions" / ids["a"] / "work"
    assert (work / "report.txt").stat().st_uid != 0


async def test_terminal_is_sandboxed_too(
    a: RawAPI, ids: dict[str, str], sandboxed: ServerProcess
) -> None:
    ws = await a.websocket(f"/stream/session/{ids['a']}/pty")
    text = ""
    keypairs = sandboxed.state_dir / "keypairs.json"
    chars = f"cat {keypairs}; echo uid=$(id -u) canary=$RK_SERVER_CANARY e''nd\n"
    await ws.send_json({"type": "stdin", "chars": base64.b64encode(chars.encode()).decode()})
    async with asyncio.timeout(20):
        while "end\r\n" not in text:
            msg = await ws.receive_json()
            if msg.get("type") == "out":
                text += base64.b64decode(msg["data"]).decode(errors="replace")
    await ws.close()
    assert "No such file or directory" in text
    assert "uid=0 " not in text and "canary= end" in text and "AKIA" not in text


async def test_version_probe_reports_the_isolation(a: RawAPI) -> None:
    status, body = await a.call("GET", "/", sign=False)
    assert status == 200
    info = body["remote_kernel"]
    assert (info["sandbox"], info["network"]) == ("bubblewrap", True)
    assert info["limits"] in ("cgroup-v1", "cgroup-v2")  # CI's machine lets root make cgroups


async def test_default_limits_half_the_memory_and_1024_processes(
    a: RawAPI, ids: dict[str, str]
) -> None:
    status, info = await a.call("GET", f"/session/{ids['a']}")
    assert status == 200
    half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    assert info["occupiedSlots"] == {"mem": str(half), "pids": 1024}
    assert info["requestedSlots"] == {}


async def test_a_killed_server_leaves_no_sandboxed_kernel_without_recovery(tmp_path: Path) -> None:
    """With ``recover_sessions`` off, kernels die with a killed server (bwrap's
    --die-with-parent); with it on (the default), tests/test_recovery.py re-adopts them."""
    import signal

    from .test_server_lifecycle import _descendants

    srv = start_server(
        tmp_path, "--ServerApp.sandbox=bubblewrap", "--ServerApp.recover_sessions=False"
    )
    try:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            sid = await api.create("doomed")
            assert await attack(api, sid, "print('up')") == "up\n"
        below = _descendants(srv.proc.pid)
        assert any(comm.startswith("python") for comm in below.values()), below
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        deadline = asyncio.get_running_loop().time() + 10
        while [p for p in below if Path(f"/proc/{p}").exists()]:
            assert asyncio.get_running_loop().time() < deadline, "kernels outlived the server"
            await asyncio.sleep(0.1)
    finally:
        srv.stop()
