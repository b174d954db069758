"""The push channel's frames (``push-channel`` extension, docs/protocol.md), as pure data.

One WebSocket per session, ``GET /stream/session/{id}/channel``; every frame is a JSON text
object with a ``type``. Both halves build and parse frames here, so a field name lives in one
place. No sockets, no event loop.

Client → server:

* ``run`` ``{runId, code, options, cursor}``: start the run, or, when the server already knows
  ``runId``, resume it: results are sent from record ``cursor`` on (a reconnect or a retry never
  starts a second execution);
* ``input`` ``{runId, seq, text}``: the answer to prompt number ``seq`` of the run (a repeat is
  ignored);
* ``interrupt`` ``{runId, interruptId}``: interrupt that run if it is still running (a repeat of
  ``interruptId`` is ignored);
* ``ack`` ``{runId, cursor}``: the client holds every record before ``cursor``; the server may
  free them;
* ``shell`` ``{msgId, msgType, content, metadata, buffers}`` (extension ``comms``): a frontend
  ``comm_open``/``comm_msg``/``comm_close``/``comm_info_request``, sent to the remote kernel's
  shell with ``msgId`` as its id (``buffers``: base64); a repeated ``msgId`` is not sent again;
* ``outputs`` ``{cursor}`` (``comms``): push what belongs to no run from item ``cursor`` on.

Server → client:

* ``hello`` ``{sessionId, protocol, outputs}``: first frame (``outputs``: the number the next
  item of what belongs to no run will get);
* ``result`` ``{from, runId, status, console, cursor, exitCode, options, reply?}``: the run's
  records ``from..cursor`` and its status, exactly the fields of an HTTP execute result;
* ``accepted`` ``{of, runId, seq | interruptId, applied}``: an ``input`` or ``interrupt``
  arrived (``applied`` false: it was a repeat, or the run had moved on);
* ``event`` ``{name, data}``: something that belongs to no run (session and kernel life);
* ``output`` ``{from, cursor, items, dropped}`` (``comms``): items ``from..cursor`` of what the
  kernel sent outside any run, in kernel order, each ``{parent, record}`` (``parent``: the
  ``msg_id`` of the request it answers) or ``{parent, done}`` (the forwarded frontend message
  ``parent`` is finished; ``done`` is its reply, if it has one); ``dropped``: items no longer
  kept that were asked for;
* ``error`` ``{runId?, problem}``: a frame the server could not act on; ``problem`` is the
  problem+json body an HTTP request would have got.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .errors import InvalidAPIParamsError, ProtocolError

PROTOCOL = 1

RUN = "run"
INPUT = "input"
INTERRUPT = "interrupt"
ACK = "ack"
SHELL = "shell"
OUTPUTS = "outputs"
CLIENT_TYPES = (RUN, INPUT, INTERRUPT, ACK, SHELL, OUTPUTS)

HELLO = "hello"
RESULT = "result"
ACCEPTED = "accepted"
EVENT = "event"
ERROR = "error"
OUTPUT = "output"
SERVER_TYPES = (HELLO, RESULT, ACCEPTED, EVENT, ERROR, OUTPUT)


@dataclass(frozen=True)
class ClientFrame:
    """A parsed client frame; the fields its ``type`` does not use keep their defaults."""

    type: str
    run_id: str
    code: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    cursor: int = 0
    seq: int | None = None
    text: str = ""
    interrupt_id: str | None = None
    shell: ShellMessage | None = None


@dataclass(frozen=True)
class ShellMessage:
    """A frontend message to forward to the remote kernel's shell (``shell`` frame)."""

    msg_id: str
    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class ServerFrame:
    """A parsed server frame; ``body`` is the whole JSON object."""

    type: str
    body: dict[str, Any]

    @property
    def run_id(self) -> str | None:
        value = self.body.get("runId")
        return value if isinstance(value, str) else None


# -- building ----------------------------------------------------------------------------------
def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def run(run_id: str, code: str, options: dict[str, Any], cursor: int) -> dict[str, Any]:
    return {"type": RUN, "runId": run_id, "code": code, "options": options, "cursor": cursor}


