"""The push channel's frames: building and parsing, both directions (pure)."""

from __future__ import annotations

import json

import pytest

from remote_kernel import frames
from remote_kernel.errors import InvalidAPIParamsError, ProtocolError


@pytest.mark.parametrize(
    ("frame", "parsed"),
    [
        (frames.run("r", "1", {"console": "jupyter"}, 3),
         frames.ClientFrame("run", "r", code="1", options={"console": "jupyter"}, cursor=3)),
        (frames.input_("r", 2, "yes"), frames.ClientFrame("input", "r", seq=2, text="yes")),
        (frames.interrupt("r", "i"), frames.ClientFrame("interrupt", "r", interrupt_id="i")),
        (frames.ack("r", 9), frames.ClientFrame("ack", "r", cursor=9)),
    ],
)  # fmt: skip
def test_client_frames_round_trip(frame: dict[str, object], parsed: frames.ClientFrame) -> None:
    assert frames.parse_client_frame(frames.dumps(frame)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must be a JSON object"),
        ("{nope", "must be a JSON object"),
        ('{"type": "dance", "runId": "r"}', "Unknown channel frame type 'dance'"),
        ('{"type": "run"}', "needs a 'runId' string"),
        ('{"type": "run", "runId": "r", "cursor": -1}', "'cursor' (int >= 0)"),
        ('{"type": "run", "runId": "r", "code": 5}', "'code' (string)"),
        ('{"type": "input", "runId": "r", "seq": true, "text": "x"}', "'seq' (int)"),
        ('{"type": "input", "runId": "r", "seq": 1}', "'text' (string)"),
        ('{"type": "interrupt", "runId": "r"}', "'interruptId' string"),
        ('{"type": "ack", "runId": "r", "cursor": "1"}', "'cursor' (int >= 0)"),
    ],
)
def test_bad_client_frames_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidAPIParamsError) as info:
        frames.parse_client_frame(text)
    assert message in str(info.value)


def test_server_frames() -> None:
    body = {"runId": "r", "status": "continued", "console": [], "cursor": 4}
    frame = frames.parse_server_frame(json.dumps(frames.result(body, 2)))
    assert frame.type == "result" and frame.run_id == "r" and frame.body["from"] == 2
    assert frames.parse_server_frame(json.dumps(frames.hello("s"))).run_id is None
    with pytest.raises(ProtocolError, match="not JSON"):
        frames.parse_server_frame("{")
    with pytest.raises(ProtocolError, match="without a type"):
        frames.parse_server_frame("{}")
    with pytest.raises(ProtocolError, match="lacks 'from'"):
        frames.parse_server_frame(json.dumps({"type": "result", "cursor": 1}))


def test_shell_and_outputs_frames_round_trip() -> None:
    msg = frames.ShellMessage("m1", "comm_msg", {"comm_id": "c", "data": {"x": 1}},
                              {"v": 2}, [b"\x00\xff", b""])  # fmt: skip
    parsed = frames.parse_client_frame(frames.dumps(frames.shell(msg)))
    assert parsed == frames.ClientFrame("shell", "", shell=msg)
    assert frames.parse_client_frame(frames.dumps(frames.outputs(7))) == frames.ClientFrame(
        "outputs", "", cursor=7
    )


def test_output_frames() -> None:
    items = [{"parent": "p", "record": ["stdout", "x"]}, {"parent": "p", "done": {}}]
    frame = frames.parse_server_frame(json.dumps(frames.output(items, 5, dropped=2)))
    assert frame.body == {"type": "output", "from": 5, "cursor": 7, "items": items, "dropped": 2}
    assert frames.parse_server_frame(json.dumps(frames.hello("s", 9))).body["outputs"] == 9
    with pytest.raises(ProtocolError, match="lacks 'from'/'cursor'/'items'"):
        frames.parse_server_frame(json.dumps({"type": "output", "from": 0, "cursor": 1}))
