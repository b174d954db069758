"""The OpenAPI 3.1 description of the server's HTTP API, served unsigned at ``GET /openapi.json``.

Built as Python data from the server's :class:`ServerSettings`, so it lists exactly the routes
:func:`~remote_kernel.server.routes.setup_routes` registers: the extension routes (``inspect``,
``is-complete``, the push channel) only when the server offers them, the security scheme only
when keypair authentication is on. ``tests/test_openapi.py`` checks that every route of the app
is described here and fuzzes the description with schemathesis.

Described: every route and method (``HEAD``, which aiohttp answers for every ``GET``, is not),
path and query parameters, JSON and multipart request bodies, response bodies, and every error as
``application/problem+json`` (the ``Problem`` schema). The WebSocket routes (``/stream/...``) are
``GET`` operations whose ``101`` answer is the upgrade; their frames are in the descriptions and
in docs/protocol.md, as OpenAPI has no way to describe them. The SSE route answers
``text/event-stream``; a valid request is an endless stream.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp import web

from .. import protocol as p
from .._version import __version__
from .appkeys import settings_key
from .settings import ServerSettings

OPENAPI_PATH = "/openapi.json"
PROBLEM_JSON = "application/problem+json"
SECURITY_SCHEME = "BackendAI-HMAC"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A JSON object schema; extra fields are allowed unless ``additionalProperties`` says no."""
    schema: Schema = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = list(required)
    return schema


STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
INT: Schema = {"type": "integer"}
CURSOR: Schema = {"type": "integer", "minimum": 0}
#: Backend.AI session names (protocol §1.4); ``SESSION_NAME_RE`` without its lookahead.
SESSION_NAME: Schema = {
    "type": "string",
    "minLength": 4,
    "maxLength": 64,
    "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*[A-Za-z0-9_]$",
}
FOLDER_NAME: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"}
STATUSES = [
    p.CONTINUED,
    p.WAITING_INPUT,
    p.FINISHED,
    p.CLEAN_FINISHED,
    p.BUILD_FINISHED,
    p.EXEC_TIMEOUT,
]


