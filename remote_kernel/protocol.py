"""The run-loop wire contract (``shared/protocol.md``), as pure data and functions.

No sockets, no event loop, no clock. The server builds its responses with these functions and the
client parses with them, so a field name lives in exactly one place.

A console *record* is a two-item list ``[type, data]``; on the wire it is JSON, in Python a
``list`` (never a tuple, so a record compares equal to its JSON round trip).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidAPIParamsError, ProtocolError

#: The API version our server answers with (the newest Backend.AI manager's).
API_VERSION = "v9.20250722"
#: Versions a Backend.AI manager accepts in ``X-BackendAI-Version``.
VALID_VERSIONS = frozenset(
    {
        "v4.20181215", "v4.20190115", "v4.20190315", "v4.20190615", "v5.20191215",
        "v6.20200815", "v6.20220315", "v6.20220615", "v6.20221201", "v6.20230315",
        "v7.20230615", "v8.20240315", "v8.20240915", "v9.20250722",
    }
)  # fmt: skip

# -- extensions (§2.1) ------------------------------------------------------------------------
FEATURE_JUPYTER_CONSOLE = "jupyter-console"
FEATURE_OUTPUT_CURSOR = "output-cursor"
FEATURE_KERNEL_INFO = "kernel-info"
FEATURE_INSPECT = "inspect"
FEATURE_IS_COMPLETE = "is-complete"
#: A repeated ``query`` runId is the same run; interrupts name their run (docs/protocol.md).
FEATURE_IDEMPOTENT_RUNS = "idempotent-runs"
#: ``GET /stream/session/{id}/channel``: one WebSocket per session (docs/protocol.md).
FEATURE_PUSH_CHANNEL = "push-channel"
#: Jupyter comms both ways, over the push channel (docs/protocol.md, "Comms").
FEATURE_COMMS = "comms"
#: ``config.lease`` on create: the session is destroyed when its client is gone
#: ``orphanTimeout`` s (``GET /``); any request naming it, or its open channel, renews it.
FEATURE_LEASES = "leases"
FEATURES = (
    FEATURE_JUPYTER_CONSOLE,
    FEATURE_OUTPUT_CURSOR,
    FEATURE_KERNEL_INFO,
    FEATURE_INSPECT,
    FEATURE_IS_COMPLETE,
    FEATURE_IDEMPOTENT_RUNS,
    FEATURE_PUSH_CHANNEL,
    FEATURE_COMMS,
    FEATURE_LEASES,
)
CONSOLE_JUPYTER = "jupyter"

# -- run statuses (§1.5) ----------------------------------------------------------------------
CONTINUED = "continued"
WAITING_INPUT = "waiting-input"
FINISHED = "finished"
CLEAN_FINISHED = "clean-finished"
BUILD_FINISHED = "build-finished"
EXEC_TIMEOUT = "exec-timeout"
#: Statuses after which a client sends ``continue`` (or ``input``) for the same run.
NON_TERMINAL = frozenset({CONTINUED, WAITING_INPUT, CLEAN_FINISHED, BUILD_FINISHED})

MODES = ("query", "continue", "input", "batch", "complete")

# -- console record types ---------------------------------------------------------------------
STDOUT = "stdout"
STDERR = "stderr"
MEDIA = "media"
HTML = "html"
EXECUTE_RESULT = "execute_result"
DISPLAY_DATA = "display_data"
UPDATE_DISPLAY_DATA = "update_display_data"
CLEAR_OUTPUT = "clear_output"
ERROR = "error"
JUPYTER_RECORD_TYPES = frozenset(
    {EXECUTE_RESULT, DISPLAY_DATA, UPDATE_DISPLAY_DATA, CLEAR_OUTPUT, ERROR}
)
#: Comm records (``comms``): ``[type, {"content", "metadata", "buffers": [base64, ...]}]``.
COMM_OPEN = "comm_open"
COMM_MSG = "comm_msg"
COMM_CLOSE = "comm_close"
COMM_RECORD_TYPES = frozenset({COMM_OPEN, COMM_MSG, COMM_CLOSE})
#: Frontend messages a ``comms`` client forwards to the remote kernel's shell channel.
SHELL_FORWARDED = frozenset({COMM_OPEN, COMM_MSG, COMM_CLOSE, "comm_info_request"})

Record = list[Any]

SESSION_NAME_RE = re.compile(r"^(?=.{4,64}\Z)\w[\w.-]*\w\Z", re.ASCII)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_DATA_URI_RE = re.compile(r"^data:([^;,]+)(;[^,]*)?,(.*)$", re.DOTALL)


# -- records ----------------------------------------------------------------------------------
def record(kind: str, data: Any) -> Record:
    """A console record ``[kind, data]``."""
    return [kind, data]


def merge_console(records: Iterable[Record]) -> list[Record]:
    """Merge consecutive stdout records into one, likewise stderr; interleaving is kept."""
    out: list[Record] = []
    for rec in records:
        if out and rec[0] in (STDOUT, STDERR) and out[-1][0] == rec[0]:
            out[-1] = [rec[0], out[-1][1] + rec[1]]
        else:
            out.append([rec[0], rec[1]])
    return out


def is_text_mime(mime: str) -> bool:
    """Text and XML types travel as raw strings in base-layer media records; others as data URIs."""
    return (
        mime.startswith("text/")
        or mime.endswith("+xml")
        or mime in ("application/xml", "application/javascript")
    )


def is_json_mime(mime: str) -> bool:
    """JSON MIME types carry JSON values (not strings) in Jupyter bundles."""
    return mime == "application/json" or mime.endswith("+json")


def data_uri(mime: str, b64: str) -> str:
    """``data:<mime>;base64,<b64>`` (Jupyter bundles already hold binary data as base64)."""
    return f"data:{mime};base64,{b64}"


def unwrap_data_uri(value: str) -> tuple[str, str] | None:
    """``(mime, bare base64)`` from a data URI, or None if ``value`` is not one.

    A non-base64 data URI (percent-encoded text) is re-encoded to base64, so the caller always
    gets what a Jupyter ``display_data`` bundle expects for a binary type.
    """
    match = _DATA_URI_RE.match(value)
    if not match:
        return None
    mime, params, payload = match.group(1), match.group(2) or "", match.group(3)
    if ";base64" in params:
        return mime, payload
    from urllib.parse import unquote_to_bytes

    return mime, base64.b64encode(unquote_to_bytes(payload)).decode("ascii")


def base_record_from_bundle(data: Mapping[str, Any]) -> Record | None:
    """Reduce a MIME bundle the way a real Backend.AI runner does (base-layer fidelity).

    ``text/plain`` is dropped when anything else is present and only the first remaining type
    survives; plain text alone becomes stdout (no newline added); HTML becomes a ``media``
    record with raw HTML; images become data URIs; text/XML types stay raw text.
    """
    mimes = [m for m in data if m != "text/plain"] or [m for m in data if m == "text/plain"]
    if not mimes:
        return None
    mime = mimes[0]
    value = data[mime]
    if mime == "text/plain":
        return record(STDOUT, _as_text(value))
    if is_json_mime(mime):
        return record(MEDIA, [mime, json.dumps(value)])
    if is_text_mime(mime):
        return record(MEDIA, [mime, _as_text(value)])
    return record(MEDIA, [mime, data_uri(mime, _as_text(value).replace("\n", ""))])


def _as_text(value: Any) -> str:
    if isinstance(value, list):  # nbformat multi-line strings
        return "".join(str(v) for v in value)
    return str(value)


# -- errors in base-layer runs ------------------------------------------------------------------
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ENAME_RE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning|Iteration)\w*)"
                       r"(?::\s?(.*))?$")  # fmt: skip


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes (IPython tracebacks are coloured)."""
    return _ANSI_RE.sub("", text)


