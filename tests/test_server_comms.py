"""The ``comms`` frames of the push channel, against the aiohttp app in process with a real
kernel (no proxy): frontend messages to the kernel's shell with their own ids, outside-run
output with its parent, ``done`` after a callback's output, repeats, resumption, and bad frames.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from remote_kernel import frames
from remote_kernel import protocol as p
from remote_kernel.frames import ShellMessage

from .test_server_channel import JUPYTER, Channel, open_channel

pytestmark = pytest.mark.timeout(60)

ECHO_TARGET = (
    "def _echo(comm, open_msg):\n"
    "    @comm.on_msg\n"
    "    def _got(msg):\n"
    "        print('got', msg['content']['data'])\n"
    "        back = bytes(msg['buffers'][0])[::-1]\n"
    "        comm.send({'n': msg['content']['data']['n']}, buffers=[back])\n"
    "get_ipython().kernel.comm_manager.register_target('echo', _echo)"
)


@pytest.fixture
async def session_id(app_client: Any) -> str:
    resp = await app_client.post("/session", json={"image": "python:3", "name": "comms-test"})
    assert resp.status == 201
    return str((await resp.json())["sessionId"])


async def _run(ch: Channel, code: str) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex
    await ch.send(frames.run(run_id, code, {**JUPYTER, "comms": True, "msg_id": run_id}, 0))
    got = await ch.finished(run_id)
    assert got[-1]["reply"]["status"] == "ok", got[-1]
    return got


def _items(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for f in got if f["type"] == "output" for item in f["items"]]


async def _done(ch: Channel, msg_id: str) -> list[dict[str, Any]]:
    """Frames up to the ``done`` of ``msg_id``; returns the items seen on the way."""
    got = await ch.until(
        lambda f: (
            f["type"] == "output"
            and any(i.get("parent") == msg_id and "done" in i for i in f["items"])
        )
    )
    return _items(got)


async def test_forwarded_comm_messages_answer_with_their_parent(
    app_client: Any, session_id: str
) -> None:
    ch = await open_channel(app_client, session_id)
    await ch.send(frames.outputs(0))
    await _run(ch, ECHO_TARGET)
    opened = ShellMessage(
        "open-1", "comm_open", {"comm_id": "c1", "target_name": "echo", "data": {}}
    )
    await ch.send(frames.shell(opened))
    assert (await _done(ch, "open-1"))[-1] == {"parent": "open-1", "done": {}}
    sent = ShellMessage(
        "msg-1", "comm_msg", {"comm_id": "c1", "data": {"n": 5}}, {}, [b"\x00\x01\xff"]
    )
    await ch.send(frames.shell(sent))
    items = await _done(ch, "msg-1")
    assert [i["parent"] for i in items] == ["msg-1", "msg-1", "msg-1"]
    assert items[0]["record"] == [  # kernel order: the print is flushed when the handler ends
        "comm_msg",
        {"content": {"comm_id": "c1", "data": {"n": 5}}, "metadata": {},
         "buffers": [base64.b64encode(b"\xff\x01\x00").decode()]},
    ]  # fmt: skip
    assert items[1]["record"] == ["stdout", "got {'n': 5}\n"]
    assert items[2] == {"parent": "msg-1", "done": {}}
    info = ShellMessage("info-1", "comm_info_request", {"target_name": "echo"})
    await ch.send(frames.shell(info))
    done = (await _done(ch, "info-1"))[-1]["done"]
    assert done["status"] == "ok" and done["comms"] == {"c1": {"target_name": "echo"}}


async def test_a_repeated_msg_id_is_not_sent_again(app_client: Any, session_id: str) -> None:
    ch = await open_channel(app_client, session_id)
    await ch.send(frames.outputs(0))
    await _run(ch, ECHO_TARGET + "\nfrom itertools import count\n")
    await ch.send(
        frames.shell(
            ShellMessage("o", "comm_open", {"comm_id": "c", "target_name": "echo", "data": {}})
        )
    )
    await _done(ch, "o")
    sent = ShellMessage("m", "comm_msg", {"comm_id": "c", "data": {"n": 1}}, {}, [b"x"])
    await ch.send(frames.shell(sent))
    await ch.send(frames.shell(sent))  # a client's retry
    await _done(ch, "m")
    marker = ShellMessage("m2", "comm_msg", {"comm_id": "c", "data": {"n": 2}}, {}, [b"y"])
    await ch.send(frames.shell(marker))
    items = await _done(ch, "m2")
    assert [i["record"][1] for i in items if i.get("record", [""])[0] == "stdout"] == [
        "got {'n': 2}\n"
    ]


async def test_outside_output_resumes_from_a_cursor(app_client: Any, session_id: str) -> None:
    ch = await open_channel(app_client, session_id)
    await ch.send(frames.outputs(0))
    got = await _run(
        ch,
        "import threading, time\n"
        "def later():\n    time.sleep(0.3)\n"
        "    for i in range(3):\n        print('late', i, flush=True)\n"
        "threading.Thread(target=later).start()",
    )
    run_id = got[-1]["runId"]
    seen: list[dict[str, Any]] = []
    while sum(1 for i in seen if i.get("record", [""])[0] == "stdout") < 3:
        seen += _items([await ch.recv()])
    text = "".join(i["record"][1] for i in seen)
    assert text == "late 0\nlate 1\nlate 2\n"
    assert {i["parent"] for i in seen} == {run_id}  # the cell's (the frontend's) msg_id
    await ch.ws.close()
    again = await app_client.ws_connect(f"/stream/session/{session_id}/channel")
    ch2 = Channel(again)
    hello = await ch2.recv()
    assert hello["outputs"] >= 3
    await ch2.send(frames.outputs(hello["outputs"] - 2))  # the last two again, nothing else
    frame = await ch2.recv()
    assert frame["type"] == "output" and frame["from"] == hello["outputs"] - 2
    assert "".join(i["record"][1] for i in frame["items"]) == "late 1\nlate 2\n"


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        (
            {"type": "shell", "msgId": "a", "msgType": "execute_request", "content": {}},
            "forwards one of",
        ),
        ({"type": "shell", "msgId": 3, "msgType": "comm_msg", "content": {}}, "'msgId' string"),
        (
            {
                "type": "shell",
                "msgId": "a",
                "msgType": "comm_msg",
                "content": {},
                "buffers": ["!!"],
            },
            "base64",
        ),
        ({"type": "outputs", "cursor": -1}, "'cursor' (int >= 0)"),
    ],
)
async def test_bad_comms_frames_get_problems(
    app_client: Any, session_id: str, frame: dict[str, Any], detail: str
) -> None:
    ch = await open_channel(app_client, session_id)
    await ch.send(frame)
    error = await ch.recv()
    assert error["type"] == "error" and error["problem"]["status"] == 400
    assert detail in error["problem"]["detail"]
    await _run(ch, "1")  # the channel stays


async def test_features_list_comms(app_client: Any) -> None:
    body = await (await app_client.get("/")).json()
    assert p.FEATURE_COMMS in body["remote_kernel"]["features"]
