"""``SignedHTTP``: one server's HTTP layer: Backend.AI signing, JSON, problem+json, retries.

The layer under :class:`~remote_kernel.client.RunLoopClient` (house style: one concern per
layer)::

    request()          signing, JSON, problem+json → errors.py, bounded retries
      └── _send_once() one aiohttp call; every aiohttp error → TransportError, here only

Retries happen on transport errors only (connect errors, dropped connections, timeouts), never
on an HTTP error, and a request that may have reached the server only when the caller says it is
idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from yarl import URL

from . import protocol as p
from .auth import Keypair, sign_headers
from .credentials import Origin, resolve_credentials
from .credentials import endpoint_origin as _endpoint_origin
from .credentials import keys_origin as _keys_origin
from .errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidAuthParamsError,
    ProtocolError,
    ServerError,
    TransportError,
    error_from_problem,
)

if TYPE_CHECKING:  # aiohttp (0.1 s to import) is loaded when the first request is made, not
    import aiohttp  # while the kernel starts: remote_kernel.proxy.app imports it in a thread

log = logging.getLogger("remote_kernel.client")
_S = TypeVar("_S", bound="SignedHTTP")

DEFAULT_ENDPOINT = "http://127.0.0.1:8090"  # `remote-kernel serve`'s default port

#: Bodyless requests are sent and signed with this content type, like the Backend.AI SDK.
BODYLESS_CONTENT_TYPE = "text/plain"
JSON_CONTENT_TYPE = "application/json"

_UNREACHABLE = (
    "could not reach {endpoint}: {reason}. Is the server (`remote-kernel serve`, or a Backend.AI "
    "manager) running there? The endpoint comes from {where}. To change it, {change}."
)
_DROPPED = (
    "the connection to {endpoint} was lost during {what}: {reason}. Is the server still running "
    "there? (The endpoint comes from {where}.)"
)
_BAD_ENDPOINT = (
    "The endpoint {endpoint!r} is not an http(s) URL such as {default}; it comes from {where}. "
    "To change it, {change}."
)
_HALF_KEYPAIR = (
    "An access key is set but the secret key is empty; both come from {where}. To fix it, {change}."
)
_AUTH_FAILED = (
    "{endpoint} refused the keypair with access key {access_key} ({msg}): the server does not "
    "know this access key, or the secret key is not its secret. The keypair comes from {where}. "
    "To change it, {change}."
)
_AUTH_MISSING = (
    "{endpoint} requires a keypair ({msg}), but the requests were not signed: {where}. "
    "To fix it, {change}."
)
_CLOCK_SKEW = (
    "{endpoint} refused the request ({msg}): this machine's clock and the server's differ by "
    "more than 15 minutes. Set the clock right (e.g. enable NTP) on whichever is wrong."
)
_TIMEOUT = (
    "{endpoint} did not answer {what} within {timeout:g} s. The server may be overloaded or hung; "
    "check it, or raise the timeout."
)


class SignedHTTP:
    """Signed requests to one server; the base of :class:`~remote_kernel.client.RunLoopClient`.

    Arguments left as ``None`` come from :func:`resolve_credentials` (environment, then file).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        api_version: str | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        retry_budget: float = 10.0,
        use_extensions: bool = True,
        session: aiohttp.ClientSession | None = None,
        endpoint_origin: Origin | None = None,
        keys_origin: Origin | None = None,
    ) -> None:
        ep_origin = endpoint_origin or _ARGUMENT_ENDPOINT
        key_origin = keys_origin or _ARGUMENT_KEYS
        if endpoint is None or access_key is None or secret_key is None:
            creds = resolve_credentials(endpoint)
            if endpoint is None:
                endpoint, ep_origin = creds.endpoint, endpoint_origin or creds.endpoint_origin
            if access_key is None or secret_key is None:
                key_origin = keys_origin or creds.keys_origin
            access_key = access_key if access_key is not None else creds.access_key
            secret_key = secret_key if secret_key is not None else creds.secret_key
        endpoint = (endpoint or DEFAULT_ENDPOINT).strip().rstrip("/")
        #: Where the endpoint and the keypair came from: named in connection and auth errors.
        self.endpoint_origin: Origin = ep_origin
        self.keys_origin: Origin = key_origin
        url = URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                _BAD_ENDPOINT.format(
                    endpoint=endpoint, default=DEFAULT_ENDPOINT, where=ep_origin.where,
                    change=ep_origin.change,
                )
            )  # fmt: skip
        if access_key and not secret_key:
            raise ConfigurationError(
                _HALF_KEYPAIR.format(where=key_origin.where, change=key_origin.change)
            )
        self.endpoint = endpoint
        self._base = url
        self._keypair = Keypair(access_key, secret_key or "") if access_key else None
        self._pinned_version = api_version
        self.api_version = api_version or p.API_VERSION
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.retry_budget = retry_budget
        self.use_extensions = use_extensions
        self._session = session
        self._owns_session = session is None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._closed:
            raise RuntimeError("RunLoopClient is closed; create a new one.")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout
                ),
                raise_for_status=False,
            )
            self._owns_session = True
        return self._session

    @property
    def anonymous(self) -> bool:
        return self._keypair is None

    # -- transport ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _map_transport_errors(self, what: str, timeout: float) -> Iterator[None]:
        """The one place aiohttp errors become :class:`TransportError` (with ``.request_sent``)."""
        import aiohttp

        try:
            yield
        except aiohttp.ConnectionTimeoutError as exc:
            reason = f"no connection within {self.connect_timeout:g} s"
            err = TransportError(self._unreachable(reason))
            err.request_sent = False  # type: ignore[attr-defined]
            raise err from exc
        except aiohttp.ClientConnectorError as exc:
            reason = _reason(exc.os_error) if exc.os_error else str(exc)
            err = TransportError(self._unreachable(reason))
            err.request_sent = False  # type: ignore[attr-defined]
            raise err from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            err = TransportError(
                _TIMEOUT.format(endpoint=self.endpoint, what=what, timeout=timeout)
            )
            err.request_sent = True  # type: ignore[attr-defined]
            raise err from exc
        except (aiohttp.ClientError, OSError) as exc:
            reason = _reason(exc)
            err = TransportError(
                _DROPPED.format(
                    endpoint=self.endpoint, what=what, reason=reason,
                    where=self.endpoint_origin.where,
                )
            )  # fmt: skip
            err.request_sent = True  # type: ignore[attr-defined]
            raise err from exc

    def _unreachable(self, reason: str) -> str:
        origin = self.endpoint_origin
        return _UNREACHABLE.format(
            endpoint=self.endpoint, reason=reason, where=origin.where, change=origin.change
        )

    def explain(self, error: ServerError) -> ServerError:
        """Say which keypair an authentication error refused and where it came from (the
        server cannot tell an unknown key from a wrong secret, and must not)."""
        if error.msg != error.server_msg:  # explained already
            return error
        origin = self.keys_origin
        if isinstance(error, AuthenticationError):
            if self._keypair is None:
                text = _AUTH_MISSING.format(
                    endpoint=self.endpoint, msg=error.msg, where=origin.where,
                    change=origin.change,
                )  # fmt: skip
            else:
                text = _AUTH_FAILED.format(
                    endpoint=self.endpoint, access_key=self._keypair.access_key, msg=error.msg,
                    where=origin.where, change=origin.change,
                )  # fmt: skip
        elif isinstance(error, InvalidAuthParamsError) and "sync" in error.msg.lower():
            text = _CLOCK_SKEW.format(endpoint=self.endpoint, msg=error.msg)
        else:
            return error
        error.msg = text
        error.args = (text,)
        return error

    def _headers(self, method: str, url: URL, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self._keypair is None:
            headers["X-BackendAI-Version"] = self.api_version
            return headers
        host = url.host_port_subcomponent or ""
        headers.update(
            sign_headers(
                self._keypair,
                method=method,
                path_qs=url.raw_path_qs,
                host=host,
                content_type=content_type,
                version=self.api_version,
            )
        )
        return headers

    def _url(self, path: str, params: dict[str, str] | None = None) -> URL:
        base_path = self._base.raw_path.rstrip("/")
        url = self._base.with_path(base_path + path, encoded=True)
        return url.with_query(params) if params else url

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        signed: bool = True,
        timeout: float | None = None,
    ) -> Any:
        url = self._url(path, params)
        data: bytes | None = None
        if body is not None:
            content_type = JSON_CONTENT_TYPE
            data = json.dumps(body).encode()
        else:
            content_type = BODYLESS_CONTENT_TYPE
        if signed:
            headers = self._headers(method, url, content_type)
        else:
            headers = {"Content-Type": content_type, "Accept": "application/json"}
        import aiohttp

        limit = timeout if timeout is not None else self.request_timeout
        what = f"{method} {url.raw_path}"
        with self._map_transport_errors(what, limit):
            async with self._http().request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.connect_timeout,
                    sock_connect=self.connect_timeout,
                    sock_read=limit,
                ),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        if status >= 400:
            problem = parsed if isinstance(parsed, dict) else raw.decode("utf-8", "replace")
            raise self.explain(error_from_problem(status, problem))
        if raw and parsed is None:
            raise ProtocolError(
                f"{what} answered {status} with a body that is not JSON: "
                f"{raw[:200].decode('utf-8', 'replace')}"
            )
        return parsed

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        signed: bool = True,
        timeout: float | None = None,
        idempotent: bool = True,
        retries: int | None = None,
    ) -> Any:
        """One API call with bounded retries on transport errors (never on HTTP errors).

        A non-idempotent request is retried only when it surely never reached the server; no
        retry starts once ``retry_budget`` seconds have passed, so a dead server is reported
        within seconds.
        """
        attempts = 1 + (self.retries if retries is None else retries)
        started = time.monotonic()
        for attempt in range(attempts):
            try:
                return await self._send_once(
                    method, path, body=body, params=params, signed=signed, timeout=timeout
                )
            except TransportError as exc:
                sent = getattr(exc, "request_sent", True)
                delay = min(self.backoff * (2**attempt), 2.0)
                over_budget = time.monotonic() - started + delay > self.retry_budget
                if attempt + 1 >= attempts or (sent and not idempotent) or over_budget:
                    raise
                log.info("retrying %s %s in %.2fs after: %s", method, path, delay, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def websocket(self, path: str, *, heartbeat: float) -> aiohttp.ClientWebSocketResponse:
        """A signed WebSocket connection to ``path``; errors as for :meth:`request`."""
        import aiohttp

        url = self._url(path)
        headers = self._headers("GET", url, BODYLESS_CONTENT_TYPE)
        with self._map_transport_errors(f"GET {url.raw_path}", self.connect_timeout):
            return await self._http().ws_connect(
                url, headers=headers, heartbeat=heartbeat, autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                max_msg_size=0,
            )  # fmt: skip


_ARGUMENT_ENDPOINT = _endpoint_origin("argument")
_ARGUMENT_KEYS = _keys_origin("argument")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        text = os.strerror(exc.errno) if exc.errno else (exc.strerror or "")
        if text:
            return text[0].lower() + text[1:]
    return str(exc) or type(exc).__name__
