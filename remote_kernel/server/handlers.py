"""Thin HTTP handlers: parse, call the SessionManager / SessionRunner, answer JSON."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from jupyter_client.jsonutil import json_default

from .. import protocol as p
from .._version import __version__
from ..errors import InvalidAPIParamsError, RequestTooLargeError
from . import files
from .appkeys import manager_key, owner_key, settings_key
from .sessions import WORK_PREFIX, Session

_dumps = functools.partial(json.dumps, default=json_default)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body; ``{}`` when there is none; 400 problem when malformed.

    Every handler reads its body here, so every handler refuses the same malformed input
    (:func:`remote_kernel.protocol.loads_json`): invalid JSON or UTF-8, nesting too deep to
    parse, and lone surrogates in any string (code, input answers, file paths, environ...),
    which no kernel, file system or environment can take.
    """
    raw = await request.read()
    if not raw.strip():
        return {}
    body = p.loads_json(raw)
    if not isinstance(body, dict):
        raise InvalidAPIParamsError("The request body must be a JSON object.")
    return body


def session_of(request: web.Request) -> Session:
    """The caller's session named in the path (UUID or name); 404 otherwise."""
    return request.app[manager_key].get(request[owner_key], request.match_info["session_id"])


def offers(request: web.Request, feature: str) -> bool:
    """Whether this server offers ``feature`` (decided once, by :class:`ServerSettings`)."""
    return request.app[settings_key].offers(feature)


async def hello(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"version": p.API_VERSION, "manager": f"remote-kernel {__version__}"}
    settings = request.app[settings_key]
    if settings.features:
        body["remote_kernel"] = {
            "version": __version__,
            "features": list(settings.features),
            "orphanTimeout": settings.orphan_timeout,
            **settings.isolation,  # sandbox, network, limits (docs/isolation.md)
        }
    return json_response(body)


async def create_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = body.get("name") or body.get("session_name") or body.get("clientSessionToken")
    image = body.get("image") or body.get("lang") or ""
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise InvalidAPIParamsError("'config' must be a JSON object.")
    check_environ(config.get("environ"))
    check_mount_targets(config)
    session, created = await request.app[manager_key].create(
        request[owner_key],
        name=name,
        image=image,
        config=config,
        reuse=bool(body.get("reuseIfExists", True)),
    )
    answer: dict[str, Any] = {
        "sessionId": session.id,
        "sessionName": session.name,
        "status": "RUNNING",
        "servicePorts": [],
        "created": created,
    }
    if request.app[settings_key].offers(p.FEATURE_KERNEL_INFO):
        answer["kernelInfo"] = session.runner.kernel_info  # saves the client a round trip
    return json_response(answer, status=201)


def check_environ(environ: Any) -> None:
    """``config.environ`` must be null or an object of strings an environment can hold.

    Checked before the manager starts anything: names non-empty, without ``=`` or NUL; values
    strings (not numbers or null: ``{"N": "1"}``, not ``{"N": 1}``) without NUL.
    """
    if environ is None:
        return
    if not isinstance(environ, dict):
        raise InvalidAPIParamsError(
            """'config.environ' must be an object of strings, e.g. {"DEBUG": "1"}."""
        )
    for key, value in environ.items():
        if not key or "=" in key or "\x00" in key:
            raise InvalidAPIParamsError(
                f"Invalid environment variable name {key!r} in 'config.environ': a name must be "
                "non-empty and hold no '=' and no NUL character."
            )
        if not isinstance(value, str):
            raise InvalidAPIParamsError(
                f"'config.environ.{key}' must be a string, not {json.dumps(value)[:40]} "
                '(quote numbers: "1", not 1).'
            )
        if "\x00" in value:
            raise InvalidAPIParamsError(
                f"'config.environ.{key}' contains a NUL character, which no environment "
                "variable can hold."
            )


