"""Console records ↔ Jupyter IOPub messages, both directions. Pure.

* Server side: :func:`records_from_iopub` turns one IOPub message of the remote kernel into the
  console records of a run, either lossless (``jupyter`` console, protocol §2.2) or reduced the
  way a real Backend.AI runner reduces them (base layer, §1.5).
* Client side: :func:`iopub_from_record` turns one console record into the ``(msg_type,
  content)`` the proxy kernel publishes (protocol §3); ``None`` means "not showable", which the
  kernel reports once, visibly.

Both directions are dispatch tables, in the style of jupyter_client's ``adapter.py``: a dict from
message or record type to a small function of plain data.

* ``_JUPYTER`` and ``_BASE`` map an IOPub output type to ``content -> records`` for the two
  fidelities; they have the same keys (the base layer maps the types a runner drops to ``[]``).
  A type in neither table, like the ``_SILENT_IOPUB`` ones, gives no records;
  :func:`is_output_message` knows exactly the tables' types and the silent ones.
* ``_FROM_RECORD`` maps a record type to ``data -> (msg_type, content) | None``; a type not in
  it is not showable.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .protocol import Record

_Content = Mapping[str, Any]
_Message = tuple[str, dict[str, Any]]
_ToRecords = Callable[[_Content], list[Record]]
_FromRecord = Callable[[Any], _Message | None]

#: IOPub message types that carry no output of a run (handled elsewhere or irrelevant).
_SILENT_IOPUB = frozenset(
    {"status", "execute_input", "comm_open", "comm_msg", "comm_close", "shutdown_reply",
     "iopub_welcome", "debug_event"}
)  # fmt: skip


# -- IOPub → records (the server side) ------------------------------------------------------------
def _stream(content: _Content) -> list[Record]:
    name = p.STDERR if content.get("name") == "stderr" else p.STDOUT
    return [p.record(name, str(content.get("text", "")))]


def _error(content: _Content) -> list[Record]:
    body = {
        "ename": content.get("ename", ""),
        "evalue": content.get("evalue", ""),
        "traceback": list(content.get("traceback", [])),
    }
    return [p.record(p.ERROR, body)]


def _error_as_stderr(content: _Content) -> list[Record]:
    return [p.record(p.STDERR, "\n".join(content.get("traceback", [])) + "\n")]


def _bundle(content: _Content) -> dict[str, Any]:
    """A copy of a message's MIME bundle: the record must not share the message's dicts."""
    return {"data": dict(content.get("data", {})), "metadata": dict(content.get("metadata", {}))}


def _execute_result(content: _Content) -> list[Record]:
    body = {**_bundle(content), "execution_count": content.get("execution_count")}
    return [p.record(p.EXECUTE_RESULT, body)]


def _display(msg_type: str) -> _ToRecords:
    """display_data and update_display_data: the bundle and its transient (display_id)."""

    def convert(content: _Content) -> list[Record]:
        body = {**_bundle(content), "transient": dict(content.get("transient", {}))}
        return [p.record(msg_type, body)]

    return convert


def _clear_output(content: _Content) -> list[Record]:
    return [p.record(p.CLEAR_OUTPUT, {"wait": bool(content.get("wait", False))})]


def _reduced(content: _Content) -> list[Record]:
    """The one record a Backend.AI runner keeps of a bundle, if any."""
    reduced = p.base_record_from_bundle(content.get("data", {}))
    return [reduced] if reduced else []


def _dropped(content: _Content) -> list[Record]:
    return []


#: The lossless ``jupyter`` console (protocol §2.2).
_JUPYTER: dict[str, _ToRecords] = {
    "stream": _stream,
    p.ERROR: _error,
    p.EXECUTE_RESULT: _execute_result,
    p.DISPLAY_DATA: _display(p.DISPLAY_DATA),
    p.UPDATE_DISPLAY_DATA: _display(p.UPDATE_DISPLAY_DATA),
    p.CLEAR_OUTPUT: _clear_output,
}

#: The base layer, reduced as a Backend.AI runner does (protocol §1.5).
_BASE: dict[str, _ToRecords] = {
    "stream": _stream,
    p.ERROR: _error_as_stderr,
    p.EXECUTE_RESULT: _reduced,
    p.DISPLAY_DATA: _reduced,
    p.UPDATE_DISPLAY_DATA: _dropped,
    p.CLEAR_OUTPUT: _dropped,
}


def records_from_iopub(msg_type: str, content: Mapping[str, Any], *, jupyter: bool) -> list[Record]:
    """The console records for one IOPub message of the remote kernel.

    Returns ``[]`` for messages that carry no output (status, execute_input, comms) and, in the
    base layer, for the types a Backend.AI runner drops (update_display_data, clear_output).
    """
    convert = (_JUPYTER if jupyter else _BASE).get(msg_type)
    return convert(content) if convert else []


def comm_record(
    msg_type: str,
    content: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    buffers: Iterable[bytes | memoryview] = (),
) -> Record:
    """The record of a comm message (``comms`` extension): content and metadata as they are
    (ipywidgets puts its protocol version in the metadata), binary buffers base64-encoded."""
    return p.record(msg_type, {
        "content": dict(content), "metadata": dict(metadata or {}),
        "buffers": [base64.b64encode(bytes(b)).decode("ascii") for b in buffers],
    })  # fmt: skip


def records_from_message(msg: Mapping[str, Any], *, jupyter: bool, comms: bool) -> list[Record]:
    """:func:`records_from_iopub` for a whole IOPub message (header, metadata, buffers): with
    ``comms`` (and the lossless console), comm messages become comm records too."""
    msg_type = str(msg.get("header", {}).get("msg_type") or msg.get("msg_type", ""))
    content = msg.get("content", {})
    if comms and jupyter and msg_type in p.COMM_RECORD_TYPES:
        return [comm_record(msg_type, content, msg.get("metadata"), msg.get("buffers") or ())]
    return records_from_iopub(msg_type, content, jupyter=jupyter)


_KNOWN_IOPUB = _SILENT_IOPUB | _JUPYTER.keys() | _BASE.keys()


def is_output_message(msg_type: str) -> bool:
    """True for IOPub types that :func:`records_from_iopub` knows (output or deliberately none)."""
    return msg_type in _KNOWN_IOPUB


# -- records → IOPub (the proxy side, protocol §3) ------------------------------------------------
def _to_stream(name: str) -> _FromRecord:
    return lambda data: ("stream", {"name": name, "text": str(data)})


def _shown(mime: str, payload: Any) -> _Message:
    return "display_data", {"data": {mime: payload}, "metadata": {}, "transient": {}}


def _from_media(data: Any) -> _Message | None:
    """``[mime, payload]``: a data URI is unwrapped to bare base64, JSON text to its value."""
    if not isinstance(data, (list, tuple)) or len(data) != 2:
        return None
    mime, payload = str(data[0]), data[1]
    if isinstance(payload, str):
        unwrapped = p.unwrap_data_uri(payload)
        if unwrapped is not None:
            payload = unwrapped[1]
        elif p.is_json_mime(mime):
            try:
                payload = json.loads(payload)
            except ValueError:
                pass
    return _shown(mime, payload)


def _of_dict(convert: Callable[[dict[str, Any]], _Message]) -> _FromRecord:
    """A Jupyter record's data is a dict; anything else is not showable."""
    return lambda data: convert(data) if isinstance(data, dict) else None


