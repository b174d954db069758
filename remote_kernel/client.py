"""``RunLoopClient``: the async HTTP client of the Backend.AI run-loop API (protocol.md §1, §2).

The API methods (create_session, session_info, execute, interrupt, complete, open_channel...)
over :class:`~remote_kernel.signed_http.SignedHTTP` (signing, JSON, problem+json, bounded
retries). A request that may have reached the server is retried only when repeating it is
harmless: :class:`~remote_kernel.runloop.RunState` decides that for the run loop
(docs/protocol.md, "Exactly once").

Works against a real Backend.AI manager (base layer only): extensions are used only when the
version probe lists them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import protocol as p
from .errors import ProtocolError, ServerError, error_from_problem
from .signed_http import BODYLESS_CONTENT_TYPE, DEFAULT_ENDPOINT, SignedHTTP

if TYPE_CHECKING:  # imported when needed (see signed_http)
    import aiohttp

log = logging.getLogger(__name__)

#: Bytes read from a download's response at a time.
DOWNLOAD_CHUNK = 256 * 1024


# -- value objects ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /`` told us: API version and the ``remote_kernel`` extensions offered."""

    version: str = p.API_VERSION
    manager: str = ""
    extension_version: str | None = None
    features: frozenset[str] = frozenset()
    #: Seconds a leased session outlives its client (``leases``); 0: no orphan reaping.
    orphan_timeout: float = 0.0

    def has(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class SessionRef:
    """A created (or reused) compute session."""

    id: str
    name: str
    created: bool
    status: str = ""
    #: the remote kernel_info_reply, when the create answer carries it (extension kernel-info)
    kernel_info: dict[str, Any] | None = None


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


class RunLoopClient(SignedHTTP):
    """Async client of one run-loop server. Create it inside a running event loop's task.

    ``async with RunLoopClient(...) as client`` closes it; :meth:`aclose` is idempotent.
    Arguments left as ``None`` come from
    :func:`~remote_kernel.credentials.resolve_credentials` (environment, then file).
    """

    _server: ServerInfo | None = None

    @property
    def server(self) -> ServerInfo | None:
        """The last probe result (None before :meth:`probe`)."""
        return self._server

    def has(self, feature: str) -> bool:
        """True when the probed server offers ``feature`` and extensions are enabled."""
        return bool(self.use_extensions and self._server and self._server.has(feature))

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
        return self.adopt_probe(body)

    def adopt_probe(self, body: Any) -> ServerInfo:
        """Take a ``GET /`` answer made elsewhere (the kernel's early start) as the probe."""
        body = body if isinstance(body, dict) else {}
        ext = body.get("remote_kernel")
        features: frozenset[str] = frozenset()
        ext_version = None
        if isinstance(ext, dict):
            raw = ext.get("features")
            if isinstance(raw, list):
                features = frozenset(str(f) for f in raw)
            ext_version = str(ext.get("version")) if ext.get("version") else None
        orphan = ext.get("orphanTimeout") if isinstance(ext, dict) else None
        version = str(body.get("version") or p.API_VERSION)
        self._server = ServerInfo(
            version, str(body.get("manager") or ""), ext_version, features,
            float(orphan) if isinstance(orphan, int | float) and orphan > 0 else 0.0,
        )  # fmt: skip
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
        lease: bool = False,
    ) -> SessionRef:
        """``POST /session``: get or create the session ``name`` running ``image`` (with
        ``lease``, held by this client: extension ``leases``)."""
        config: dict[str, Any] = {"resources": resources or {}, "environ": environ or {}}
        if lease:
            config["lease"] = True
        body = {
            "image": image,
            "name": name,
            "clientSessionToken": name,
            "config": config,
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
            kernel_info=info if isinstance(info := result.get("kernelInfo"), dict) else None,
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

    async def interrupt(
        self,
        session_id: str,
        *,
        run_id: str | None = None,
        interrupt_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """``POST /session/{id}/interrupt``. With ``idempotent-runs``, naming the run and the
        interrupt makes a repeat harmless (it never hits the next run), so it is retried."""
        body = None
        if run_id is not None and self.has(p.FEATURE_IDEMPOTENT_RUNS):
            body = {"runId": run_id, "interruptId": interrupt_id or run_id}
        await self._request(
            "POST", f"/session/{session_id}/interrupt", body=body, timeout=timeout,
            idempotent=body is not None, retries=None if body is not None else 1,
        )  # fmt: skip

    async def open_channel(
        self, session_id: str, *, heartbeat: float = 15.0
    ) -> aiohttp.ClientWebSocketResponse:
        """The session's push channel (``push-channel``): a signed WebSocket connection."""
        return await self.websocket(f"/stream/session/{session_id}/channel", heartbeat=heartbeat)

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

    # -- files (Backend.AI's file API, protocol.md §1.7) ------------------------------------
    async def list_files(
        self, session_id: str, path: str = ".", *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """``GET /session/{id}/files``: the entries of one work-directory folder
        (``filename``, ``size``, ``mode``, ``mtime``...). The path goes in the query string
        (current managers) and in a JSON body (older ones and the SDK)."""
        result = await self._request(
            "GET", f"/session/{session_id}/files", params={"path": path or "."},
            body={"path": path or "."}, timeout=timeout,
        )  # fmt: skip
        raw = result.get("files") if isinstance(result, dict) else None
        if isinstance(raw, str):  # Backend.AI sends the list as a JSON string
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ProtocolError(f"The file listing is not JSON: {raw[:200]!r}") from None
        if not isinstance(raw, list):
            raise ProtocolError(f"The file listing has no list of files: {result!r:.200}")
        return [entry for entry in raw if isinstance(entry, dict)]

    async def upload_files(
        self,
        session_id: str,
        files: Sequence[tuple[str, AsyncIterable[bytes]]],
        *,
        timeout: float | None = None,
    ) -> None:
        """``POST /session/{id}/upload``: one multipart request, a part per (name, content).

        Each content is streamed as it is produced, so no file is held in memory. Names are
        work-directory paths, sent as they are (a real manager does not percent-decode them).
        Never retried: a body that may have been consumed cannot be sent again.
        """
        import aiohttp
        from aiohttp.payload import AsyncIterablePayload

        writer = aiohttp.MultipartWriter("form-data")
        for name, chunks in files:
            part = writer.append_payload(
                AsyncIterablePayload(chunks, content_type="application/octet-stream")
            )
            part.set_content_disposition("form-data", name="src", filename=name, quote_fields=False)
        url = self._url(f"/session/{session_id}/upload")
        headers = self._headers("POST", url, writer.content_type)
        limit = timeout if timeout is not None else self.request_timeout
        with self._map_transport_errors(f"POST {url.raw_path}", limit):
            async with self._http().post(
                url, data=writer, headers=headers, timeout=self._stream_timeout(limit)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        if status >= 400:
            raise self.explain(_problem(status, raw))

    async def download_files(
        self, session_id: str, names: Sequence[str], *, timeout: float | None = None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """``POST /session/{id}/download?files=...``: the tar archive of each name, streamed.

        Yields ``(index of the name, piece of its archive)`` as the response arrives (never a
        whole archive in memory). Use it inside ``contextlib.aclosing``: stopping early closes
        the connection.
        """
        url = self._url(f"/session/{session_id}/download").with_query(
            [("files", name) for name in names]
        )
        headers = self._headers("POST", url, BODYLESS_CONTENT_TYPE)
        limit = timeout if timeout is not None else self.request_timeout
        what = f"POST {url.raw_path}"
        with self._map_transport_errors(what, limit):
            resp = await self._http().post(
                url, headers=headers, timeout=self._stream_timeout(limit)
            )
        try:
            if resp.status >= 400:
                with self._map_transport_errors(what, limit):
                    raw = await resp.read()
                raise self.explain(_problem(resp.status, raw))
            import aiohttp

            try:
                reader = aiohttp.MultipartReader.from_response(resp)
            except (ValueError, AssertionError, KeyError) as exc:
                raise ProtocolError(
                    f"{what} answered {resp.content_type!r}, not multipart archives: {exc}"
                ) from None
            index = -1
            while True:
                with self._map_transport_errors(what, limit):
                    part = await reader.next()
                if part is None:
                    break
                index += 1
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise ProtocolError(f"{what}: part {index} is not an archive")
                while not part.at_eof():
                    with self._map_transport_errors(what, limit):
                        chunk = await part.read_chunk(DOWNLOAD_CHUNK)
                    if chunk:
                        yield index, chunk
            if index + 1 != len(names):
                raise ProtocolError(f"{what} sent {index + 1} archive(s) for {len(names)} name(s)")
        finally:
            resp.close()

    def _stream_timeout(self, read: float) -> aiohttp.ClientTimeout:
        """No total limit (a transfer takes as long as it takes); ``read`` seconds at most
        without a byte from the server once the request is sent."""
        import aiohttp

        return aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout,
            sock_read=read,
        )  # fmt: skip

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


def _problem(status: int, raw: bytes) -> ServerError:
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return error_from_problem(status, body)


__all__ = [
    "DEFAULT_ENDPOINT",
    "RunLoopClient",
    "ServerInfo",
    "SessionRef",
    "completion_options",
    "negotiate_version",
]