# -- schemas -------------------------------------------------------------------------------------
def _schemas(settings: ServerSettings) -> dict[str, Schema]:
    ext = settings.offers
    run_id = {**STRING, "description": "The run's id (the SDK sends runId, managers read run_id)."}
    query_options = _obj(
        {
            "console": {"enum": ["jupyter"], "description": "jupyter-console: lossless records."}
            if ext(p.FEATURE_JUPYTER_CONSOLE)
            else {"description": "Ignored: this server offers no jupyter-console."},
            "silent": BOOL,
            "store_history": BOOL,
            "user_expressions": {"type": "object", "additionalProperties": STRING},
            "allow_stdin": BOOL,
            "stop_on_error": BOOL,
            "cursor": CURSOR,
        },
        description="Jupyter execute options, passed to the kernel with console = jupyter.",
    )
    batch_command = {"type": ["string", "null"], "description": 'A shell command; "*": default.'}
    complete_options = _obj(
        {"row": INT, "col": INT, "line": STRING, "post": STRING, "cursor_pos": INT},
        description="Where to complete: cursor_pos in code, or (with empty code) line + post.",
    )

    def mode(name: str, doc: str, options: Schema) -> Schema:
        props = {
            "mode": {"const": name},
            "code": STRING,
            "runId": run_id,
            "run_id": run_id,
            "options": options,
            "cursor": CURSOR,
        }
        schema = _obj(props, ("mode",), description=doc)
        if name in ("continue", "input"):
            schema["anyOf"] = [{"required": ["runId"]}, {"required": ["run_id"]}]
        return schema

    schemas: dict[str, Schema] = {
        "Problem": _obj(
            {
                "type": {
                    "type": "string",
                    "format": "uri",
                    "description": "https://api.backend.ai/probs/<kind>",
                },
                "title": STRING,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {**STRING, "description": "What went wrong (the same text as msg)."},
                "msg": {**STRING, "description": "Backend.AI's name for detail."},
                "data": {"description": "Extra facts, e.g. the available images or folders."},
                "traceback": {**STRING, "description": "Only with ServerApp.debug."},
            },
            ("type", "title", "status", "detail", "msg"),
        ),
        "Hello": _obj(
            {
                "version": {**STRING, "example": p.API_VERSION},
                "manager": STRING,
                "remote_kernel": _obj(
                    {
                        "version": STRING,
                        "features": {"type": "array", "items": STRING},
                        "sandbox": {**STRING, "enum": ["bubblewrap", "none"]},
                        "network": {**BOOL, "description": "Sessions have network access."},
                        "limits": {**STRING, "enum": ["cgroup-v1", "cgroup-v2", "rlimit"]},
                    },
                    ("version", "features", "sandbox", "network", "limits"),
                    description="The extensions offered and how sessions are isolated (absent "
                    "on a base-layer server); see docs/isolation.md.",
                ),
            },
            ("version", "manager"),
        ),
        "CreateSession": _obj(
            {
                "image": {
                    **STRING,
                    "example": "python:3.11",
                    "description": "python[:tag] or an installed kernelspec name.",
                },
                "lang": {**STRING, "description": "Legacy name of image."},
                "name": SESSION_NAME,
                "session_name": SESSION_NAME,
                "clientSessionToken": SESSION_NAME,
                "config": _obj(
                    {
                        "resources": {"type": "object"},
                        "resource_opts": {"type": "object"},
                        "environ": {
                            "type": ["object", "null"],
                            "additionalProperties": STRING,
                            "description": "Added to the kernel's environment.",
                        },
                        "mounts": {"type": "array", "items": FOLDER_NAME},
                        "mount_map": {"type": "object", "additionalProperties": STRING},
                        "mount_ids": {"type": "array", "items": STRING},
                        "mount_id_map": {"type": "object", "additionalProperties": STRING},
                    },
                ),
                "reuseIfExists": {**BOOL, "default": True},
                "enqueueOnly": BOOL,
                "maxWaitSeconds": INT,
                "type": STRING,
                "startupCommand": {"type": ["string", "null"]},
                "bootstrap_script": {"type": ["string", "null"]},
                "tag": {"type": ["string", "null"]},
            },
            anyOf=[{"required": ["image"]}, {"required": ["lang"]}],
            description="Backend.AI's create/get-or-create; fields it accepts and we ignore are "
            "listed for completeness.",
        ),
        "SessionCreated": _obj(
            {
                "sessionId": {**STRING, "format": "uuid"},
                "sessionName": STRING,
                "status": {"const": "RUNNING"},
                "servicePorts": {"type": "array"},
                "created": BOOL,
                "kernelInfo": {
                    "type": "object",
                    "description": "Extension kernel-info: the remote kernel_info_reply.",
                },
            },
            ("sessionId", "sessionName", "status", "servicePorts", "created"),
        ),
        "SessionInfo": _obj(
            {
                "sessionId": STRING,
                "sessionName": STRING,
                "image": STRING,
                "status": STRING,
                "statusInfo": STRING,
                "creationTime": STRING,
                "numQueriesExecuted": INT,
                **(
                    {"kernelInfo": {"type": "object", "description": "kernel_info_reply content"}}
                    if ext(p.FEATURE_KERNEL_INFO)
                    else {}
                ),
            },
            ("sessionId", "sessionName", "image", "status", "creationTime", "numQueriesExecuted"),
        ),
        "SessionList": _obj({"items": {"type": "array", "items": _ref("SessionInfo")}}, ("items",)),
        "Destroyed": _obj({"stats": {"type": "object"}}, ("stats",)),
        "QueryRequest": mode(
            "query", "Run code (a known runId is that run, not a new one).", query_options
        ),
        "ContinueRequest": mode(
            "continue", "Poll the run for its next result.", _obj({"cursor": CURSOR})
        ),
        "InputRequest": mode(
            "input",
            "Answer the prompt of a waiting-input run; code is the line.",
            _obj({"input_seq": INT, "cursor": CURSOR}),
        ),
        "BatchRequest": mode(
            "batch",
            "clean -> build -> exec shell steps in the work dir.",
            _obj(
                {
                    "clean": batch_command,
                    "build": batch_command,
                    "exec": batch_command,
                    "buildLog": BOOL,
                }
            ),
        ),
        "CompleteModeRequest": mode(
            "complete", "Legacy completion through the run loop.", complete_options
        ),
        "ConsoleRecord": {
            "type": "array",
            "prefixItems": [STRING, {}],
            "minItems": 2,
            "maxItems": 2,
            "description": "[type, data]: stdout, stderr, media, html; with jupyter-console also "
            "execute_result, display_data, update_display_data, clear_output, error.",
        },
        "ExecuteResult": _obj(
            {
                "result": _obj(
                    {
                        "runId": STRING,
                        "status": {"enum": STATUSES},
                        "exitCode": {"type": ["integer", "null"]},
                        "options": {"type": ["object", "null"]},
                        "files": {"type": "array"},
                        "console": {"type": "array", "items": _ref("ConsoleRecord")},
                        **({"cursor": CURSOR} if ext(p.FEATURE_OUTPUT_CURSOR) else {}),
                        **({"reply": {"type": "object"}} if ext(p.FEATURE_JUPYTER_CONSOLE) else {}),
                    },
                    ("runId", "status", "exitCode", "console"),
                )
            },
            ("result",),
        ),
        "CompleteRequest": _obj({"code": STRING, "options": complete_options}),
        "CompleteResult": _obj(
            {
                "result": _obj(
                    {
                        "status": {"const": "finished"},
                        "error": {"type": "null"},
                        "suggestions": {"type": "array", "items": STRING},
                        **(
                            {
                                "matches": {"type": "array", "items": STRING},
                                "cursor_start": INT,
                                "cursor_end": INT,
                                "metadata": {"type": "object"},
                            }
                            if ext(p.FEATURE_INSPECT)
                            else {}
                        ),
                    },
                    ("status", "error", "suggestions"),
                )
            },
            ("result",),
        ),
        "Logs": _obj({"result": _obj({"logs": STRING}, ("logs",))}, ("result",)),
        "Upload": _obj(
            {"src": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            ("src",),
            additionalProperties=False,
            description="One part per file, its filename the path in the work dir "
            "(percent-decoded). The SDK names the field src; the server reads every part.",
        ),
        "DownloadRequest": _obj({"files": {"type": "array", "items": STRING, "minItems": 1}}),
        "FilesRequest": _obj({"path": STRING}),
        "FileListing": _obj(
            {
                "files": {
                    **STRING,
                    "description": "A JSON string: [{filename, size, mode, ctime, mtime, atime}].",
                },
                "errors": STRING,
                "abspath": STRING,
            },
            ("files", "errors", "abspath"),
        ),
        "CreateFolder": _obj(
            {
                "name": FOLDER_NAME,
                "host": STRING,
                "usage_mode": STRING,
                "permission": STRING,
                "cloneable": BOOL,
                "group": {"description": "Refused: group folders are not supported."},
                "unmanaged_path": {"description": "Refused: unmanaged folders are not supported."},
            },
            ("name",),
        ),
        "Folder": _obj(
            {
                "name": STRING,
                "id": STRING,
                "host": STRING,
                "permission": STRING,
                "status": STRING,
                "created_at": STRING,
                "is_owner": BOOL,
            },
            ("name", "id", "host", "permission", "status"),
        ),
        "FolderInfo": {
            "allOf": [
                _ref("Folder"),
                _obj({"num_files": INT, "used_bytes": INT}, ("num_files", "used_bytes")),
            ]
        },
        "FolderName": _obj({"name": STRING, "vfolder_name": STRING, "vfolderName": STRING}),
        "FolderId": _obj({"id": STRING, "name": STRING}, ("id", "name")),
        "DeleteFolder": _obj({"id": STRING, "vfolderId": STRING}),
    }
    if ext(p.FEATURE_IDEMPOTENT_RUNS):
        schemas["InterruptRequest"] = _obj(
            {"runId": STRING, "run_id": STRING, "interruptId": STRING},
            description="idempotent-runs: interrupt only that run, once per interruptId.",
        )
    if ext(p.FEATURE_INSPECT):
        schemas["InspectRequest"] = _obj(
            {"code": STRING, "cursor_pos": INT, "detail_level": {"enum": [0, 1]}}, ("code",)
        )
    if ext(p.FEATURE_IS_COMPLETE):
        schemas["IsCompleteRequest"] = _obj({"code": STRING}, ("code",))
    if ext(p.FEATURE_INSPECT) or ext(p.FEATURE_IS_COMPLETE):
        schemas["KernelReply"] = _obj({"result": {"type": "object"}}, ("result",))
    return schemas


# -- operations ----------------------------------------------------------------------------------
def _json(schema: Schema, media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _body(schema: Schema, *, required: bool = False, description: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {**_json(schema), "required": required}
    if description:
        body["description"] = description
    return body


_ERRORS = {
    400: (
        "invalid-api-params (a malformed body, query or path), invalid-auth-params (clock "
        "skew, malformed Authorization) or session-already-exists"
    ),
    401: "auth-failed: unknown access key or a wrong signature",
    404: "object-not-found",
    409: "vfolder-already-exists",
    413: "request-too-large: the body or the files exceed a server limit",
    429: "too-many-sessions: the key holds ServerApp.max_sessions_per_key sessions",
}


class _Ops:
    """Builds operations with the error responses that apply to this server."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings

    def op(
        self,
        op_id: str,
        summary: str,
        ok: dict[str, Any],
        *,
        tags: tuple[str, ...],
        errors: tuple[int, ...] = (),
        params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        public: bool = False,
        deprecated: bool = False,
        description: str = "",
    ) -> dict[str, Any]:
        codes = {400, 413, *errors}
        if not public and self.settings.auth_required:
            codes.add(401)
        responses = {**ok}
        for code in sorted(codes):
            responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
        responses["default"] = {"$ref": "#/components/responses/Default"}
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "tags": list(tags),
            "responses": responses,
        }
        if description:
            op["description"] = description
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = body
        if public:
            op["security"] = []
            op["responses"] = {k: v for k, v in responses.items() if k not in ("400", "413")}
        if deprecated:
            op["deprecated"] = True
        return op


def _ok(
    code: int, description: str, schema: Schema | None = None, media: str = "application/json"
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response.update(_json(schema, media))
    return {str(code): response}


def _param(
    name: str,
    where: str,
    schema: Schema,
    description: str = "",
    required: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    param = {"name": name, "in": where, "schema": schema, "required": required or where == "path"}
    if description:
        param["description"] = description
    return {**param, **extra}


SESSION_ID = _param("session_id", "path", STRING, "The session's UUID or name (the caller's own).")


def _session_paths(prefix: str, settings: ServerSettings, ops: _Ops) -> dict[str, Any]:
    """The operations under ``/session`` (or its legacy alias ``/kernel``)."""
    legacy = prefix == "/kernel"
    ext = settings.offers

    def oid(name: str) -> str:
        return name + ("Legacy" if legacy else "")

    def op(op_id: str, summary: str, ok: dict[str, Any], **kw: Any) -> dict[str, Any]:
        kw.setdefault("params", [SESSION_ID])
        if legacy:
            summary += " (legacy /kernel alias of /session)"
        return ops.op(oid(op_id), summary, ok, deprecated=legacy, **kw)

    execute_modes = [
        "QueryRequest",
        "ContinueRequest",
        "InputRequest",
        "BatchRequest",
        "CompleteModeRequest",
    ]
    execute_body = {
        "oneOf": [_ref(m) for m in execute_modes],
        "discriminator": {"propertyName": "mode"},
    }
    sid = prefix + "/{session_id}"
    stream = "/stream" + sid
    download_params = [
        SESSION_ID,
        _param(
            "files",
            "query",
            {"type": "array", "items": STRING},
            "Paths in the work dir, repeated: ?files=a&files=b.",
            style="form",
            explode=True,
        ),
    ]
    download_ok = {
        "200": {
            "description": "multipart/mixed, one application/x-tar part per path, streamed.",
            "content": {"multipart/mixed": {}},
        }
    }
    download_body = _body(_ref("DownloadRequest"), description="The paths, if the query has none.")
    ws_note = (
        "A WebSocket (GET with Upgrade: websocket, signed like every request); 101 switches "
        "protocols. A plain GET is answered 400. Frames: docs/protocol.md."
    )
    paths: dict[str, Any] = {
        prefix: {
            "post": op(
                "createSession",
                "Create a session, or get the caller's live one",
                _ok(201, "The session.", _ref("SessionCreated")),
                params=[],
                errors=(404, 429),
                body=_body(_ref("CreateSession"), required=True),
                tags=("sessions",),
                description="Same name + same image + reuseIfExists: the existing "
                "session, created false. Unknown image or folder: 404.",
            ),
            "get": op(
                "listSessions",
                "The caller's sessions",
                _ok(200, "The caller's sessions.", _ref("SessionList")),
                params=[],
                tags=("sessions",),
            ),
        },
        sid: {
            "get": op(
                "getSession",
                "Session info",
                _ok(200, "The session.", _ref("SessionInfo")),
                errors=(404,),
                tags=("sessions",),
            ),
            "post": op(
                "execute",
                "The run loop: query, continue, input, batch, complete",
                _ok(
                    200,
                    "The run's next result (mode complete: a completion).",
                    {"anyOf": [_ref("ExecuteResult"), _ref("CompleteResult")]},
                ),
                errors=(404,),
                body=_body(execute_body, required=True),
                tags=("run loop",),
                description="A body without mode but with options is the SDK's "
                "execute(mode='complete').",
            ),
            "delete": op(
                "destroySession",
                "Destroy the session",
                _ok(200, "Destroyed.", _ref("Destroyed")),
                errors=(404,),
                params=[SESSION_ID, _param("forced", "query", STRING, "Accepted.")],
                tags=("sessions",),
            ),
            "patch": op(
                "restartSession",
                "Restart the kernel (files stay)",
                _ok(204, "Restarted."),
                errors=(404,),
                tags=("sessions",),
            ),
        },
        sid + "/interrupt": {
            "post": op(
                "interruptSession",
                "Interrupt the running cell or batch step",
                _ok(204, "Interrupted (or nothing to interrupt)."),
                errors=(404,),
                body=_body(_ref("InterruptRequest")) if ext(p.FEATURE_IDEMPOTENT_RUNS) else None,
                tags=("run loop",),
            ),
        },
        sid + "/complete": {
            "post": op(
                "complete",
                "Code completion",
                _ok(200, "The completion.", _ref("CompleteResult")),
                errors=(404,),
                body=_body(_ref("CompleteRequest")),
                tags=("run loop",),
            ),
        },
        sid + "/logs": {
            "get": op(
                "logs",
                "The kernel process's own output",
                _ok(200, "Its tail.", _ref("Logs")),
                errors=(404,),
                tags=("sessions",),
            ),
        },
        sid + "/upload": {
            "post": op(
                "upload",
                "Upload files into the work dir",
                _ok(204, "Saved."),
                errors=(404,),
                tags=("files",),
                body={**_json(_ref("Upload"), "multipart/form-data"), "required": True},
            ),
        },
        sid + "/download": {
            "post": op(
                "download",
                "Download files as tar archives",
                download_ok,
                errors=(404,),
                params=download_params,
                body=download_body,
                tags=("files",),
            ),
            "get": op(
                "downloadGet",
                "Download files as tar archives (GET)",
                download_ok,
                errors=(404,),
                params=download_params,
                body=download_body,
                tags=("files",),
            ),
        },
        sid + "/files": {
            "get": op(
                "listFiles",
                "List a directory of the work dir",
                _ok(200, "The listing.", _ref("FileListing")),
                errors=(404,),
                params=[SESSION_ID, _param("path", "query", STRING, "Default '.'.")],
                body=_body(_ref("FilesRequest"), description="The path, when the query has none."),
                tags=("files",),
            ),
        },
        stream + "/execute": {
            "get": op(
                "streamExecute",
                "Run one cell over a WebSocket",
                _ok(101, "Switching to WebSocket."),
                errors=(404,),
                tags=("streams",),
                description=ws_note + " First frame {code, mode, options}.",
            ),
        },
        stream + "/pty": {
            "get": op(
                "streamPty",
                "A shell in the work dir over a WebSocket",
                _ok(101, "Switching to WebSocket."),
                errors=(404,),
                tags=("streams",),
                description=ws_note + " Frames stdin, resize, ping, restart -> out.",
            ),
        },
    }
    if ext(p.FEATURE_INSPECT):
        paths[sid + "/inspect"] = {
            "post": op(
                "inspect",
                "Kernel introspection (extension inspect)",
                _ok(200, "The inspect_reply content.", _ref("KernelReply")),
                errors=(404,),
                body=_body(_ref("InspectRequest"), required=True),
                tags=("extensions",),
            ),
        }
    if ext(p.FEATURE_IS_COMPLETE):
        paths[sid + "/is-complete"] = {
            "post": op(
                "isComplete",
                "Is the code complete? (extension is-complete)",
                _ok(200, "The is_complete_reply content.", _ref("KernelReply")),
                errors=(404,),
                body=_body(_ref("IsCompleteRequest"), required=True),
                tags=("extensions",),
            ),
        }
    if ext(p.FEATURE_PUSH_CHANNEL):
        paths[stream + "/channel"] = {
            "get": op(
                "pushChannel",
                "The push channel (extension push-channel)",
                _ok(101, "Switching to WebSocket."),
                errors=(404,),
                tags=("extensions",),
                description=ws_note,
            ),
        }
    return paths


def _folder_paths(ops: _Ops) -> dict[str, Any]:
    name = _param("name", "path", STRING, "The folder's name or id.")
    tags = ("folders",)
    return {
        "/folders": {
            "post": ops.op(
                "createFolder",
                "Create a folder of the caller's",
                _ok(201, "The folder.", _ref("Folder")),
                errors=(409,),
                tags=tags,
                body=_body(_ref("CreateFolder"), required=True),
            ),
            "get": ops.op(
                "listFolders",
                "The caller's folders",
                _ok(200, "The folders.", {"type": "array", "items": _ref("Folder")}),
                tags=tags,
                body=_body(_obj({"all": BOOL})),
            ),
            "delete": ops.op(
                "deleteFolderById",
                "Delete a folder by id (26.x SDK)",
                _ok(204, "Deleted."),
                errors=(404,),
                tags=tags,
                body=_body(_ref("DeleteFolder"), required=True),
            ),
        },
        "/folders/_/id": {
            "get": ops.op(
                "folderId",
                "The id of a folder of the caller's, by name",
                _ok(200, "Its id.", _ref("FolderId")),
                errors=(404,),
                tags=tags,
                params=[
                    _param(k, "query", STRING) for k in ("name", "vfolder_name", "vfolderName")
                ],
                body=_body(_ref("FolderName"), description="The name, or in the query."),
            ),
        },
        "/folders/{name}": {
            "get": ops.op(
                "folderInfo",
                "A folder with its file count and size",
                _ok(200, "The folder.", _ref("FolderInfo")),
                errors=(404,),
                tags=tags,
                params=[name],
            ),
            "delete": ops.op(
                "deleteFolder",
                "Delete a folder (refused while mounted)",
                _ok(204, "Deleted."),
                errors=(404,),
                tags=tags,
                params=[name],
            ),
        },
    }


def openapi_document(settings: ServerSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with these settings (routes as in routes.py)."""
    ops = _Ops(settings)
    events_params = [
        _param("sessionId", "query", STRING, "Only this session's events."),
        _param("sessionName", "query", STRING, "Only this session's events (by name)."),
        _param("name", "query", STRING, "Legacy name of sessionName; '*' is every session."),
        _param("scope", "query", STRING, "'*' or a comma list of session, kernel."),
    ]
    paths: dict[str, Any] = {
        "/": {
            "get": ops.op(
                "hello",
                "Version probe (unsigned)",
                _ok(200, "The API version and the extensions.", _ref("Hello")),
                tags=("meta",),
                public=True,
            )
        },
        OPENAPI_PATH: {
            "get": ops.op(
                "openapi",
                "This document (unsigned)",
                _ok(200, "OpenAPI 3.1.", {"type": "object"}),
                tags=("meta",),
                public=True,
            )
        },
        "/events/session": {
            "get": ops.op(
                "sessionEvents",
                "Server-sent events of the caller's sessions",
                _ok(
                    200,
                    "An endless event stream ending with server_close.",
                    STRING,
                    "text/event-stream",
                ),
                errors=(404,),
                params=events_params,
                tags=("streams",),
                description="event: <name> / data: {sessionId, sessionName, reason, exitCode}; "
                "': ping' comment lines keep it open.",
            ),
        },
        **_folder_paths(ops),
    }
    for prefix in ("/session", "/kernel"):
        paths.update(_session_paths(prefix, settings, ops))
    responses: dict[str, Any] = {
        f"E{code}": {"description": text, **_json(_ref("Problem"), PROBLEM_JSON)}
        for code, text in _ERRORS.items()
    }
    responses["Default"] = {
        "description": "Any other error: 405 method-not-allowed, 500 internal-server-error "
        "(a bug: never expected), 503 while shutting down.",
        **_json(_ref("Problem"), PROBLEM_JSON),
    }
    components: dict[str, Any] = {"schemas": _schemas(settings), "responses": responses}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "remote_kernel compute-session server",
            "version": __version__,
            "description": "The Backend.AI manager API (version "
            f"{p.API_VERSION}) as this server speaks it"
            + (
                ", with the remote_kernel extensions " + ", ".join(settings.features)
                if settings.features
                else ", base layer only (no extensions)"
            )
            + ". Every error is application/problem+json. See docs/server.md and "
            "docs/protocol.md.",
        },
        "paths": paths,
        "components": components,
    }
    if settings.auth_required:
        components["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "Backend.AI keypair HMAC: 'BackendAI signMethod=HMAC-SHA256, "
                "credential=<access key>:<hex signature>', with the Date and "
                "X-BackendAI-Version headers it signs. String to sign: method, path with "
                "query, Date, host:<Host>, content-type:<type>, x-backendai-version:<version>, "
                "the SHA-256 of b''; key HMAC(HMAC(secret, YYYYMMDD), host). "
                "remote_kernel/auth.py implements it.",
            }
        }
        doc["security"] = [{SECURITY_SCHEME: []}]
    return copy.deepcopy(doc)  # the schema constants above are shared: the caller's to change


async def serve_openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``: this server's description (no signature needed)."""
    return web.Response(
        text=json.dumps(openapi_document(request.app[settings_key])),
        content_type="application/json",
    )
