"""Every exception remote_kernel raises, in one tree.

::

    RemoteKernelError
    ├── ConfigurationError (ValueError)    a setting is missing or wrong (endpoint, keys, image...)
    ├── TransportError (ConnectionError)   the server could not be reached or did not answer in time
    ├── ProtocolError (ValueError)         a body or record does not follow protocol.md
    └── ServerError                        the server answered with a problem+json error
        ├── InvalidAuthParamsError         400 invalid-auth-params (clock skew, malformed header)
        ├── InvalidAPIParamsError          400 invalid-api-params (bad JSON, bad field)
        ├── SessionAlreadyExistsError      400 session-already-exists
        ├── AuthenticationError            401 auth-failed
        ├── NotFoundError (LookupError)    404 object-not-found
        │   └── SessionNotFoundError       404 object-not-found, for a session
        ├── MethodNotAllowedError          405 method-not-allowed
        ├── TooManySessionsError           429 too-many-sessions
        ├── RequestTooLargeError           413 request-too-large
        ├── NotImplementedByServerError    501 not-implemented
        └── InternalServerError            500 internal-server-error

The server turns a ``ServerError`` into a problem+json body in exactly one place
(``server/middleware.py``); the client turns a problem+json body back into the same class in
exactly one place (``client.py``, via :func:`error_from_problem`). Stdlib imports only.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://api.backend.ai/probs/"


class RemoteKernelError(Exception):
    """Base class of every error raised by remote_kernel."""


class ConfigurationError(RemoteKernelError, ValueError):
    """A setting is missing or invalid; the message names the setting and how to fix it."""


class TransportError(RemoteKernelError, ConnectionError):
    """The server could not be reached, or it did not answer within the time limit."""


class ProtocolError(RemoteKernelError, ValueError):
    """A request, response or console record does not follow the run-loop protocol."""


class ServerError(RemoteKernelError):
    """An error answered by the server as a problem+json body.

    Subclasses fix ``status``, ``kind`` (the last part of the problem ``type`` URI) and ``title``;
    ``msg`` is the human-readable detail, ``data`` any extra JSON the server attached.
    """

    status: ClassVar[int] = 500
    kind: ClassVar[str] = "internal-server-error"
    title: ClassVar[str] = "Internal server error."

    def __init__(self, msg: str = "", *, data: Any = None, status: int | None = None) -> None:
        super().__init__(msg or self.title)
        self.msg = msg or self.title
        #: What the server said; ``msg`` may add what the client knows (e.g. which keypair).
        self.server_msg = self.msg
        self.data = data
        if status is not None:
            self.status = status  # type: ignore[misc]

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.kind

    def problem(self) -> dict[str, Any]:
        """The problem+json body for this error (RFC 7807, Backend.AI flavour)."""
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "msg": self.msg}
        if self.data is not None:
            body["data"] = self.data
        return body

    def __str__(self) -> str:
        return self.msg


class InvalidAuthParamsError(ServerError):
    """Missing or malformed authorization parameters, or a Date too far from the server's."""

    status = 400
    kind = "invalid-auth-params"
    title = "Missing or invalid authorization parameters."


class InvalidAPIParamsError(ServerError):
    """The request body or query string is malformed or has a bad field."""

    status = 400
    kind = "invalid-api-params"
    title = "Missing or invalid API parameters."


class SessionAlreadyExistsError(ServerError):
    """A live session of that name exists with another image, or reuse was not asked for."""

    status = 400
    kind = "session-already-exists"
    title = "The session already exists but you requested not to reuse existing one."


class AuthenticationError(ServerError):
    """The credential is unknown or the signature does not match."""

    status = 401
    kind = "auth-failed"
    title = "Credential/signature mismatch."


class NotFoundError(ServerError, LookupError):
    """The named object (session, image, route) does not exist for this caller."""

    status = 404
    kind = "object-not-found"
    title = "No such object."


class SessionNotFoundError(NotFoundError):
    """The session does not exist, was destroyed, or belongs to another keypair."""

    title = "No such session."


class MethodNotAllowedError(ServerError):
    """The route exists but not for this HTTP method."""

    status = 405
    kind = "method-not-allowed"
    title = "Method not allowed."


class RequestTooLargeError(ServerError):
    """The request is larger than the server's configured limit."""

    status = 413
    kind = "request-too-large"
    title = "Request is too large."


class TooManySessionsError(ServerError):
    """The keypair already has as many sessions as the server allows."""

    status = 429
    kind = "too-many-sessions"
    title = "Too many sessions."


class NotImplementedByServerError(ServerError):
    """The server does not implement this call."""

    status = 501
    kind = "not-implemented"
    title = "Not implemented."


class InternalServerError(ServerError):
    """The server failed unexpectedly."""

    status = 500
    kind = "internal-server-error"
    title = "Internal server error."


_BY_KIND: dict[str, type[ServerError]] = {
    cls.kind: cls
    for cls in (
        InvalidAuthParamsError,
        InvalidAPIParamsError,
        SessionAlreadyExistsError,
        AuthenticationError,
        NotFoundError,
        MethodNotAllowedError,
        RequestTooLargeError,
        TooManySessionsError,
        NotImplementedByServerError,
        InternalServerError,
    )
}


def error_from_problem(status: int, body: Any) -> ServerError:
    """Rebuild the most specific :class:`ServerError` from an HTTP status and its JSON body.

    Unknown problem kinds (a real manager has many more) keep their status and message.
    """
    if not isinstance(body, dict):
        body = {"msg": str(body)[:500]} if body else {}
    type_uri = str(body.get("type", ""))
    kind = type_uri.rsplit("/", 1)[-1] if type_uri.startswith(PROBLEM_BASE) else ""
    cls = _BY_KIND.get(kind) or _class_for_status(status)
    msg = str(body.get("msg") or body.get("title") or f"HTTP {status}")
    data = body.get("data")
    if cls is NotFoundError and "session" in msg.lower():
        cls = SessionNotFoundError
    return cls(msg, data=data, status=status)


def _class_for_status(status: int) -> type[ServerError]:
    for cls in _BY_KIND.values():
        if cls.status == status:
            return cls
    return ServerError
