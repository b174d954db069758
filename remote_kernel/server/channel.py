"""The push channel: one WebSocket per session that pushes each run's records as they happen.

``GET /stream/session/{id}/channel`` (extension ``push-channel``; frames in
:mod:`remote_kernel.frames`, rules in docs/protocol.md). Every run is read through
:meth:`~remote_kernel.server.runs.Run.follow` from the cursor the client names, so a client
that reconnects sends ``run`` again with its cursor and misses or repeats nothing. A closed
channel never interrupts a run: the client is expected back.

With ``comms``, the channel also carries frontend comm messages to the kernel (``shell``
frames, :meth:`~remote_kernel.server.runner.SessionRunner.forward`) and, from the item a client
names (``outputs``), what the kernel sent outside any run
(:class:`~remote_kernel.server.outside.OutsideLog`), in ``output`` frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSMsgType, web

from .. import frames
from .. import protocol as p
from ..errors import (
    InternalServerError,
    InvalidAPIParamsError,
    RemoteKernelError,
    ServerError,
    SessionNotFoundError,
)
from .appkeys import manager_key, settings_key
from .events import Event, Subscription
from .handlers import check_run_options, session_of
from .middleware import problem_body
from .runs import Run
from .sessions import Session
from .settings import ServerSettings
from .streams import open_ws

log = logging.getLogger("remote_kernel.server")


async def push_channel(request: web.Request) -> web.WebSocketResponse:
    session = session_of(request)
    manager = request.app[manager_key]
    async with open_ws(request) as ws:
        log.info("push channel opened for session %s", session.id)
        sub = Subscription(session.owner, session_id=session.id)
        manager.events.subscribe(sub)
        session.channels += 1  # its client is there: no orphan
        session.lease = True  # and holds a lease from now on (``leases``)
        try:
            await _Channel(ws, session, request.app[settings_key], sub).serve()
        finally:
            session.channels -= 1
            session.touch()  # gone from now on
            manager.events.unsubscribe(sub)
    return ws


class _Channel:
    """One open channel: its frame reader, one follower task per run, the event forwarder."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        session: Session,
        settings: ServerSettings,
        events: Subscription,
    ) -> None:
        self.ws = ws
        self.session = session
        self.settings = settings
        self.events = events
        self.followers: dict[str, asyncio.Task[None]] = {}
        self.outputs: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        forwarder = asyncio.ensure_future(self._forward_events())
        try:
            await self.send(frames.hello(self.session.id, self.session.runner.outside.end))
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.send(frames.error(_problem("Channel frames are JSON text.")))
                else:
                    break
        finally:
            tasks = [forwarder, *self.followers.values()]
            if self.outputs is not None:
                tasks.append(self.outputs)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(frames.dumps(frame))

    async def handle(self, text: str) -> None:
        """Act on one client frame; a malformed one is answered with an ``error`` frame.

        Malformed includes JSON nested too deeply to parse and a lone surrogate in any string
        (code, options, or the ``text`` of an ``input`` frame). A refused ``input`` answer
        changes nothing: the run keeps waiting for that prompt, and a valid ``input`` frame
        with the same ``seq`` still answers it.
        """
        run_id = None
        try:
            frame = _parse(text)
            run_id = frame.run_id
            _check_strings(frame)
            if self.session.destroyed:  # the channel outlives it only until it closes
                raise SessionNotFoundError(f"No such session: {self.session.id!r}.")
            self.session.touch()
            if frame.type == frames.RUN:
                self._follow(frame)
            elif frame.type == frames.INPUT:
                applied = self._run(frame.run_id).give_input(frame.text, frame.seq)
                await self.send(frames.accepted(frame.type, run_id, applied, seq=frame.seq))
            elif frame.type == frames.SHELL:
                self._forward(frame)
            elif frame.type == frames.OUTPUTS:
                self._require_comms()
                if self.outputs is not None:
                    self.outputs.cancel()
                self.outputs = asyncio.ensure_future(self._push_outputs(frame.cursor))
            elif frame.type == frames.INTERRUPT:
                applied = await self.session.runner.interrupt(run_id, frame.interrupt_id)
                await self.send(
                    frames.accepted(frame.type, run_id, applied, interruptId=frame.interrupt_id)
                )
            else:
                run = self.session.runner.runs.get(run_id)
                if run is not None:
                    run.log.ack(frame.cursor)
        except RemoteKernelError as exc:
            await self.send(frames.error(_problem_of(exc), run_id))

    def _require_comms(self) -> None:
        if not self.settings.offers(p.FEATURE_COMMS):
            raise InvalidAPIParamsError("This server does not offer the 'comms' extension.")

    def _forward(self, frame: frames.ClientFrame) -> None:
        self._require_comms()
        msg = frame.shell
        assert msg is not None
        self.session.runner.forward(
            msg.msg_id, msg.msg_type, msg.content, msg.metadata, msg.buffers
        )

    async def _push_outputs(self, cursor: int) -> None:
        """Push what the kernel sent outside any run, from item ``cursor`` on, as it comes."""
        outside = self.session.runner.outside
        cursor = min(cursor, outside.end)  # a cursor of an earlier server process: from now on
        while True:
            await outside.wait_past(cursor)
            items, first, dropped = outside.read(cursor)
            await self.send(frames.output(items, first, dropped))
            cursor = first + len(items)

    def _run(self, run_id: str) -> Run:
        run = self.session.runner.runs.get(run_id)
        if run is None:
            raise _unknown_run(run_id)
        return run

    def _follow(self, frame: frames.ClientFrame) -> None:
        """Start the run (or find it: a known runId is the same run) and push it from cursor."""
        request = p.ExecuteRequest("query", frame.code, frame.run_id, frame.options, frame.cursor)
        if self.session.runner.runs.get(request.run_id) is None:
            check_run_options(request)  # a new run: refuse what it would only fail on later
        run = self.session.runner.run_for(request)
        previous = self.followers.pop(run.run_id, None)
        if previous is not None:
            previous.cancel()
        self.followers[run.run_id] = asyncio.ensure_future(self._push(run, frame.cursor))

    async def _push(self, run: Run, cursor: int) -> None:
        try:
            async for body in run.follow(cursor, coalesce=self.settings.push_coalesce):
                result = body["result"]
                await self.send(frames.result(result, cursor))
                cursor = result["cursor"]
        finally:
            if self.followers.get(run.run_id) is asyncio.current_task():
                del self.followers[run.run_id]

    async def _forward_events(self) -> None:
        while True:
            event: Event = await self.events.queue.get()
            data = {"reason": event.reason, "exitCode": event.exit_code}
            await self.send(frames.event(event.name, data))
            if event.name in ("session_terminated", "server_close"):
                await self.ws.close(code=1001, message=event.name.encode())
                return