def _from_execute_result(data: dict[str, Any]) -> _Message:
    return p.EXECUTE_RESULT, {
        "data": data.get("data", {}),
        "metadata": data.get("metadata", {}),
        "execution_count": data.get("execution_count"),
    }


def _from_display(msg_type: str) -> Callable[[dict[str, Any]], _Message]:
    def convert(data: dict[str, Any]) -> _Message:
        return msg_type, {
            "data": data.get("data", {}),
            "metadata": data.get("metadata", {}),
            "transient": data.get("transient", {}),
        }

    return convert


def _from_clear_output(data: dict[str, Any]) -> _Message:
    return p.CLEAR_OUTPUT, {"wait": bool(data.get("wait", False))}


def _from_error(data: dict[str, Any]) -> _Message:
    return p.ERROR, {
        "ename": str(data.get("ename", "")),
        "evalue": str(data.get("evalue", "")),
        "traceback": [str(line) for line in data.get("traceback", [])],
    }


_FROM_RECORD: dict[str, _FromRecord] = {
    p.STDOUT: _to_stream(p.STDOUT),
    p.STDERR: _to_stream(p.STDERR),
    p.MEDIA: _from_media,
    p.HTML: lambda data: _shown("text/html", str(data)),
    p.EXECUTE_RESULT: _of_dict(_from_execute_result),
    p.DISPLAY_DATA: _of_dict(_from_display(p.DISPLAY_DATA)),
    p.UPDATE_DISPLAY_DATA: _of_dict(_from_display(p.UPDATE_DISPLAY_DATA)),
    p.CLEAR_OUTPUT: _of_dict(_from_clear_output),
    p.ERROR: _of_dict(_from_error),
}


def iopub_from_record(rec: Record) -> tuple[str, dict[str, Any]] | None:
    """The ``(msg_type, content)`` the proxy publishes for a console record (protocol §3).

    ``execute_result`` keeps the record's ``execution_count``; the kernel may override it with
    the reply's. Returns ``None`` for a record Jupyter cannot show.
    """
    kind, data = rec[0], rec[1]
    convert = _FROM_RECORD.get(kind) if isinstance(kind, str) else None  # JSON may give any kind
    return convert(data) if convert else None


@dataclass(frozen=True)
class CommMessage:
    """A comm record as the message the proxy publishes (buffers decoded)."""

    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)


def comm_from_record(rec: Record) -> CommMessage | None:
    """The comm message a comm record stands for; None when it is not a well-formed one."""
    kind, data = rec[0], rec[1]
    if kind not in p.COMM_RECORD_TYPES or not isinstance(data, dict):
        return None
    content, metadata, buffers = (
        data.get("content"),
        data.get("metadata") or {},
        data.get("buffers") or [],
    )
    if not isinstance(content, dict) or not isinstance(metadata, dict):
        return None
    if not isinstance(buffers, list) or not all(isinstance(b, str) for b in buffers):
        return None
    try:
        decoded = [base64.b64decode(b, validate=True) for b in buffers]
    except (binascii.Error, ValueError):
        return None
    return CommMessage(str(kind), content, metadata, decoded)


#: A widget view needs comms with the kernel, which the run-loop API does not carry.
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_TEXT = "[an interactive widget: it needs a direct kernel connection]"


def without_widget_views(content: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A display bundle without its widget view (a frontend could only show "model not found").

    The bundle's other types (ipywidgets always adds text/plain) remain; a bundle with nothing
    else gets a short text. Returns the content and whether a view was removed.
    """
    data = content.get("data")
    if not isinstance(data, dict) or WIDGET_VIEW_MIME not in data:
        return content, False
    kept = {mime: value for mime, value in data.items() if mime != WIDGET_VIEW_MIME}
    return {**content, "data": kept or {"text/plain": WIDGET_TEXT}}, True
