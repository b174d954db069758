"""``ChannelTransport``: runs over the session's push channel (one WebSocket, extension
``push-channel``; frames in :mod:`remote_kernel.frames`).

The server pushes each run's records as they are produced, so output reaches the notebook half a
round trip after it was printed instead of waiting for the next poll. The connection belongs to
the session, not to a cell: a reader task routes result frames to the run they name, and
messages that belong to no run (session and kernel events) to ``on_event``.

With ``comms``, the channel also forwards frontend comm messages (:meth:`ChannelTransport.forward`,
answered when the server says the kernel is done with them) and hands what the kernel sends
outside any run to ``on_output`` with its parent id, from the item it got to (a reconnect
resumes there).

When the connection drops, it is reopened (with backoff, for ``reconnect_budget`` seconds) and
every run in flight is resumed from its cursor; an answer or interrupt not yet confirmed is sent
again (the server ignores repeats). If it cannot be reopened, the runs get :class:`ChannelLost`
and the kernel carries on over HTTP polling with the same :class:`RunState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import frames
from .. import protocol as p
from ..client import RunLoopClient
from ..errors import ProtocolError, RemoteKernelError, TransportError, error_from_problem
from ..runloop import RunState, Update

if TYPE_CHECKING:  # imported when a channel opens (see remote_kernel.signed_http)
    import aiohttp

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], None]
#: ``(parent msg_id or None, record)`` of what the kernel sent outside any run.
OutputHandler = Callable[[str | None, list[Any]], None]


class ChannelLost(TransportError):
    """The push channel is gone and could not be reopened; polling takes over."""


@dataclass(eq=False)
class _Follow:
    """A run in flight on the channel: its state and the frames routed to it."""

    state: RunState
    inbox: asyncio.Queue[frames.ServerFrame | BaseException] = field(default_factory=asyncio.Queue)
    ack: dict[str, Any] | None = None  # sent when the kernel asks for the next update


class ChannelTransport:
    """The push channel of one session: connection, reconnection, routing, and the run loop."""

    name = "channel"

    def __init__(
        self,
        client: RunLoopClient,
        session_id: str,
        *,
        on_event: EventHandler | None = None,
        on_output: OutputHandler | None = None,
        reconnect_budget: float = 3.0,
        accept_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.on_event = on_event
        self.on_output = on_output  # set: the client wants what belongs to no run (comms)
        self.outputs_cursor: int | None = None  # the next outside item we want
        self._shells: dict[str, tuple[frames.ShellMessage, asyncio.Future[dict[str, Any]]]] = {}
        self.reconnect_budget = reconnect_budget
        self.accept_timeout = accept_timeout
        self.broken: BaseException | None = None  # why the channel is given up
        self.reconnects = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._follows: dict[str, _Follow] = {}
        self._interrupts: dict[str, tuple[str, asyncio.Future[bool]]] = {}
        self._closed = False

    # -- connection ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and read the ``hello``; raise :class:`RemoteKernelError` when that fails."""
        import aiohttp

        ws = await self.client.open_channel(self.session_id)
        try:
            msg = await ws.receive(timeout=self.client.connect_timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise TransportError(f"the push channel closed before its hello ({msg.type!r})")
            hello = frames.parse_server_frame(msg.data)
            if hello.type != frames.HELLO:
                raise ProtocolError(f"the push channel began with {hello.type!r}, not hello")
        except asyncio.TimeoutError:
            await ws.close()
            raise TransportError("the push channel sent no hello") from None
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        self.broken = None
        self._reader = asyncio.ensure_future(self._read(ws))
        if self.on_output is not None:
            outputs = hello.body.get("outputs")
            outputs = outputs if isinstance(outputs, int) else 0
            # a server started again numbers from 0: take its count, not ours
            if self.outputs_cursor is None or self.outputs_cursor > outputs:
                self.outputs_cursor = outputs
            await self._send(frames.outputs(self.outputs_cursor))
        for shell, _ in list(self._shells.values()):  # not known done: the server ignores repeats
            await self._send(frames.shell(shell))

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._reconnecting, self._reader):
            if task is not None:
                task.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self._give_up(ChannelLost("the push channel was closed"))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        import aiohttp

        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    self._dispatch(frames.parse_server_frame(msg.data))
                except ProtocolError as exc:
                    log.warning("ignoring a push-channel frame: %s", exc)
        except Exception as exc:  # the connection broke: reconnect below
            log.info("push channel read failed: %s", exc)
        finally:
            if self._ws is ws:
                self._ws = None
                if not self._closed:
                    self._start_reconnect()

    def _dispatch(self, frame: frames.ServerFrame) -> None:
        body = frame.body
        follow = self._follows.get(frame.run_id or "")
        if frame.type in (frames.RESULT, frames.ERROR) and follow is not None:
            follow.inbox.put_nowait(frame)
        elif frame.type == frames.ACCEPTED:
            if body.get("of") == frames.INPUT and follow is not None:
                seq = body.get("seq")
                if isinstance(seq, int):
                    follow.state.input_accepted(seq)
            elif body.get("of") == frames.INTERRUPT:
                _, waiter = self._interrupts.pop(str(body.get("interruptId")), ("", None))
                if waiter is not None and not waiter.done():
                    waiter.set_result(bool(body.get("applied")))
        elif frame.type == frames.OUTPUT:
            self._take_outputs(body)
        elif frame.type == frames.EVENT:
            if self.on_event is not None:
                data = body.get("data")
                self.on_event(str(body.get("name")), data if isinstance(data, dict) else {})
        elif frame.type == frames.ERROR:
            log.warning("push channel error: %s", body.get("problem"))

    def _take_outputs(self, body: dict[str, Any]) -> None:
        """Hand out the items of an ``output`` frame not handed out before, in order."""
        start, items = int(body["from"]), body["items"]
        cursor = self.outputs_cursor or 0
        if body.get("dropped"):
            log.warning("%s output item(s) from outside any run were dropped by the server",
                        body["dropped"])  # fmt: skip
        for number, item in enumerate(items, start):
            if number < cursor or not isinstance(item, dict):
                continue
            parent = item.get("parent")
            parent = parent if isinstance(parent, str) else None
            if "done" in item:
                _, waiter = self._shells.pop(parent or "", (None, None))
                done = item.get("done")
                if waiter is not None and not waiter.done():
                    waiter.set_result(done if isinstance(done, dict) else {})
            elif isinstance(item.get("record"), list) and self.on_output is not None:
                try:
                    self.on_output(parent, item["record"])
                except Exception:
                    log.exception("could not publish an output from outside any run")
        self.outputs_cursor = max(cursor, start + len(items))

    async def forward(self, msg: frames.ShellMessage) -> asyncio.Future[dict[str, Any]]:
        """Send a frontend message to the kernel's shell; the future has its ``done`` (the
        reply of a ``comm_info_request``) once the kernel is finished with it, or the error
        that ended the channel."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.broken is not None:
            waiter.set_exception(ChannelLost(str(self.broken)))
            return waiter
        self._shells[msg.msg_id] = (msg, waiter)
        if not await self._send(frames.shell(msg)):
            self._start_reconnect()  # the reconnect sends what is not known done
        return waiter

    def _start_reconnect(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_budget
        delay = 0.05
        while not self._closed:
            try:
                await self.open()
            except TransportError as exc:
                if loop.time() + delay > deadline:
                    self._give_up(ChannelLost(f"the push channel could not be reopened: {exc}"))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except RemoteKernelError as exc:  # the session is gone, or the server refuses
                self._give_up(exc)
                return
            self.reconnects += 1
            log.info("push channel reopened; resuming %d run(s)", len(self._follows))
            for follow in list(self._follows.values()):
                await self._send(follow.state.run_frame())
                if (frame := follow.state.input_frame()) is not None:
                    await self._send(frame)
            for interrupt_id, (run_id, _) in list(self._interrupts.items()):
                await self._send(frames.interrupt(run_id, interrupt_id))
            return

    def _give_up(self, exc: BaseException) -> None:
        self.broken = exc
        for follow in self._follows.values():
            follow.inbox.put_nowait(exc)
        waiters = [w for _, w in self._interrupts.values()] + [w for _, w in self._shells.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self._interrupts.clear()
        self._shells.clear()

    async def _send(self, frame: dict[str, Any]) -> bool:
        """Send if connected; a frame lost here is sent again after the reconnect."""
        import aiohttp

        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(frames.dumps(frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.info("push channel send failed: %s", exc)
            return False
        return True

    # -- the run loop (RunTransport) -------------------------------------------------------------
    async def next(self, state: RunState) -> Update:
        follow = self._follows.get(state.run_id)
        if follow is None:
            if self.broken is not None:
                raise ChannelLost(str(self.broken))
            follow = self._follows[state.run_id] = _Follow(state)
            if not await self._send(state.run_frame()):
                self._start_reconnect()  # the reconnect sends the run frame
        if follow.ack is not None:  # acknowledge what the last update handed out, now that
            await self._send(follow.ack)  # it is published (an ack never delays output)
            follow.ack = None
        while True:
            item = await follow.inbox.get()
            if isinstance(item, BaseException):
                self._follows.pop(state.run_id, None)
                raise item
            if item.type == frames.ERROR:
                self._follows.pop(state.run_id, None)
                problem = item.body.get("problem") or {}
                raise error_from_problem(int(problem.get("status") or 500), problem)
            result = p.parse_run_result({"result": item.body})
            update = state.accept(result, int(item.body["from"]))
            if update.gap:
                await self._send(state.run_frame())
                continue
            if update.terminal:
                self._follows.pop(state.run_id, None)
            elif update.records:
                follow.ack = state.ack_frame()
            return update

    async def answer(self, state: RunState, text: str) -> None:
        state.answer(text)
        frame = state.input_frame()
        if frame is not None:
            await self._send(frame)

    async def interrupt(self, state: RunState, interrupt_id: str) -> None:
        """Send the interrupt and wait until the server confirms it (resent after a reconnect)."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._interrupts[interrupt_id] = (state.run_id, waiter)
        await self._send(frames.interrupt(state.run_id, interrupt_id))
        try:
            await asyncio.wait_for(waiter, self.accept_timeout)
        except asyncio.TimeoutError:
            raise TransportError("the push channel did not confirm the interrupt") from None
        finally:
            self._interrupts.pop(interrupt_id, None)