def _parse(text: str) -> frames.ClientFrame:
    """:func:`frames.parse_client_frame`; JSON too deep to parse is malformed too."""
    try:
        return frames.parse_client_frame(text)
    except RecursionError:
        raise InvalidAPIParamsError("A channel frame is nested too deeply to parse.") from None


def _check_strings(frame: frames.ClientFrame) -> None:
    """Every string of the frame is valid Unicode, as in a request body (``read_json``)."""
    fields = {"runId": frame.run_id, "code": frame.code, "options": frame.options,
              "text": frame.text, "interruptId": frame.interrupt_id}  # fmt: skip
    if frame.shell is not None:
        fields.update(msgId=frame.shell.msg_id, content=frame.shell.content,
                      metadata=frame.shell.metadata)  # fmt: skip
    p.check_json_text(fields, "The channel frame")


def _unknown_run(run_id: str) -> ServerError:
    return InvalidAPIParamsError(f"No run {run_id!r} in this session: start it with 'run'.")


def _problem(message: str) -> dict[str, Any]:
    return _problem_of(InvalidAPIParamsError(message))


def _problem_of(exc: RemoteKernelError) -> dict[str, Any]:
    """The problem+json body (with ``status`` and ``detail``) an HTTP request would have got."""
    error = exc if isinstance(exc, ServerError) else InternalServerError(str(exc))
    return problem_body(error)
