"""Streams over real sockets: WebSocket execute, WebSocket PTY, SSE events; and mounted folders."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import aiohttp
import pytest

from remote_kernel.protocol import strip_ansi
from remote_kernel.server.folders import owner_dir_name

from .conftest import ServerProcess
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(120)


async def frames(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> list[dict[str, Any]]:
    """Every JSON frame until the server closes the socket."""
    out = []
    async with asyncio.timeout(timeout):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
    return out


# -- WebSocket execute -------------------------------------------------------------------------
async def test_ws_execute_streams_and_closes_after_finished(api: RawAPI, sid: str) -> None:
    ws = await api.websocket(f"/stream/session/{sid}/execute")
    await ws.send_json({"code": "print('a'); import sys; print('b', file=sys.stderr)",
                        "mode": "query", "options": {}})  # fmt: skip
    got = await frames(ws)
    assert ws.closed
    assert got[-1]["status"] == "finished" and got[-1]["exitCode"] == 0
    records = [r for f in got for r in f["console"]]
    assert records == [["stdout", "a\n"], ["stderr", "b\n"]]
    assert all("runId" not in f for f in got)


async def test_ws_execute_input_as_text_frame(api: RawAPI, sid: str) -> None:
    ws = await api.websocket(f"/stream/session/{sid}/execute")
    await ws.send_json({"code": "n = input('name? '); print('hello', n)", "mode": "query",
                        "options": {}})  # fmt: skip
    first = await ws.receive_json(timeout=30)
    while first["status"] == "continued":
        first = await ws.receive_json(timeout=30)
    assert first["status"] == "waiting-input" and first["options"] == {"is_password": False}
    assert first["console"] == [["stdout", "name? "]]
    await ws.send_str("zoe")
    rest = await frames(ws)
    assert rest[-1]["status"] == "finished"
    assert [r for f in rest for r in f["console"]] == [["stdout", "hello zoe\n"]]


async def test_ws_execute_jupyter_records_when_asked(api: RawAPI, sid: str) -> None:
    ws = await api.websocket(f"/stream/session/{sid}/execute")
    await ws.send_json({"code": "40 + 2", "mode": "query", "options": {"console": "jupyter"}})
    got = await frames(ws)
    records = [r for f in got for r in f["console"]]
    assert records[0][0] == "execute_result" and records[0][1]["data"] == {"text/plain": "42"}


async def test_ws_disconnect_mid_run_interrupts_it(api: RawAPI, sid: str) -> None:
    ws = await api.websocket(f"/stream/session/{sid}/execute")
    await ws.send_json({"code": "import time; print('go', flush=True); time.sleep(30)",
                        "mode": "query", "options": {}})  # fmt: skip
    frame = await ws.receive_json(timeout=30)
    while not frame["console"]:
        frame = await ws.receive_json(timeout=30)
    await ws.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    records, _ = await api.run(sid, "print('next')")
    assert records == [["stdout", "next\n"]]
    assert loop.time() - started < 10  # not the 30 s the abandoned cell would have slept


async def test_ws_bad_first_frame(api: RawAPI, sid: str) -> None:
    ws = await api.websocket(f"/stream/session/{sid}/execute")
    await ws.send_json({"code": "1", "mode": "dance"})
    got = await frames(ws)
    assert got == [
        {"status": "error", "msg": "Invalid API parameters: mode must be 'query' or 'batch'"}
    ]


# -- PTY ---------------------------------------------------------------------------------------
async def test_pty_runs_a_shell_in_the_work_dir(
    api: RawAPI, sid: str, server: ServerProcess
) -> None:
    ws = await api.websocket(f"/stream/session/{sid}/pty")

    async def send(chars: str) -> None:
        await ws.send_json({"type": "stdin", "chars": base64.b64encode(chars.encode()).decode()})

    async def read_until(needle: str) -> str:
        text = ""
        async with asyncio.timeout(20):
            while needle not in text:
                msg = await ws.receive_json()
                if msg.get("type") == "out":
                    text += base64.b64decode(msg["data"]).decode(errors="replace")
        return text

    await ws.send_json({"type": "resize", "rows": 30, "cols": 100})
    await send("echo sum-$((40+2)); pwd; stty size\n")
    text = await read_until("30 100")
    assert "sum-42" in text
    if server.sandbox == "bubblewrap":  # the shell is in the session's sandbox
        assert "/home/work\r\n" in text and "/sessions/" not in text
    else:
        assert f"/sessions/{sid}/work" in text
    await ws.send_json({"type": "ping"})
    async with asyncio.timeout(10):
        while (await ws.receive_json()).get("type") != "pong":
            pass
    await ws.send_json({"type": "restart"})  # a fresh shell on the same socket
    await send("echo again-$((1+1))\n")
    assert "again-2" in await read_until("again-2\r\n")
    await send("exit\n")
    async with asyncio.timeout(10):
        async for _ in ws:
            pass
    assert ws.closed


# -- SSE events --------------------------------------------------------------------------------
async def read_events(resp: aiohttp.ClientResponse, timeout: float) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    name = None
    try:
        async with asyncio.timeout(timeout):
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[6:])))
                    if name == "server_close":
                        break
    except TimeoutError:
        pass
    return events


async def test_events_for_own_session_end_with_server_close(
    api: RawAPI, server: ServerProcess
) -> None:
    sid = await api.create(f"t-ev-{uuid.uuid4().hex[:6]}")
    access, secret = server.extra_keys[0]
    async with RawAPI(server.endpoint, access, secret) as other:
        mine = await api.events(f"/events/session?sessionId={sid}&scope=*")
        theirs = await other.events("/events/session?sessionName=*&scope=*")
        assert mine.status == 200 and mine.content_type == "text/event-stream"
        status, _ = await other.call("GET", f"/session/{sid}")
        assert status == 404
        await api.call("PATCH", f"/session/{sid}")
        await api.destroy(sid)
        events = await read_events(mine, 20)
        assert [e[0] for e in events] == [
            "kernel_terminated", "kernel_started", "session_terminating",
            "kernel_terminated", "session_terminated", "server_close",
        ]  # fmt: skip
        assert all(e[1]["sessionId"] == sid for e in events)
        assert events[4][1]["reason"] == "user-requested"
        assert await read_events(theirs, 1.5) == []  # nothing of another keypair's session
        theirs.close()
    status, _ = await api.call("GET", "/events/session?sessionId=no-such-session")
    assert status == 404


# -- mounts ------------------------------------------------------------------------------------
async def test_mounted_folder_outlives_the_session(api: RawAPI, server: ServerProcess) -> None:
    folder = f"shared-{uuid.uuid4().hex[:6]}"
    status, body = await api.call("POST", "/folders", {"name": folder})
    assert status == 201, body
    on_disk = server.state_dir / "vfolders" / owner_dir_name(api.keypair.access_key) / folder
    first = await api.create(f"t-m1-{uuid.uuid4().hex[:6]}", config={"mounts": [folder]})
    records, result = await api.run(first, f"open('{folder}/note.txt', 'w').write('from one')")
    assert result["exitCode"] == 0
    status, body = await api.call("GET", f"/session/{first}/files?path={folder}")
    assert status == 200 and "note.txt" in body["files"]
    await api.destroy(first)
    gone = server.state_dir / "sessions" / first
    for _ in range(200):  # the DELETE answers at once; the session's directory goes right after
        if not gone.exists():
            break
        await asyncio.sleep(0.05)
    assert not gone.exists()
    assert (on_disk / "note.txt").read_text() == "from one"
    second = await api.create(
        f"t-m2-{uuid.uuid4().hex[:6]}", config={"mount_map": {folder: "/home/work/data"}}
    )
    try:
        records, _ = await api.run(second, "print(open('data/note.txt').read())")
        assert records == [["stdout", "from one\n"]]
    finally:
        await api.destroy(second)


@pytest.mark.parametrize(
    ("config", "status"),
    [
        ({"mounts": ["no-such-folder"]}, 404),
        ({"mounts": ["../etc"]}, 400),
        ({"mounts": ["/etc"]}, 400),
        ({"mount_map": {"ok-folder": "/etc/x"}}, 400),
        ({"mount_map": {"ok-folder": "../x"}}, 400),
    ],
)
async def test_bad_mounts_refused(
    api: RawAPI, server: ServerProcess, config: dict, status: int
) -> None:
    created, _ = await api.call("POST", "/folders", {"name": "ok-folder"})
    assert created in (201, 409)  # made by an earlier case
    got, body = await api.call(
        "POST", "/session", {"image": "python", "name": f"t-bad-{uuid.uuid4().hex[:6]}",
                             "config": config},
    )  # fmt: skip
    assert got == status, body
    if status == 404:
        assert "ok-folder" in body["msg"]
    assert strip_ansi(body["msg"])