def check_mount_targets(config: dict[str, Any]) -> None:
    """Where ``config`` links folders into the work dir must be paths a file system takes (no
    NUL, names of at most ``NAME_MAX`` bytes), and no mount may lie inside another.

    Checked before the manager starts anything (until then a NUL or an over-long name was a
    500, and so was ``x/y`` before ``x``); the manager refuses the rest (paths that leave the
    work dir, unknown folders, ids that are not UUIDs).
    """
    mounts = config.get("mounts") or []
    mount_map = config.get("mount_map") or {}
    mount_id_map = config.get("mount_id_map") or {}
    if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in
                                                 (mount_map, mount_id_map)):  # fmt: skip
        return  # the manager answers 400
    targets = [(f"config.mount_map.{k}", v or k) for k, v in mount_map.items()]
    targets += [(f"config.mounts[{i}]", m) for i, m in enumerate(mounts)
                if not (isinstance(m, str) and m in mount_map)]  # fmt: skip
    targets += [(f"config.mount_id_map.{k}", v) for k, v in mount_id_map.items() if v]
    placed: dict[tuple[str, ...], str] = {}
    for where, target in targets:
        if not isinstance(target, str):
            raise InvalidAPIParamsError(f"'{where}' must be a path in the work directory.")
        encoded = target.encode("utf-8")
        if (
            "\x00" in target
            or len(encoded) >= files.PATH_MAX
            or any(len(part) > files.NAME_MAX for part in encoded.split(b"/"))
        ):
            raise InvalidAPIParamsError(
                f"Invalid mount destination {target[:80]!r} in '{where}': no NUL, names of at "
                f"most {files.NAME_MAX} bytes, paths under {files.PATH_MAX}."
            )
        parts = tuple(x for x in target.removeprefix(WORK_PREFIX).split("/") if x)
        if not parts:
            continue  # the manager answers 400
        for other, other_target in placed.items():
            n = min(len(parts), len(other))
            if parts != other and parts[:n] == other[:n]:
                raise InvalidAPIParamsError(
                    f"Mount destinations {other_target!r} and {target!r} are nested: mount "
                    "each folder at a path of its own."
                )
        placed[parts] = target


async def list_sessions(request: web.Request) -> web.Response:
    manager = request.app[manager_key]
    items = [s.info(kernel_info=False) for s in manager.owned_by(request[owner_key])]
    return json_response({"items": items})


async def session_info(request: web.Request) -> web.Response:
    kernel_info = offers(request, p.FEATURE_KERNEL_INFO)
    return json_response(session_of(request).info(kernel_info=kernel_info))


async def destroy_session(request: web.Request) -> web.Response:
    session = session_of(request)
    await request.app[manager_key].destroy(session, wait=False)
    return json_response({"stats": {"status": "terminated"}})


async def restart_session(request: web.Request) -> web.Response:
    await request.app[manager_key].restart(session_of(request))
    return web.Response(status=204)


async def interrupt_session(request: web.Request) -> web.Response:
    """204 always; with ``{"runId", "interruptId"}`` (idempotent-runs) only that run, once."""
    session = session_of(request)
    body = await read_json(request) if offers(request, p.FEATURE_IDEMPOTENT_RUNS) else {}
    run_id, interrupt_id = body.get("runId") or body.get("run_id"), body.get("interruptId")
    if not isinstance(run_id, (str, type(None))) or not isinstance(interrupt_id, (str, type(None))):
        raise InvalidAPIParamsError("'runId' and 'interruptId' must be strings.")
    await session.runner.interrupt(run_id, interrupt_id)
    return web.Response(status=204)


async def execute(request: web.Request) -> web.Response:
    session = session_of(request)
    req = p.parse_execute_request(await read_json(request))
    settings = request.app[settings_key]
    if req.mode == "complete":
        extended = settings.offers(p.FEATURE_INSPECT)
        return json_response(await _complete(session, req.code, req.options, extended))
    if not settings.offers(p.FEATURE_JUPYTER_CONSOLE):
        options = {k: v for k, v in req.options.items() if k != "console"}
        req = p.ExecuteRequest(req.mode, req.code, req.run_id, options, None)
    check_run_options(req)
    result = await session.runner.execute(
        req,
        hold=settings.poll_hold,
        coalesce=settings.poll_coalesce,
        cursors=settings.offers(p.FEATURE_OUTPUT_CURSOR),
    )
    session.touch()
    return json_response(result)