def ename_evalue_from_traceback(text: str) -> tuple[str, str] | None:
    """``(ename, evalue)`` from the last meaningful line of a traceback text, if it parses.

    ``NameError: name 'x' is not defined`` gives ``("NameError", "name 'x' is not defined")``.
    """
    for line in reversed(strip_ansi(text).splitlines()):
        line = line.strip()
        if not line:
            continue
        match = _ENAME_RE.match(line)
        if match:
            return match.group(1), (match.group(2) or "").strip()
        return None
    return None


# -- request text ------------------------------------------------------------------------------
def check_text(value: str, what: str) -> str:
    """``value``, if it is Unicode text a kernel, a file system and UTF-8 can all take.

    A lone surrogate (U+D800 to U+DFFF: JSON lets a client write ``"\\ud800"``) can be encoded
    by none of them; it is refused with :class:`InvalidAPIParamsError` naming ``what``.
    """
    match = _SURROGATE_RE.search(value)
    if match is not None:
        raise InvalidAPIParamsError(
            f"{what} contains a lone surrogate (U+{ord(match.group()):04X} at index "
            f"{match.start()}): text must be valid Unicode; send the character itself or a "
            "complete surrogate pair."
        )
    return value


def has_lone_surrogate(value: str) -> bool:
    """Whether ``value`` holds a code point U+D800 to U+DFFF (which UTF-8 cannot encode)."""
    return _SURROGATE_RE.search(value) is not None


def replace_lone_surrogates(value: str) -> str:
    """``value`` with every lone surrogate replaced by U+FFFD (the replacement character)."""
    return _SURROGATE_RE.sub("\ufffd", value)


def check_json_text(value: Any, what: str) -> None:
    """:func:`check_text` on every string of a parsed JSON value, object keys included.

    Iterative (a body nested as deep as the parser allows costs no recursion); the error names
    where the bad string is, e.g. ``'config.environ.A'``.
    """
    stack: list[tuple[Any, Any]] = [(value, None)]  # (value, its location as a linked list)
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            check_text(item, _location(what, where))
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key, f"A key in {_location(what, where)}")
                stack.append((child, (where, key)))
        elif isinstance(item, list):
            stack.extend((child, (where, i)) for i, child in enumerate(item))


