"""The Jupyter replies the proxy sends, shaped from what the server answered. Pure.

* ``execute_reply``: from the run's ``reply`` (lossless console) or, against a base-layer server,
  from its exit code and the traceback text it streamed (protocol §3); execution counts kept the
  way IPython keeps them (:class:`ExecutionCounter`);
* ``kernel_info``: the remote kernel's ``language_info``, banner and help links
  (:func:`kernel_info_fields`);
* ``complete_reply``, ``inspect_reply``, ``is_complete_reply`` from the server's results, with a
  safe empty answer whenever the server has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .. import protocol as p
from ..protocol import Record, RunResult

#: Features ipykernel 7 advertises for every subclass that a proxy cannot honour.
UNSUPPORTED_FEATURES = ("kernel subshells", "debugger")

PYTHON_LANGUAGE_INFO: dict[str, Any] = {
    "name": "python",
    "mimetype": "text/x-python",
    "file_extension": ".py",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "pygments_lexer": "ipython3",
    "nbconvert_exporter": "python",
}

STDIN_REFUSED = "raw_input was called, but this frontend does not support input requests."


# -- execution counts ----------------------------------------------------------------------------
@dataclass
class ExecutionCounter:
    """The next execution count: the remote's when its reply has one, else counted like IPython
    (only stored, non-silent cells take a number)."""

    next: int = 1

    def from_reply(self, count: int) -> int:
        self.next = count + 1
        return count

    def advance(self, store_history: bool) -> int:
        if store_history:
            self.next += 1
            return self.next - 1
        return self.next - 1


# -- execute_reply -------------------------------------------------------------------------------
def error_content(ename: str, evalue: str) -> dict[str, Any]:
    """The IOPub ``error`` content of an error the proxy itself reports (one red line)."""
    return {"ename": ename, "evalue": evalue, "traceback": [f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]}


def error_reply(ename: str, evalue: str, count: int) -> dict[str, Any]:
    return {"status": "error", "execution_count": count, **error_content(ename, evalue)}


def execute_reply(
    result: RunResult, counter: ExecutionCounter, *, store_history: bool, stderr: str
) -> dict[str, Any]:
    """The ``execute_reply`` content for a finished run.

    With the lossless console the remote's own reply is used (its count wins). Otherwise the
    status follows the exit code, and ``ename``/``evalue`` come from the last traceback line of
    the run's stderr (already streamed, so no second error output is published).
    """
    reply = dict(result.reply) if isinstance(result.reply, dict) else None
    if reply is not None and reply.get("status"):
        count = reply.get("execution_count")
        if isinstance(count, int) and not isinstance(count, bool):
            counter.from_reply(count)
        else:
            reply["execution_count"] = counter.advance(store_history)
        reply.setdefault("user_expressions", {})
        reply.setdefault("payload", [])
        return reply
    count = counter.advance(store_history)
    if result.status == p.EXEC_TIMEOUT:
        return error_reply("TimeoutError", "the remote run hit its execution time limit", count)
    if result.exit_code not in (0, None):
        parsed = p.ename_evalue_from_traceback(stderr)
        ename, evalue = parsed or ("RemoteError", f"exit code {result.exit_code}")
        return {
            "status": "error",
            "execution_count": count,
            "ename": ename,
            "evalue": evalue,
            "traceback": p.strip_ansi(stderr).splitlines() if stderr else [],
        }
    return {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}


def split_base_prompt(result: RunResult, jupyter: bool) -> tuple[list[Record], str]:
    """A base-layer ``waiting-input`` carries its prompt as trailing stdout: take it out.

    Returns the records to publish and the prompt (``""`` when there is none to take).
    """
    records = list(result.console)
    if (
        jupyter
        or result.status != p.WAITING_INPUT
        or not records
        or records[-1][0] != p.STDOUT
        or not isinstance(records[-1][1], str)
    ):
        return records, ""
    text = records.pop()[1]
    head, sep, prompt = text.rpartition("\n")
    if head or sep:
        records.append([p.STDOUT, head + sep])
    return records, prompt


# -- kernel_info ---------------------------------------------------------------------------------
def kernel_info_fields(remote: Any, session_name: str) -> dict[str, Any]:
    """``language_info``, ``banner`` and ``help_links`` from the remote ``kernel_info_reply``.

    Missing or malformed fields are left out (the kernel keeps its defaults for them).
    """
    if not isinstance(remote, dict):
        return {}
    fields: dict[str, Any] = {}
    language_info = remote.get("language_info")
    if isinstance(language_info, dict) and language_info.get("name"):
        merged = dict(PYTHON_LANGUAGE_INFO) if language_info["name"] == "python" else {}
        merged.update(language_info)
        fields["language_info"] = merged
    if isinstance(remote.get("banner"), str):
        fields["banner"] = f"{remote['banner']}\n(remote session {session_name!r})"
    if isinstance(remote.get("help_links"), list):
        fields["help_links"] = [
            link for link in remote["help_links"]
            if isinstance(link, dict) and {"text", "url"} <= link.keys()
        ]  # fmt: skip
    return fields


# -- introspection ---------------------------------------------------------------------------------
def empty_complete(code: str, cursor_pos: int | None) -> dict[str, Any]:
    """No matches, with the cursor range of the word being completed."""
    pos = len(code) if cursor_pos is None else cursor_pos
    token = re.search(r"[\w.]*$", code[:pos])
    start = pos - len(token.group(0) if token else "")
    return {"status": "ok", "matches": [], "cursor_start": start, "cursor_end": pos,
            "metadata": {}}  # fmt: skip


def complete_reply(result: dict[str, Any], code: str, cursor_pos: int | None) -> dict[str, Any]:
    """From ``/complete``'s result: the Jupyter fields when present, else the SDK's
    ``suggestions`` over the word at the cursor."""
    reply = empty_complete(code, cursor_pos)
    if isinstance(result.get("matches"), list):
        reply["matches"] = [str(m) for m in result["matches"]]
        reply["cursor_start"] = int(result.get("cursor_start", reply["cursor_start"]))
        reply["cursor_end"] = int(result.get("cursor_end", reply["cursor_end"]))
        if isinstance(result.get("metadata"), dict):
            reply["metadata"] = result["metadata"]
    elif isinstance(result.get("suggestions"), list):
        reply["matches"] = [str(m) for m in result["suggestions"]]
    return reply


EMPTY_INSPECT: dict[str, Any] = {"status": "ok", "found": False, "data": {}, "metadata": {}}


def inspect_reply(result: dict[str, Any] | None) -> dict[str, Any]:
    if result is None or result.get("status") != "ok":
        return dict(EMPTY_INSPECT)
    return {
        "status": "ok",
        "found": bool(result.get("found")),
        "data": result.get("data") or {},
        "metadata": result.get("metadata") or {},
    }


def is_complete_reply(result: dict[str, Any] | None) -> dict[str, Any]:
    if not result or result.get("status") not in ("complete", "incomplete", "invalid"):
        return {"status": "unknown"}
    reply = {"status": result["status"]}
    if result["status"] == "incomplete":
        reply["indent"] = str(result.get("indent", ""))
    return reply