def check_run_options(req: p.ExecuteRequest) -> None:
    """Options a run would only fail on once started, refused with 400 before it starts: a
    lossless query's ``user_expressions`` (an object of strings, handed to the kernel as they
    are) and a batch's ``clean``/``build``/``exec`` (shell command strings)."""
    options = req.options
    if req.mode == "batch":
        for step in ("clean", "build", "exec"):
            value = options.get(step)
            if value and not isinstance(value, str):
                raise InvalidAPIParamsError(f"Batch option {step!r} must be a shell command.")
    if req.mode != "query" or not req.jupyter_console:
        return
    expressions = options.get("user_expressions")
    if expressions is not None and not (
        isinstance(expressions, dict) and all(isinstance(v, str) for v in expressions.values())
    ):
        raise InvalidAPIParamsError(
            "'options.user_expressions' must be an object of strings (name -> expression)."
        )


async def _complete(
    session: Session, code: str, options: dict[str, Any], extended: bool
) -> dict[str, Any]:
    """Backend.AI's completion result; ``extended`` adds the Jupyter fields (protocol §2.5)."""
    cursor_pos = options.get("cursor_pos")
    if not isinstance(cursor_pos, int):
        line, post = options.get("line"), options.get("post")
        if not code and isinstance(line, str):
            code = line + (post if isinstance(post, str) else "")
            cursor_pos = len(line)
        else:
            cursor_pos = len(code)
    content = await session.runner.complete(code, max(0, min(cursor_pos, len(code))))
    matches = list(content.get("matches", []))
    result: dict[str, Any] = {"status": "finished", "error": None, "suggestions": matches}
    if extended:
        result.update(
            matches=matches,
            cursor_start=content.get("cursor_start", cursor_pos),
            cursor_end=content.get("cursor_end", cursor_pos),
            metadata=content.get("metadata", {}),
        )
    return {"result": result}


async def complete(request: web.Request) -> web.Response:
    body = await read_json(request)
    code = body.get("code") or ""
    options = body.get("options") or {}
    if not isinstance(code, str) or not isinstance(options, dict):
        raise InvalidAPIParamsError("'code' must be a string and 'options' an object.")
    extended = offers(request, p.FEATURE_INSPECT)
    return json_response(await _complete(session_of(request), code, options, extended))


def _code_and_cursor(body: dict[str, Any]) -> tuple[str, int]:
    code = body.get("code")
    if not isinstance(code, str):
        raise InvalidAPIParamsError("'code' must be a string.")
    cursor_pos = body.get("cursor_pos", len(code))
    if not isinstance(cursor_pos, int) or isinstance(cursor_pos, bool):
        raise InvalidAPIParamsError("'cursor_pos' must be an integer.")
    return code, max(0, min(cursor_pos, len(code)))


async def inspect(request: web.Request) -> web.Response:
    body = await read_json(request)
    code, cursor_pos = _code_and_cursor(body)
    detail = body.get("detail_level", 0)
    content = await session_of(request).runner.inspect(code, cursor_pos, 1 if detail == 1 else 0)
    return json_response({"result": content})


async def is_complete(request: web.Request) -> web.Response:
    body = await read_json(request)
    code, _ = _code_and_cursor(body)
    return json_response({"result": await session_of(request).runner.is_complete(code)})


async def logs(request: web.Request) -> web.Response:
    return json_response({"result": {"logs": session_of(request).runner.logs()}})


