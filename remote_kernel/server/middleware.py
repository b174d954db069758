"""The two middlewares: errors → problem+json (the only place), and keypair authentication."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from ..auth import verify
from ..errors import (
    InternalServerError,
    InvalidAPIParamsError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
    ServerError,
)
from ..protocol import VALID_VERSIONS
from .appkeys import keystore_key, owner_key, settings_key

log = logging.getLogger("remote_kernel.server")

PROBLEM_JSON = "application/problem+json"
ANONYMOUS = "anonymous"
#: Routes answered without a signature: the version probe and the API description.
PUBLIC_PATHS = frozenset({"", "/", "/openapi.json"})


def problem_body(error: ServerError) -> dict[str, Any]:
    """The problem+json body: Backend.AI's ``type``, ``title``, ``msg`` (and ``data``) plus
    RFC 9457's ``status`` and ``detail`` (the same text as ``msg``)."""
    return {**error.problem(), "status": error.status, "detail": error.msg}


def problem_response(error: ServerError, *, debug: bool = False) -> web.Response:
    body = problem_body(error)
    if debug and error.__cause__ is not None:
        body["traceback"] = "".join(traceback.format_exception(error.__cause__))
    return web.Response(
        status=error.status, text=json.dumps(body), content_type=PROBLEM_JSON, charset="utf-8"
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> ServerError:
    if exc.status == 404:
        return NotFoundError(f"No such API route: {request.method} {request.path}")
    if exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        return MethodNotAllowedError(
            f"{request.method} is not allowed on {request.path}"
            + (f"; allowed: {', '.join(allowed)}" if allowed else ""),
        )
    if exc.status == 413:
        return RequestTooLargeError(
            f"The request body is larger than the server allows: {exc.text}"
        )
    if exc.status == 400:  # e.g. a WebSocket route asked without a WebSocket handshake
        return InvalidAPIParamsError(exc.text or exc.reason)
    error = ServerError(exc.reason or f"HTTP {exc.status}", status=exc.status)
    return error


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, including unknown routes and wrong methods, becomes a problem+json body.

    An error answered before the request body was read closes the connection: the unread body
    would otherwise be parsed as the next request on a kept-alive connection.
    """
    try:
        return await handler(request)
    except Exception as exc:
        resp = _error_response(request, exc)
        if request.body_exists and not request.content.is_eof():
            resp.force_close()
        return resp


def _error_response(request: web.Request, exc: Exception) -> web.Response:
    debug = request.app[settings_key].debug
    if isinstance(exc, ServerError):
        return problem_response(exc, debug=debug)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return problem_response(_from_http_exception(exc, request), debug=debug)
    if isinstance(exc, (RequestPayloadError, HttpProcessingError)):
        # The body could not be read as sent: a Content-Encoding it is not in (gzip, deflate),
        # broken chunked framing. The client's doing, whichever handler was reading.
        reason = " ".join(str(exc).split()).removeprefix("400, message: ")
        unreadable = InvalidAPIParamsError(f"The request body could not be read: {reason}")
        return problem_response(unreadable, debug=debug)
    log.exception("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    error = InternalServerError(
        "The server failed unexpectedly; see its log for details."
        if not debug
        else f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return problem_response(error, debug=debug)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify Backend.AI HMAC except on :data:`PUBLIC_PATHS`; set ``request[owner_key]``."""
    if request.path in PUBLIC_PATHS or not request.app[settings_key].auth_required:
        request[owner_key] = ANONYMOUS
        return await handler(request)
    version = request.headers.get("X-BackendAI-Version")
    if version is not None and version not in VALID_VERSIONS:
        raise InvalidAPIParamsError(f"Unsupported API version {version!r}.")
    keystore = request.app[keystore_key]
    request[owner_key] = verify(
        request.headers,
        method=request.method,
        path_qs=request.raw_path,
        host=request.host,
        content_type=request.content_type,
        lookup_secret=keystore.secret_for,
    )
    return await handler(request)
