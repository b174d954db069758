"""Streaming handlers: WebSocket execute, WebSocket PTY and SSE session events (protocol §1.8)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import struct
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from .. import protocol as p
from ..errors import InvalidAPIParamsError, RemoteKernelError
from .appkeys import manager_key, owner_key, settings_key
from .events import SERVER_CLOSE, Subscription
from .handlers import check_run_options, session_of
from .settings import ServerSettings
from .terminal import Terminal

log = logging.getLogger("remote_kernel.server")

SSE_PING_INTERVAL = 15.0
#: The open WebSockets, closed at shutdown (each handler removes its own when it ends).
websockets_key = web.AppKey("websockets_key", set[web.WebSocketResponse])


async def close_streams(app: web.Application) -> None:
    """On shutdown: end every event stream and close every WebSocket."""
    app[manager_key].events.close_all()
    sockets = app[websockets_key]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"server shutdown")


@contextlib.asynccontextmanager
async def open_ws(request: web.Request) -> AsyncIterator[web.WebSocketResponse]:
    """A prepared WebSocket, registered for shutdown while the handler runs.

    An unexpected error inside is logged and closes the socket with 1011 (internal error): once
    the socket is open, an HTTP problem response can no longer be sent.
    """
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    sockets = request.app[websockets_key]
    sockets.add(ws)
    try:
        yield ws
    except Exception:
        log.exception("WebSocket %s failed", request.path)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal server error")
    finally:
        sockets.discard(ws)


# -- execute -------------------------------------------------------------------------------------
async def stream_execute(request: web.Request) -> web.WebSocketResponse:
    """One run per connection: first frame ``{code, mode, options}``, then one frame per result.

    A plain text frame answers ``waiting-input``; the server closes after ``finished``; a client
    that goes away mid-run interrupts it. A malformed first frame (not JSON, nested too deeply,
    a lone surrogate in any string) gets ``{"status": "error", "msg"}`` and the close, as the
    SDK expects. The SDK protocol has no way to refuse one answer and ask again, so a lone
    surrogate in an answer is replaced by U+FFFD and the line is given to the kernel (a text
    frame that is not UTF-8 never gets here: aiohttp closes the socket with 1007, which
    interrupts the run like any other disconnect).
    """
    session = session_of(request)
    settings = request.app[settings_key]
    async with open_ws(request) as ws:
        await _run_over_socket(ws, session, settings)
    return ws


async def _run_over_socket(
    ws: web.WebSocketResponse, session: Any, settings: ServerSettings
) -> web.WebSocketResponse:
    try:
        req = _first_request(await ws.receive(), jupyter=settings.offers(p.FEATURE_JUPYTER_CONSOLE))
    except InvalidAPIParamsError as exc:
        await ws.send_json({"status": "error", "msg": f"Invalid API parameters: {exc}"})
        await ws.close()
        return ws
    inbox: asyncio.Queue[str | None] = asyncio.Queue()
    reader = asyncio.ensure_future(_read_text_frames(ws, inbox))
    try:
        run = session.runner.run_for(req)
        results = run.follow(0, coalesce=settings.poll_coalesce).__aiter__()
        while True:
            body = await _race(anext(results), reader)
            if body is None:  # the client went away mid-run
                await session.runner.interrupt(run.run_id)
                return ws
            result = body["result"]
            run.log.ack(result["cursor"])  # this client cannot ask again: free what it got
            session.touch()
            await ws.send_json({key: result.get(key) for key in
                                ("status", "console", "exitCode", "options", "files")})  # fmt: skip
            if result["status"] == p.FINISHED:
                break
            if result["status"] == p.WAITING_INPUT:
                line = await _race(inbox.get(), reader)
                if line is None:
                    await session.runner.interrupt(run.run_id)
                    return ws
                run.give_input(p.replace_lone_surrogates(line), None)
        await ws.close()
        return ws
    except RemoteKernelError as exc:
        await ws.send_json({"status": "error", "msg": f"BackendError: {exc}"})
        await ws.close()
        return ws
    finally:
        reader.cancel()


def _first_request(msg: Any, *, jupyter: bool) -> p.ExecuteRequest:
    if msg.type != WSMsgType.TEXT:
        raise InvalidAPIParamsError("the first frame must be JSON text {code, mode, options}")
    frame = p.loads_json(msg.data, "first frame")
    if not isinstance(frame, dict) or frame.get("mode", "query") not in ("query", "batch"):
        raise InvalidAPIParamsError("mode must be 'query' or 'batch'")
    options = frame.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidAPIParamsError("options must be an object")
    if not jupyter:
        options.pop("console", None)
    req = p.parse_execute_request(
        {"mode": frame.get("mode", "query"), "code": frame.get("code") or "",
         "runId": secrets.token_hex(16), "options": options}
    )  # fmt: skip
    check_run_options(req)
    return req


async def _read_text_frames(ws: web.WebSocketResponse, inbox: asyncio.Queue[str | None]) -> None:
    """Queue text frames; return when the client closes (or the connection breaks)."""
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            inbox.put_nowait(msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


async def _race(work: Any, reader: asyncio.Future[None]) -> Any:
    """``await work``, or None if the connection closes first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    if reader.done():
        task.cancel()
        return None
    done, _ = await asyncio.wait({task, reader}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None


# -- pty -----------------------------------------------------------------------------------------
async def stream_pty(request: web.Request) -> web.WebSocketResponse:
    """A shell in the session's work dir; frames: stdin, resize, ping, restart → out."""
    session = session_of(request)
    async with open_ws(request) as ws:
        await _shell_over_socket(ws, session)
    return ws


async def _shell_over_socket(ws: web.WebSocketResponse, session: Any) -> web.WebSocketResponse:
    outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def make_terminal() -> Terminal:
        term = Terminal(session.runner.work_dir, session.runner.env(), outbox.put_nowait,
                        lambda: outbox.put_nowait(None),
                        wrap=session.runner.terminal_command)  # fmt: skip
        term.start()
        return term

    terminal = make_terminal()

    async def pump_out() -> None:
        while (data := await outbox.get()) is not None:
            await ws.send_str(json.dumps({"type": "out", "data": base64.b64encode(data).decode()}))
        await ws.close()  # the shell exited

    sender = asyncio.ensure_future(pump_out())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            session.touch()
            try:  # a malformed frame is ignored, as before: the PTY has no error frame
                frame = p.loads_json(msg.data, "PTY frame")
                kind = frame.get("type") if isinstance(frame, dict) else None
                if kind == "stdin":
                    terminal.write(base64.b64decode(frame.get("chars", "")))
                elif kind == "resize":
                    terminal.resize(int(frame.get("rows", 24)), int(frame.get("cols", 80)))
            except (InvalidAPIParamsError, ValueError, TypeError, OverflowError, struct.error):
                continue
            if kind == "ping":
                await ws.send_str(json.dumps({"type": "pong"}))
            elif kind == "restart":
                terminal.on_exit = lambda: None
                terminal.close()
                terminal = make_terminal()
    finally:
        sender.cancel()
        terminal.close()
    return ws


# -- events --------------------------------------------------------------------------------------
async def session_events(request: web.Request) -> web.StreamResponse:
    """SSE of the caller's own session/kernel events; ends with ``server_close``."""
    manager = request.app[manager_key]
    owner = request[owner_key]
    query = request.query
    session_id = query.get("sessionId") or None
    name = query.get("sessionName") or query.get("name") or "*"
    scope = query.get("scope", "*")
    scopes = {"session", "kernel"} if scope in ("*", "") else set(scope.split(","))
    if not scopes <= {"session", "kernel"}:
        raise InvalidAPIParamsError(f"scope must be '*' or a list of session, kernel: {scope!r}")
    sub = Subscription(owner, scopes=frozenset(scopes))
    if session_id is not None:
        sub.session_id = manager.get(owner, session_id).id
    elif name != "*":
        sub.session_name = manager.get(owner, name).name
    manager.events.subscribe(sub)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})  # fmt: skip
    try:
        await resp.prepare(request)
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), SSE_PING_INTERVAL)
            except asyncio.TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            await resp.write(event.sse())
            if event.name == SERVER_CLOSE:
                break
    finally:
        manager.events.unsubscribe(sub)
    return resp