# -- files (protocol §1.7) ---------------------------------------------------------------------
async def upload(request: web.Request) -> web.Response:
    """Save each part of a multipart body as a file; 400 when the body is not well-formed.

    A malformed body (no or wrong boundary, truncated, a part without a filename) is refused
    as soon as it is seen; parts saved before it stay, the part being read is never written
    (a file is only replaced once it has arrived whole).
    """
    session = session_of(request)
    settings = request.app[settings_key]
    if not request.content_type.startswith("multipart/"):
        raise InvalidAPIParamsError("Upload as multipart/form-data, one part per file.")
    count = 0
    with _multipart_errors():
        reader = await request.multipart()
    while True:
        with _multipart_errors():
            part = await reader.next()
        if part is None:
            break
        name = _raw_filename(part) if isinstance(part, aiohttp.BodyPartReader) else None
        if not isinstance(part, aiohttp.BodyPartReader) or not name:
            raise InvalidAPIParamsError("Every upload part needs a filename.")
        count += 1
        if count > settings.max_upload_files:
            raise RequestTooLargeError(
                f"Too many files: at most {settings.max_upload_files} per upload "
                "(ServerApp.max_upload_files)."
            )
        await files.save_upload(
            session.runner.work_dir, name, _chunks(part), extra_roots=session.mounts.values(),
            max_bytes=settings.max_upload_bytes, owner=session.runner.file_owner,
        )  # fmt: skip
    session.touch()
    return web.Response(status=204)


@contextlib.contextmanager
def _multipart_errors() -> Iterator[None]:
    """aiohttp's multipart reader reports a malformed body as ValueError (or an assertion)."""
    try:
        yield
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise InvalidAPIParamsError(f"Malformed multipart body: {exc}.") from None


_FILENAME_RE = re.compile(r'(?:^|;)\s*filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.I)


def _raw_filename(part: aiohttp.BodyPartReader) -> str | None:
    """The filename exactly as sent (aiohttp's ``part.filename`` strips a leading '/')."""
    header = part.headers.get(aiohttp.hdrs.CONTENT_DISPOSITION, "")
    match = _FILENAME_RE.search(header)
    if match is None:
        return part.filename
    if match.group(1) is not None:
        return re.sub(r"\\(.)", r"\1", match.group(1))
    return match.group(2)


async def _chunks(part: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
    """The part's content, up to its closing boundary; 400 if the body ends before it.

    (An empty chunk is not the end: at the end of a truncated body aiohttp returns empty
    chunks, then raises; only ``at_eof()`` says the boundary was found.)
    """
    while not part.at_eof():
        with _multipart_errors():
            chunk = await part.read_chunk(256 * 1024)
        if chunk:
            yield chunk


async def download(request: web.Request) -> web.Response:
    """``multipart/mixed``, one part per path, each a tar archive, streamed as it is made.

    Every path is checked (400/404) and the archives' total size against
    ``max_download_bytes`` (413) before anything is sent; then each archive is produced piece
    by piece (:func:`files.tar_stream`), so a download never holds a whole file in memory.
    """
    session = session_of(request)
    names = request.query.getall("files", [])
    if not names:
        names = (await read_json(request)).get("files") or []
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidAPIParamsError("Name the files to download: ?files=a&files=b.")
    limit = request.app[settings_key].max_download_bytes
    targets = files.download_targets(
        session.runner.work_dir, names, max_bytes=limit, extra_roots=session.mounts.values()
    )
    budget = files.DownloadBudget(limit)
    writer = aiohttp.MultipartWriter("mixed")
    for name, target in zip(names, targets, strict=True):
        roots = [session.runner.work_dir, *session.mounts.values()]
        writer.append(
            files.tar_stream(target, name, budget, roots), {"Content-Type": "application/x-tar"}
        )
    session.touch()
    return web.Response(body=writer)


async def list_files(request: web.Request) -> web.Response:
    session = session_of(request)
    path = request.query.get("path")
    if path is None:
        path = (await read_json(request)).get("path") or "."
    if not isinstance(path, str):
        raise InvalidAPIParamsError("'path' must be a string.")
    return json_response(
        files.list_dir(session.runner.work_dir, path, extra_roots=session.mounts.values())
    )
