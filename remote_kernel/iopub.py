"""Console records ↔ Jupyter IOPub messages, both directions. Pure.

* Server side: :func:`records_from_iopub` turns one IOPub message of the remote kernel into the
  console records of a run, either lossless (``jupyter`` console, protocol §2.2) or reduced the
  way a real Backend.AI runner reduces them (base layer, §1.5).
* Client side: :func:`iopub_from_record` turns one console record into the ``(msg_type,
  content)`` the proxy kernel publishes (protocol §3); ``None`` means "not showable", which the
  kernel reports once, visibly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import protocol as p
from .protocol import Record

#: IOPub message types that carry no output of a run (handled elsewhere or irrelevant).
_SILENT_IOPUB = frozenset(
    {"status", "execute_input", "comm_open", "comm_msg", "comm_close", "shutdown_reply",
     "iopub_welcome", "debug_event"}
)  # fmt: skip


def records_from_iopub(msg_type: str, content: Mapping[str, Any], *, jupyter: bool) -> list[Record]:
    """The console records for one IOPub message of the remote kernel.

    Returns ``[]`` for messages that carry no output (status, execute_input, comms) and, in the
    base layer, for the types a Backend.AI runner drops (update_display_data, clear_output).
    """
    if msg_type == "stream":
        name = p.STDERR if content.get("name") == "stderr" else p.STDOUT
        return [p.record(name, str(content.get("text", "")))]
    if msg_type == "error":
        if jupyter:
            return [
                p.record(
                    p.ERROR,
                    {
                        "ename": content.get("ename", ""),
                        "evalue": content.get("evalue", ""),
                        "traceback": list(content.get("traceback", [])),
                    },
                )
            ]
        return [p.record(p.STDERR, "\n".join(content.get("traceback", [])) + "\n")]
    if msg_type in (p.EXECUTE_RESULT, p.DISPLAY_DATA, p.UPDATE_DISPLAY_DATA):
        if jupyter:
            body: dict[str, Any] = {
                "data": dict(content.get("data", {})),
                "metadata": dict(content.get("metadata", {})),
            }
            if msg_type == p.EXECUTE_RESULT:
                body["execution_count"] = content.get("execution_count")
            else:
                body["transient"] = dict(content.get("transient", {}))
            return [p.record(msg_type, body)]
        if msg_type == p.UPDATE_DISPLAY_DATA:
            return []
        reduced = p.base_record_from_bundle(content.get("data", {}))
        return [reduced] if reduced else []
    if msg_type == p.CLEAR_OUTPUT:
        return (
            [p.record(p.CLEAR_OUTPUT, {"wait": bool(content.get("wait", False))})]
            if jupyter
            else []
        )
    return []


def is_output_message(msg_type: str) -> bool:
    """True for IOPub types that :func:`records_from_iopub` knows (output or deliberately none)."""
    return msg_type in _SILENT_IOPUB or msg_type in (
        "stream", "error", p.EXECUTE_RESULT, p.DISPLAY_DATA, p.UPDATE_DISPLAY_DATA, p.CLEAR_OUTPUT
    )  # fmt: skip


def iopub_from_record(rec: Record) -> tuple[str, dict[str, Any]] | None:
    """The ``(msg_type, content)`` the proxy publishes for a console record (protocol §3).

    ``execute_result`` keeps the record's ``execution_count``; the kernel may override it with
    the reply's. Returns ``None`` for a record Jupyter cannot show.
    """
    kind, data = rec[0], rec[1]
    if kind in (p.STDOUT, p.STDERR):
        return "stream", {"name": kind, "text": str(data)}
    if kind == p.MEDIA:
        if not isinstance(data, (list, tuple)) or len(data) != 2:
            return None
        mime, payload = str(data[0]), data[1]
        if isinstance(payload, str):
            unwrapped = p.unwrap_data_uri(payload)
            if unwrapped is not None:
                payload = unwrapped[1]
            elif p.is_json_mime(mime):
                import json

                try:
                    payload = json.loads(payload)
                except ValueError:
                    pass
        return "display_data", {"data": {mime: payload}, "metadata": {}, "transient": {}}
    if kind == p.HTML:
        return "display_data", {"data": {"text/html": str(data)}, "metadata": {}, "transient": {}}
    if not isinstance(data, dict):
        return None
    if kind == p.EXECUTE_RESULT:
        return kind, {
            "data": data.get("data", {}),
            "metadata": data.get("metadata", {}),
            "execution_count": data.get("execution_count"),
        }
    if kind in (p.DISPLAY_DATA, p.UPDATE_DISPLAY_DATA):
        return kind, {
            "data": data.get("data", {}),
            "metadata": data.get("metadata", {}),
            "transient": data.get("transient", {}),
        }
    if kind == p.CLEAR_OUTPUT:
        return kind, {"wait": bool(data.get("wait", False))}
    if kind == p.ERROR:
        return kind, {
            "ename": str(data.get("ename", "")),
            "evalue": str(data.get("evalue", "")),
            "traceback": [str(line) for line in data.get("traceback", [])],
        }
    return None


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
