"""The push channel and idempotent runs, against the aiohttp app in process with real kernels.

The app runs on a loopback port through pytest-aiohttp's ``aiohttp_client`` (no server
subprocess); each test gets its own session manager and a real Jupyter kernel.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remote_kernel import frames
from remote_kernel import protocol as p
from remote_kernel.server.app import make_app
from remote_kernel.server.keystore import KeyStore
from remote_kernel.server.sessions import SessionManager
from remote_kernel.server.settings import ServerSettings

pytestmark = pytest.mark.timeout(60)

JUPYTER = {"console": p.CONSOLE_JUPYTER}


class Channel:
    """A test client of the push channel: send frames, collect what comes back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 20) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)  # type: ignore[no-any-return]

    async def until(self, pred: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Frames up to and including the first that satisfies ``pred``."""
        got: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(timeout)
            got.append(frame)
            if pred(frame):
                return got

    async def finished(self, run_id: str) -> list[dict[str, Any]]:
        return await self.until(
            lambda f: f["type"] == "result" and f["runId"] == run_id and f["status"] == "finished"
        )


@pytest.fixture
async def session_id(app_client: Any) -> str:
    resp = await app_client.post("/session", json={"image": "python:3", "name": "chan-test"})
    assert resp.status == 201
    return str((await resp.json())["sessionId"])


async def open_channel(app_client: Any, session_id: str) -> Channel:
    ws = await app_client.ws_connect(f"/stream/session/{session_id}/channel")
    channel = Channel(ws)
    hello = await channel.recv()
    assert hello == {"type": "hello", "sessionId": session_id, "protocol": 1, "outputs": 0}
    return channel


def records(frames_: list[dict[str, Any]]) -> list[Any]:
    return [rec for f in frames_ if f["type"] == "result" for rec in f["console"]]


def stdout(frames_: list[dict[str, Any]]) -> str:
    return "".join(r[1] for r in records(frames_) if r[0] == "stdout")


async def test_hello_lists_the_channel(app_client: Any) -> None:
    body = await (await app_client.get("/")).json()
    assert p.FEATURE_PUSH_CHANNEL in body["remote_kernel"]["features"]
    assert p.FEATURE_IDEMPOTENT_RUNS in body["remote_kernel"]["features"]


async def test_a_run_is_pushed_with_contiguous_cursors(app_client: Any, session_id: str) -> None:
    ch = await open_channel(app_client, session_id)
    await ch.send(frames.run("r1", "print('a')\n1+1", JUPYTER, 0))
    got = await ch.finished("r1")
    results = [f for f in got if f["type"] == "result"]
    starts = [f["from"] for f in results]
    assert starts[0] == 0
    for prev, nxt in itertools.pairwise(results):
        assert nxt["from"] == prev["cursor"]  # no gap, no overlap
    assert records(got) == [
        ["stdout", "a\n"],
        ["execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 1}],
    ]
    assert results[-1]["reply"]["status"] == "ok"
    assert results[-1]["cursor"] == 2


async def test_resume_after_reconnect_loses_and_repeats_nothing(
    app_client: Any, session_id: str
) -> None:
    code = "import time\nfor i in range(40):\n    print(i, flush=True)\n    time.sleep(0.02)\n"
    ch = await open_channel(app_client, session_id)
    await ch.send(frames.run("r2", code, JUPYTER, 0))
    first = await ch.until(lambda f: f["type"] == "result" and f["cursor"] >= 3)
    held = first[-1]["cursor"]
    await ch.ws.close()  # the proxy's connection drops mid-run: the run goes on
    ch2 = await open_channel(app_client, session_id)
    await ch2.send(frames.run("r2", code, JUPYTER, held))  # resume: same runId, our cursor
    rest = await ch2.finished("r2")
    assert rest[0]["from"] == held
    text = stdout(first) + stdout(rest)
    assert text == "".join(f"{i}\n" for i in range(40))
    # the code ran once: a query for a new run sees execution count 2
    await ch2.send(frames.run("r3", "1", JUPYTER, 0))
    last = await ch2.finished("r3")
    assert last[-1]["reply"]["execution_count"] == 2


async def test_input_is_delivered_once_per_prompt(app_client: Any, session_id: str) -> None:
    ch = await open_channel(app_client, session_id)
    code = "a = input('one? ')\nb = input('two? ')\nprint(a + b)"
    await ch.send(frames.run("r4", code, {**JUPYTER, "allow_stdin": True}, 0))
    got = await ch.until(lambda f: f["type"] == "result" and f["status"] == "waiting-input")
    assert got[-1]["options"] == {"is_password": False, "prompt": "one? ", "input_seq": 1}
    await ch.send(frames.input_("r4", 1, "x"))
    await ch.send(frames.input_("r4", 1, "x"))  # a retry: ignored
    accepted = await ch.until(lambda f: f["type"] == "accepted")
    accepted += await ch.until(lambda f: f["type"] == "accepted")
    assert [a["applied"] for a in accepted if a["type"] == "accepted"] == [True, False]
    got = await ch.until(
        lambda f: f["type"] == "result" and f["status"] == "waiting-input"
        and f["options"]["input_seq"] == 2
    )  # fmt: skip
    await ch.send(frames.input_("r4", 2, "y"))
    rest = await ch.finished("r4")
    assert stdout(rest) == "xy\n"


async def test_interrupt_names_its_run_and_acts_once(app_client: Any, session_id: str) -> None:
    ch = await open_channel(app_client, session_id)
    code = "import time\nprint('go', flush=True)\ntime.sleep(30)"
    await ch.send(frames.run("r5", code, JUPYTER, 0))
    await ch.until(lambda f: f["type"] == "result" and f["console"])
    await ch.send(frames.interrupt("r5", "i1"))
    await ch.send(frames.interrupt("r5", "i1"))
    got = await ch.finished("r5")
    acks = [f["applied"] for f in got if f["type"] == "accepted"]
    assert acks == [True, False]
    assert got[-1]["reply"]["ename"] == "KeyboardInterrupt"
    # an interrupt for a finished run never reaches the next one
    await ch.send(frames.run("r6", "import time\ntime.sleep(0.5)\nprint('done')", JUPYTER, 0))
    await ch.send(frames.interrupt("r5", "i2"))
    got = await ch.finished("r6")
    assert [f["applied"] for f in got if f["type"] == "accepted"] == [False]
    assert stdout(got) == "done\n"


async def test_bad_frames_get_problems_and_the_channel_stays(
    app_client: Any, session_id: str
) -> None:
    ch = await open_channel(app_client, session_id)
    await ch.ws.send_str("not json")
    await ch.send({"type": "dance", "runId": "x"})
    await ch.send(frames.input_("nope", 1, "x"))
    await ch.send(frames.run("bad", "1", {**JUPYTER, "user_expressions": [1]}, 0))
    got = [await ch.recv() for _ in range(4)]
    assert [f["type"] for f in got] == ["error"] * 4
    assert [f["problem"]["status"] for f in got] == [400, 400, 400, 400]
    assert "dance" in got[1]["problem"]["msg"]
    assert got[2]["runId"] == "nope" and "No run 'nope'" in got[2]["problem"]["msg"]
    assert got[3]["runId"] == "bad" and "user_expressions" in got[3]["problem"]["msg"]
    await ch.send(frames.run("r7", "print(7)", JUPYTER, 0))
    assert stdout(await ch.finished("r7")) == "7\n"


async def test_unknown_session_channel_is_404(app_client: Any) -> None:
    resp = await app_client.get(f"/stream/session/{uuid.uuid4()}/channel")
    assert resp.status == 404
    assert (await resp.json())["type"].endswith("object-not-found")


async def test_destroy_closes_the_channel_with_an_event(app_client: Any, session_id: str) -> None:
    ch = await open_channel(app_client, session_id)
    resp = await app_client.delete(f"/session/{session_id}")
    assert resp.status == 200
    got = await ch.until(lambda f: f["type"] == "event" and f["name"] == "session_terminated")
    assert got[-1]["data"]["reason"] == "user-requested"
    msg = await ch.ws.receive(timeout=10)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


# -- idempotent runs over HTTP --------------------------------------------------------------------
async def _execute(app_client: Any, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await app_client.post(f"/session/{session_id}", json=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["result"]  # type: ignore[no-any-return]


async def _drain(app_client: Any, session_id: str, run_id: str, cursor: int) -> dict[str, Any]:
    while True:
        body = {"mode": "continue", "code": "", "runId": run_id, "cursor": cursor}
        result = await _execute(app_client, session_id, body)
        cursor = result["cursor"]
        if result["status"] == "finished":
            return result


async def test_a_repeated_query_is_the_same_run(app_client: Any, session_id: str) -> None:
    code = "n = globals().get('n', 0) + 1\nprint(n)"
    query = {"mode": "query", "code": code, "runId": "q1", "options": JUPYTER, "cursor": 0}
    first = await _execute(app_client, session_id, query)
    again = await _execute(app_client, session_id, query)  # the "lost response" retry
    assert again["runId"] == "q1"
    if first["status"] != "finished":
        first = await _drain(app_client, session_id, "q1", 0)
    assert first["console"][0] == ["stdout", "1\n"]
    last = again if again["status"] == "finished" else await _drain(app_client, session_id, "q1", 0)
    assert last["console"][0] == ["stdout", "1\n"]  # replayed from cursor 0, not run again
    check = {"mode": "query", "code": "print(n)", "runId": "q2", "options": JUPYTER}
    result = await _execute(app_client, session_id, check)
    if result["status"] != "finished":
        result = await _drain(app_client, session_id, "q2", 0)
    assert result["console"] == [["stdout", "1\n"]]


async def test_http_interrupt_with_a_finished_run_id_is_a_no_op(
    app_client: Any, session_id: str
) -> None:
    done = {"mode": "query", "code": "1", "runId": "h1", "options": JUPYTER}
    result = await _execute(app_client, session_id, done)
    if result["status"] != "finished":
        await _drain(app_client, session_id, "h1", 0)
    slow = {"mode": "query", "code": "import time\ntime.sleep(0.5)\nprint('ok')", "runId": "h2",
            "options": JUPYTER}  # fmt: skip
    await _execute(app_client, session_id, slow)
    resp = await app_client.post(
        f"/session/{session_id}/interrupt", json={"runId": "h1", "interruptId": "x"}
    )
    assert resp.status == 204
    result = await _drain(app_client, session_id, "h2", 0)
    assert result["reply"]["status"] == "ok"
    assert result["console"] == [["stdout", "ok\n"]]


async def test_channel_route_absent_without_extensions(aiohttp_client: Any, tmp_path: Path) -> None:
    manager = SessionManager(tmp_path / "state")
    settings = ServerSettings(auth_required=False, extensions=False)
    client = await aiohttp_client(make_app(manager, KeyStore(tmp_path / "state"), settings))
    body = await (await client.get("/")).json()
    assert "remote_kernel" not in body
    resp = await client.get("/stream/session/x/channel")
    assert resp.status == 404
    await asyncio.sleep(0)


async def test_a_bug_in_a_socket_handler_closes_it_with_1011(
    app_client: Any, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error after the upgrade: the socket is closed with 1011 (no HTTP answer
    can be written into an open WebSocket), and the server carries on."""
    ch = await open_channel(app_client, session_id)

    def broken(text: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(frames, "parse_client_frame", broken)
    await ch.send(frames.ack("r", 0))
    msg = await ch.ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1011
    monkeypatch.undo()
    ch2 = await open_channel(app_client, session_id)
    await ch2.send(frames.run("r9", "print(9)", JUPYTER, 0))
    assert stdout(await ch2.finished("r9")) == "9\n"
