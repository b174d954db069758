"""``RunLoopClient``: the async HTTP client of the Backend.AI run-loop API (protocol.md §1, §2).

Layers, one concern each (house style §3.4 item 5)::

    create_session / session_info / run(...).start() / poll() / send_input() / complete / ...
        └── _request()          signing, JSON, problem+json → errors.py, bounded retries
              └── _send_once()  one aiohttp call; every aiohttp error → TransportError, here only

Retries happen on transport errors only (connect errors, dropped connections, timeouts), never
on an HTTP error. A request that may have reached the server is retried only when repeating it is
harmless: reads, ``continue`` and ``input`` with a cursor / ``input_seq`` (protocol §2.3, §2.4).
A ``query`` whose response was lost is recovered with ``continue`` at cursor 0 when the server
replays output, because resending it would run the cell twice.

Works against a real Backend.AI manager (base layer only): extensions are used only when the
version probe lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from . import config
from . import protocol as p
from .auth import Keypair, sign_headers
from .errors import (
    ConfigurationError,
    ProtocolError,
    ServerError,
    TransportError,
    error_from_problem,
)

log = logging.getLogger(__name__)

ENV_ENDPOINT = "BACKEND_ENDPOINT"
ENV_ACCESS_KEY = "BACKEND_ACCESS_KEY"
ENV_SECRET_KEY = "BACKEND_SECRET_KEY"
DEFAULT_ENDPOINT = "http://127.0.0.1:8090"  # `remote-kernel serve`'s default port

#: Bodyless requests are sent and signed with this content type, like the Backend.AI SDK.
BODYLESS_CONTENT_TYPE = "text/plain"
JSON_CONTENT_TYPE = "application/json"

_UNREACHABLE = (
    "could not reach {endpoint}: {reason}. Is `remote-kernel serve` running? "
    "Set BACKEND_ENDPOINT to change the address."
)
_DROPPED = (
    "the connection to {endpoint} was lost during {what}: {reason}. "
    "Is `remote-kernel serve` still running? Set BACKEND_ENDPOINT to change the address."
)
_TIMEOUT = (
    "{endpoint} did not answer {what} within {timeout:g} s. The server may be overloaded or hung; "
    "check it, or raise the timeout."
)


# -- credentials -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """Where to connect and with which keypair; ``repr`` never shows the secret."""

    endpoint: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    source: str = ""


def resolve_credentials(
    endpoint: str | None = None, environ: Mapping[str, str] | None = None
) -> Credentials:
    """The endpoint and keypair: the SDK's environment variables, else the user's saved file.

    ``BACKEND_ENDPOINT``, ``BACKEND_ACCESS_KEY`` and ``BACKEND_SECRET_KEY`` win. Without an
    access key in the environment, the keypair saved for the endpoint (or the default one) in
    the 0600 credentials file of :mod:`remote_kernel.config` is used (``remote-kernel install``
    writes it). Missing values are empty strings: an empty access key means anonymous,
    unsigned requests.
    """
    env = os.environ if environ is None else environ
    endpoint = endpoint or env.get(ENV_ENDPOINT) or ""
    access = env.get(ENV_ACCESS_KEY) or ""
    secret = env.get(ENV_SECRET_KEY) or ""
    if access:
        return Credentials(endpoint, access, secret, "environment")
    saved = config.load_credentials(endpoint or None)
    if saved is None:
        return Credentials(endpoint, "", "", "")
    return Credentials(
        endpoint or saved["endpoint"],
        saved["access_key"],
        saved["secret_key"],
        str(config.credentials_path()),
    )


# -- value objects ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /`` told us: API version and the ``remote_kernel`` extensions offered."""

    version: str = p.API_VERSION
    manager: str = ""
    extension_version: str | None = None
    features: frozenset[str] = frozenset()

    def has(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class SessionRef:
    """A created (or reused) compute session."""

    id: str
    name: str
    created: bool
    status: str = ""


def _api_version_key(version: str) -> tuple[int, str]:
    match = re.match(r"^v(\d+)\.(\d+)$", version or "")
    return (int(match.group(1)), match.group(2)) if match else (0, "")


def negotiate_version(server: str, ours: str = p.API_VERSION) -> str:
    """``min(server, ours)`` as the SDK does; unknown server strings fall back to ours."""
    if _api_version_key(server) == (0, ""):
        return ours
    return min(server, ours, key=_api_version_key)


def completion_options(code: str, cursor_pos: int) -> dict[str, Any]:
    """The Backend.AI ``row``/``col``/``line``/``post`` options plus the Jupyter ``cursor_pos``."""
    cursor_pos = max(0, min(cursor_pos, len(code)))
    before, after = code[:cursor_pos], code[cursor_pos:]
    lines = before.split("\n")
    return {
        "cursor_pos": cursor_pos,
        "row": len(lines) - 1,
        "col": len(lines[-1]),
        "line": lines[-1],
        "post": after.split("\n", 1)[0],
    }


# -- the client ---------------------------------------------------------------------------------
class RunLoopClient:
    """Async client of one run-loop server. Create it inside a running event loop's task.

    ``async with RunLoopClient(...) as client`` closes it; :meth:`aclose` is idempotent.
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
    ) -> None:
        if endpoint is None or access_key is None or secret_key is None:
            creds = resolve_credentials(endpoint)
            endpoint = endpoint if endpoint is not None else creds.endpoint
            access_key = access_key if access_key is not None else creds.access_key
            secret_key = secret_key if secret_key is not None else creds.secret_key
        endpoint = (endpoint or DEFAULT_ENDPOINT).strip().rstrip("/")
        url = URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"BACKEND_ENDPOINT must be an http(s) URL such as {DEFAULT_ENDPOINT}; "
                f"got {endpoint!r}."
            )
        if access_key and not secret_key:
            raise ConfigurationError(
                "BACKEND_ACCESS_KEY is set but BACKEND_SECRET_KEY is empty; set both "
                "(from `remote-kernel keys create`) or neither for anonymous access."
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
        self._server: ServerInfo | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> RunLoopClient:
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

    @property
    def server(self) -> ServerInfo | None:
        """The last probe result (None before :meth:`probe`)."""
        return self._server

    def has(self, feature: str) -> bool:
        """True when the probed server offers ``feature`` and extensions are enabled."""
        return bool(self.use_extensions and self._server and self._server.has(feature))

    # -- transport ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _map_transport_errors(self, what: str, timeout: float) -> Iterator[None]:
        """The one place aiohttp errors become :class:`TransportError` (with ``.request_sent``)."""
        try:
            yield
        except aiohttp.ConnectionTimeoutError as exc:
            reason = f"no connection within {self.connect_timeout:g} s"
            err = TransportError(_UNREACHABLE.format(endpoint=self.endpoint, reason=reason))
            err.request_sent = False  # type: ignore[attr-defined]
            raise err from exc
        except aiohttp.ClientConnectorError as exc:
            reason = _reason(exc.os_error) if exc.os_error else str(exc)
            err = TransportError(_UNREACHABLE.format(endpoint=self.endpoint, reason=reason))
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
            err = TransportError(_DROPPED.format(endpoint=self.endpoint, what=what, reason=reason))
            err.request_sent = True  # type: ignore[attr-defined]
            raise err from exc

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
            raise error_from_problem(status, problem)
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

    # -- discovery ------------------------------------------------------------------------------
    async def probe(self, *, refresh: bool = False) -> ServerInfo:
        """``GET /`` (unsigned): the API version and the extensions the server offers."""
        if self._server is not None and not refresh:
            return self._server
        try:
            body = await self._request("GET", "/", signed=False)
        except ServerError as exc:
            log.warning("version probe failed (%s); assuming a base-layer server", exc)
            body = {}
        body = body if isinstance(body, dict) else {}
        ext = body.get("remote_kernel")
        features: frozenset[str] = frozenset()
        ext_version = None
        if isinstance(ext, dict):
            raw = ext.get("features")
            if isinstance(raw, list):
                features = frozenset(str(f) for f in raw)
            ext_version = str(ext.get("version")) if ext.get("version") else None
        version = str(body.get("version") or p.API_VERSION)
        self._server = ServerInfo(version, str(body.get("manager") or ""), ext_version, features)
        if not self._pinned_version:
            self.api_version = negotiate_version(version)
        return self._server

    # -- sessions -------------------------------------------------------------------------------
    async def create_session(
        self,
        image: str,
        name: str,
        *,
        resources: dict[str, Any] | None = None,
        environ: dict[str, str] | None = None,
        reuse: bool = True,
        max_wait: float = 60.0,
    ) -> SessionRef:
        """``POST /session``: get or create the session ``name`` running ``image``."""
        body = {
            "image": image,
            "name": name,
            "clientSessionToken": name,
            "config": {"resources": resources or {}, "environ": environ or {}},
            "reuseIfExists": reuse,
            "enqueueOnly": False,
            "maxWaitSeconds": int(max_wait),
        }
        result = await self._request(
            "POST", "/session", body=body, timeout=max_wait + 30, idempotent=reuse
        )
        if not isinstance(result, dict) or not (result.get("sessionId") or result.get("id")):
            raise ProtocolError(f"Session create answered without a sessionId: {result!r:.200}")
        return SessionRef(
            id=str(result.get("sessionId") or result.get("id")),
            name=str(result.get("sessionName") or name),
            created=bool(result.get("created", True)),
            status=str(result.get("status") or ""),
        )

    async def session_info(
        self, session_id: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``GET /session/{id}``: the session's info (with ``kernelInfo`` on our server)."""
        result = await self._request("GET", f"/session/{session_id}", timeout=timeout)
        return result if isinstance(result, dict) else {}

    async def destroy_session(
        self, session_id: str, *, forced: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        params = {"forced": "true"} if forced else None
        result = await self._request(
            "DELETE", f"/session/{session_id}", params=params, timeout=timeout
        )
        return result if isinstance(result, dict) else {}

    async def restart_session(self, session_id: str) -> None:
        await self._request("PATCH", f"/session/{session_id}", idempotent=False)

    async def interrupt(self, session_id: str, *, timeout: float | None = None) -> None:
        """``POST /session/{id}/interrupt``; repeating it is harmless, so it is retried."""
        await self._request("POST", f"/session/{session_id}/interrupt", timeout=timeout, retries=1)

    # -- introspection ----------------------------------------------------------------------
    async def complete(self, session_id: str, code: str, cursor_pos: int) -> dict[str, Any]:
        """``POST /session/{id}/complete``; the ``result`` object."""
        body = {"code": code, "options": completion_options(code, cursor_pos)}
        result = await self._request("POST", f"/session/{session_id}/complete", body=body)
        inner = result.get("result") if isinstance(result, dict) else None
        return inner if isinstance(inner, dict) else {}

    async def inspect(
        self, session_id: str, code: str, cursor_pos: int, detail_level: int = 0
    ) -> dict[str, Any] | None:
        """The remote ``inspect_reply`` content, or None when the server lacks ``inspect``."""
        if not self.has(p.FEATURE_INSPECT):
            return None
        body = {"code": code, "cursor_pos": cursor_pos, "detail_level": detail_level}
        result = await self._request("POST", f"/session/{session_id}/inspect", body=body)
        inner = result.get("result") if isinstance(result, dict) else None
        return inner if isinstance(inner, dict) else None

    async def is_complete(self, session_id: str, code: str) -> dict[str, Any] | None:
        """The remote ``is_complete_reply`` content, or None when the server lacks it."""
        if not self.has(p.FEATURE_IS_COMPLETE):
            return None
        result = await self._request(
            "POST", f"/session/{session_id}/is-complete", body={"code": code}
        )
        inner = result.get("result") if isinstance(result, dict) else None
        return inner if isinstance(inner, dict) else None

    # -- the run loop -------------------------------------------------------------------------
    async def execute(
        self,
        session_id: str,
        mode: str,
        code: str,
        run_id: str,
        *,
        options: dict[str, Any] | None = None,
        cursor: int | None = None,
        idempotent: bool = True,
    ) -> p.RunResult:
        """One ``POST /session/{id}`` call; both ``runId`` and ``run_id`` are sent."""
        body: dict[str, Any] = {
            "mode": mode,
            "code": code,
            "runId": run_id,
            "run_id": run_id,
            "options": dict(options or {}),
        }
        if cursor is not None:
            body["cursor"] = cursor
            body["options"]["cursor"] = cursor
        result = await self._request(
            "POST", f"/session/{session_id}", body=body, idempotent=idempotent
        )
        return p.parse_run_result(result)

    def run(
        self,
        session_id: str,
        code: str,
        *,
        options: dict[str, Any] | None = None,
        jupyter: bool | None = None,
        run_id: str | None = None,
    ) -> Run:
        """A :class:`Run` of ``code``; nothing is sent before :meth:`Run.start`.

        ``jupyter`` (default: when offered) asks for lossless Jupyter records; ``options`` are
        the Jupyter execute options, sent only in that mode.
        """
        if jupyter is None:
            jupyter = self.has(p.FEATURE_JUPYTER_CONSOLE)
        return Run(
            self,
            session_id,
            code,
            run_id=run_id or uuid.uuid4().hex,
            jupyter=jupyter,
            use_cursor=self.has(p.FEATURE_OUTPUT_CURSOR),
            options=options or {},
        )


class Run:
    """One cell's run: ``start()``, then ``poll()`` / ``send_input()`` until a terminal status.

    Keeps the cursor of the last response (protocol §2.3) and numbers inputs (§2.4), so a
    retried request neither loses nor repeats output, and a retried input is not fed twice.
    """

    def __init__(
        self,
        client: RunLoopClient,
        session_id: str,
        code: str,
        *,
        run_id: str,
        jupyter: bool,
        use_cursor: bool,
        options: dict[str, Any],
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.code = code
        self.run_id = run_id
        self.jupyter = jupyter
        self.use_cursor = use_cursor
        self.options = dict(options)
        self.cursor: int | None = 0 if use_cursor else None
        self.input_seq = 0
        self.started = False
        self.last: p.RunResult | None = None

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.terminal

    def _accept(self, result: p.RunResult) -> p.RunResult:
        if self.use_cursor and result.cursor is not None:
            self.cursor = result.cursor
        self.last = result
        return result

    async def start(self) -> p.RunResult:
        """Send the ``query``."""
        options: dict[str, Any] = {}
        if self.jupyter:
            options = {"console": p.CONSOLE_JUPYTER, **self.options}
        self.started = True
        try:
            result = await self.client.execute(
                self.session_id, "query", self.code, self.run_id, options=options, idempotent=False
            )
        except TransportError as exc:
            if not getattr(exc, "request_sent", True) or not self.use_cursor:
                raise
            # The query may have started: replay its output from the beginning instead.
            log.info("query response lost (%s); recovering run %s with a cursor", exc, self.run_id)
            result = await self.client.execute(
                self.session_id, "continue", "", self.run_id, cursor=0
            )
        return self._accept(result)

    async def poll(self) -> p.RunResult:
        """``continue``: the next output of the run (from the last cursor when replayable)."""
        result = await self.client.execute(
            self.session_id, "continue", "", self.run_id, cursor=self.cursor,
            idempotent=self.use_cursor,
        )  # fmt: skip
        return self._accept(result)

    async def send_input(self, text: str) -> p.RunResult:
        """``input``: answer the pending prompt (numbered so a retry is not fed twice)."""
        self.input_seq += 1
        options = {"input_seq": self.input_seq} if self.use_cursor else {}
        result = await self.client.execute(
            self.session_id, "input", text, self.run_id, options=options, cursor=self.cursor,
            idempotent=self.use_cursor,
        )  # fmt: skip
        return self._accept(result)

    async def results(self) -> AsyncIterator[p.RunResult]:
        """Start (if needed) and poll to the end; for callers without stdin."""
        result = self.last if self.started and self.last else await self.start()
        yield result
        while not result.terminal:
            if result.status == p.WAITING_INPUT:
                result = await self.send_input("")
            else:
                result = await self.poll()
            yield result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        text = os.strerror(exc.errno) if exc.errno else (exc.strerror or "")
        if text:
            return text[0].lower() + text[1:]
    return str(exc) or type(exc).__name__


__all__ = [
    "DEFAULT_ENDPOINT",
    "Credentials",
    "Run",
    "RunLoopClient",
    "ServerInfo",
    "SessionRef",
    "completion_options",
    "negotiate_version",
    "resolve_credentials",
]