def input_(run_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": INPUT, "runId": run_id, "seq": seq, "text": text}


def interrupt(run_id: str, interrupt_id: str) -> dict[str, Any]:
    return {"type": INTERRUPT, "runId": run_id, "interruptId": interrupt_id}


def ack(run_id: str, cursor: int) -> dict[str, Any]:
    return {"type": ACK, "runId": run_id, "cursor": cursor}


def shell(msg: ShellMessage) -> dict[str, Any]:
    return {
        "type": SHELL, "msgId": msg.msg_id, "msgType": msg.msg_type, "content": msg.content,
        "metadata": msg.metadata,
        "buffers": [base64.b64encode(b).decode("ascii") for b in msg.buffers],
    }  # fmt: skip


def outputs(cursor: int) -> dict[str, Any]:
    return {"type": OUTPUTS, "cursor": cursor}


def hello(session_id: str, outputs_end: int = 0) -> dict[str, Any]:
    return {"type": HELLO, "sessionId": session_id, "protocol": PROTOCOL, "outputs": outputs_end}


def output(items: list[dict[str, Any]], start: int, dropped: int = 0) -> dict[str, Any]:
    return {
        "type": OUTPUT, "from": start, "cursor": start + len(items), "items": items,
        "dropped": dropped,
    }  # fmt: skip


def result(body: dict[str, Any], start: int) -> dict[str, Any]:
    """A ``result`` frame from an execute result body's inner ``result`` object."""
    return {"type": RESULT, "from": start, **body}


def accepted(of: str, run_id: str, applied: bool, **ids: Any) -> dict[str, Any]:
    return {"type": ACCEPTED, "of": of, "runId": run_id, "applied": applied, **ids}


def event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": EVENT, "name": name, "data": data}


def error(problem: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": ERROR, "problem": problem}
    if run_id is not None:
        frame["runId"] = run_id
    return frame


# -- parsing -----------------------------------------------------------------------------------
def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_client_frame(text: str) -> ClientFrame:
    """Validate a client frame; :class:`InvalidAPIParamsError` names what is wrong."""
    try:
        body = json.loads(text)
    except ValueError:
        raise InvalidAPIParamsError("A channel frame must be a JSON object.") from None
    if not isinstance(body, dict):
        raise InvalidAPIParamsError("A channel frame must be a JSON object.")
    kind = body.get("type")
    if kind not in CLIENT_TYPES:
        raise InvalidAPIParamsError(
            f"Unknown channel frame type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}."
        )
    if kind == SHELL:
        return ClientFrame(SHELL, "", shell=_parse_shell(body))
    if kind == OUTPUTS:
        cursor = body.get("cursor")
        if not _int(cursor):
            raise InvalidAPIParamsError("An 'outputs' frame needs 'cursor' (int >= 0).")
        return ClientFrame(OUTPUTS, "", cursor=cursor)
    run_id = body.get("runId")
    if not isinstance(run_id, str) or not run_id:
        raise InvalidAPIParamsError(f"A {kind!r} frame needs a 'runId' string.")
    if kind == RUN:
        code, options = body.get("code", ""), body.get("options") or {}
        cursor = body.get("cursor", 0)
        if not isinstance(code, str) or not isinstance(options, dict) or not _int(cursor):
            raise InvalidAPIParamsError(
                "A 'run' frame needs 'code' (string), 'options' (object) and 'cursor' (int >= 0)."
            )
        return ClientFrame(RUN, run_id, code=code, options=options, cursor=cursor)
    if kind == INPUT:
        seq, line = body.get("seq"), body.get("text")
        if not _int(seq) or not isinstance(line, str):
            raise InvalidAPIParamsError("An 'input' frame needs 'seq' (int) and 'text' (string).")
        return ClientFrame(INPUT, run_id, seq=seq, text=line)
    if kind == INTERRUPT:
        interrupt_id = body.get("interruptId")
        if not isinstance(interrupt_id, str) or not interrupt_id:
            raise InvalidAPIParamsError("An 'interrupt' frame needs an 'interruptId' string.")
        return ClientFrame(INTERRUPT, run_id, interrupt_id=interrupt_id)
    acked = body.get("cursor")
    if not _int(acked):
        raise InvalidAPIParamsError("An 'ack' frame needs 'cursor' (int >= 0).")
    return ClientFrame(ACK, run_id, cursor=acked)


#: Frontend message types a ``shell`` frame may carry.
SHELL_TYPES = ("comm_open", "comm_msg", "comm_close", "comm_info_request")


def _parse_shell(body: dict[str, Any]) -> ShellMessage:
    msg_id, msg_type = body.get("msgId"), body.get("msgType")
    content, metadata = body.get("content"), body.get("metadata") or {}
    buffers = body.get("buffers") or []
    if not isinstance(msg_id, str) or not msg_id:
        raise InvalidAPIParamsError("A 'shell' frame needs a 'msgId' string.")
    if msg_type not in SHELL_TYPES:
        raise InvalidAPIParamsError(
            f"A 'shell' frame forwards one of {', '.join(SHELL_TYPES)}; got {msg_type!r}."
        )
    if not isinstance(content, dict) or not isinstance(metadata, dict):
        raise InvalidAPIParamsError("A 'shell' frame needs 'content' and 'metadata' objects.")
    if not isinstance(buffers, list) or not all(isinstance(b, str) for b in buffers):
        raise InvalidAPIParamsError("A 'shell' frame's 'buffers' must be base64 strings.")
    try:
        decoded = [base64.b64decode(b, validate=True) for b in buffers]
    except (binascii.Error, ValueError):
        raise InvalidAPIParamsError("A 'shell' frame's 'buffers' must be base64 strings.") from None
    return ShellMessage(msg_id, msg_type, content, metadata, decoded)


def parse_server_frame(text: str | bytes) -> ServerFrame:
    """A server frame; :class:`ProtocolError` when it is not one."""
    try:
        body = json.loads(text)
    except ValueError:
        msg = f"The push channel sent a frame that is not JSON: {text[:200]!r}"
        raise ProtocolError(msg) from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError(f"The push channel sent a frame without a type: {str(body)[:200]}")
    if body["type"] == OUTPUT and not (
        _int(body.get("from")) and _int(body.get("cursor")) and isinstance(body.get("items"), list)
    ):
        raise ProtocolError(f"An output frame lacks 'from'/'cursor'/'items': {str(body)[:200]}")
    if body["type"] == RESULT and not (_int(body.get("from")) and _int(body.get("cursor"))):
        raise ProtocolError(f"A result frame lacks 'from'/'cursor': {str(body)[:200]}")
    return ServerFrame(body["type"], body)