def _location(what: str, where: Any) -> str:
    keys: list[Any] = []
    while where is not None:
        where, key = where
        keys.append(key)
    if not keys:
        return what
    path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in reversed(keys))
    return f"{what} at '{path.lstrip('.')}'"


def loads_json(raw: str | bytes, what: str = "JSON body") -> Any:
    """Parse JSON from a client: any malformed input is :class:`InvalidAPIParamsError`.

    That covers invalid JSON or encoding, nesting too deep for the parser (``RecursionError``)
    and lone surrogates in any string (:func:`check_json_text`). ``what`` names the input in
    the message ("Malformed JSON body: ...").
    """
    try:
        value = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidAPIParamsError(f"Malformed {what}: {exc}.") from None
    except RecursionError:
        raise InvalidAPIParamsError(f"Malformed {what}: nested too deeply to parse.") from None
    check_json_text(value, f"The {what}")
    return value


# -- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecuteRequest:
    """A parsed ``POST /session/{id}`` body (§1.5, §2.2 to §2.4)."""

    mode: str
    code: str
    run_id: str | None
    options: dict[str, Any] = field(default_factory=dict)
    cursor: int | None = None

    @property
    def jupyter_console(self) -> bool:
        return self.options.get("console") == CONSOLE_JUPYTER

    @property
    def input_seq(self) -> int | None:
        seq = self.options.get("input_seq")
        return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def parse_execute_request(body: Any) -> ExecuteRequest:
    """Validate an execute body; raise :class:`InvalidAPIParamsError` naming the bad field.

    Accepts ``runId`` and ``run_id`` (§1.5); a missing ``mode`` is the SDK's broken
    ``execute(mode="complete")`` call (it sends only code and options), taken as ``complete``.
    """
    if not isinstance(body, dict):
        raise InvalidAPIParamsError("The request body must be a JSON object.")
    options = body.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidAPIParamsError("'options' must be a JSON object.")
    mode = body.get("mode")
    if mode is None:
        mode = "complete" if "options" in body else None
    if mode not in MODES:
        raise InvalidAPIParamsError(
            f"'mode' must be one of {', '.join(MODES)}; got {body.get('mode')!r}."
        )
    code = body.get("code")
    if code is None:
        code = ""
    if not isinstance(code, str):
        raise InvalidAPIParamsError("'code' must be a string.")
    run_id = body.get("run_id") or body.get("runId")
    if run_id is not None and not isinstance(run_id, str):
        raise InvalidAPIParamsError("'runId' must be a string.")
    if mode in ("continue", "input") and not run_id:
        raise InvalidAPIParamsError(f"'{mode}' requires the runId of the run to continue.")
    cursor = body.get("cursor")
    if cursor is None:
        cursor = options.get("cursor")
    if cursor is not None and (
        not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0
    ):
        raise InvalidAPIParamsError("'cursor' must be a non-negative integer.")
    return ExecuteRequest(mode=mode, code=code, run_id=run_id, options=options, cursor=cursor)


# -- responses -----------------------------------------------------------------------------------
def run_result(
    run_id: str,
    status: str,
    console: list[Record],
    *,
    exit_code: int | None = None,
    options: dict[str, Any] | None = None,
    cursor: int | None = None,
    reply: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``{"result": {...}}`` body of an execute response."""
    result: dict[str, Any] = {
        "runId": run_id,
        "status": status,
        "exitCode": exit_code,
        "options": options,
        "files": [],
        "console": console,
    }
    if cursor is not None:
        result["cursor"] = cursor
    if reply is not None:
        result["reply"] = reply
    return {"result": result}


@dataclass(frozen=True)
class RunResult:
    """A parsed execute response, as the client sees it."""

    run_id: str
    status: str
    console: list[Record]
    exit_code: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cursor: int | None = None
    reply: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status not in NON_TERMINAL


def parse_run_result(body: Any) -> RunResult:
    """Parse ``{"result": {...}}``; raise :class:`ProtocolError` on a malformed body."""
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict) or not isinstance(result.get("status"), str):
        raise ProtocolError(f"Execute response has no result status: {str(body)[:200]}")
    console = result.get("console") or []
    if not isinstance(console, list):
        raise ProtocolError("Execute response 'console' is not a list.")
    records: list[Record] = []
    for item in console:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str):
            raise ProtocolError(f"Malformed console record: {str(item)[:200]}")
        records.append([item[0], item[1]])
    cursor = result.get("cursor")
    reply = result.get("reply")
    return RunResult(
        run_id=str(result.get("runId") or result.get("run_id") or ""),
        status=result["status"],
        console=records,
        exit_code=result.get("exitCode"),
        options=result.get("options") or {},
        cursor=cursor if isinstance(cursor, int) else None,
        reply=reply if isinstance(reply, dict) else None,
    )
