"""``KernelIO``: the session kernel's IOPub, shell and stdin channels, read by one router.

jupyter_client's ``execute_interactive`` reads IOPub itself and drops every message whose parent
is not its own request; that loses what a kernel sends outside a cell (a widget callback's
output, a thread that prints after its cell ended, comm messages) and lets only one request read
the channels at a time. Here three background tasks read the channels for the kernel's whole
life and route each message by its parent ``msg_id``:

* to the :class:`Request` the server sent with that id (its ``on_iopub``/``on_stdin`` hooks, its
  reply, its ``idle`` status), while that request is in flight;
* else to ``on_unrouted`` (IOPub only): the session's :class:`~remote_kernel.server.outside.
  OutsideLog`.

Requests may carry an id of the caller's choosing (the proxy's frontend ``msg_id``, so ids kept
in kernel state, such as the ipywidgets ``Output`` widget's, mean the same on both sides), and
binary buffers. No lock is needed for replies: each goes to its own request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("remote_kernel.server")

Message = dict[str, Any]
IOPubHook = Callable[[Message], None]
StdinHook = Callable[[Message], Awaitable[None]]


class KernelGone(Exception):
    """The kernel's channels were closed (restart, shutdown, death) before the answer came."""


@dataclass(eq=False)
class Request:
    """One request on the kernel's shell channel and what came back for it so far."""

    msg_id: str
    msg_type: str
    on_iopub: IOPubHook | None = None
    on_stdin: StdinHook | None = None
    reply: asyncio.Future[Message] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    idle: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    #: The kernel said ``busy`` for it: it is being handled in order (an ipykernel 7 comm
    #: message handled alongside a running cell never gets a status).
    busy: bool = False

    async def done(self) -> Message:
        """The reply, once the kernel is also idle after it (all its output has arrived)."""
        reply = await self.reply
        await self.idle
        return reply

    def fail(self, exc: BaseException) -> None:
        for fut in (self.reply, self.idle):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: nobody may be waiting for both


class KernelIO:
    """Routes one kernel's messages by parent ``msg_id``; sends requests with chosen ids."""

    def __init__(
        self, kc: Any, on_unrouted: IOPubHook, on_stray_input: Callable[[], None] | None = None
    ) -> None:
        self.kc = kc
        self.on_unrouted = on_unrouted
        self.on_stray_input = on_stray_input
        self._requests: dict[str, Request] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stdin_tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        kc = self.kc
        self._tasks = [
            asyncio.ensure_future(self._read(kc.iopub_channel, self._on_iopub)),
            asyncio.ensure_future(self._read(kc.shell_channel, self._on_shell)),
            asyncio.ensure_future(self._read(kc.stdin_channel, self._on_stdin)),
        ]

    async def stop(self, reason: str = "the kernel's channels were closed") -> None:
        """Stop reading; every request in flight fails with :class:`KernelGone`."""
        tasks = [*self._tasks, *self._stdin_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        requests, self._requests = self._requests, {}
        for request in requests.values():
            request.fail(KernelGone(reason))

    @property
    def in_flight(self) -> bool:
        """A request has not finished in the kernel yet (not idle after it)."""
        return any(not r.idle.done() for r in self._requests.values())

    def known(self, msg_id: str) -> bool:
        return msg_id in self._requests

    def send(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        msg_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        on_iopub: IOPubHook | None = None,
        on_stdin: StdinHook | None = None,
    ) -> Request:
        """Send a shell request (with ``msg_id`` when given and not in flight already)."""
        if not msg_id or msg_id in self._requests:
            msg_id = uuid.uuid4().hex
        msg = self.kc.session.msg(msg_type, content, metadata=metadata or {})
        msg["header"]["msg_id"] = msg_id
        msg["msg_id"] = msg_id
        if buffers:
            msg["buffers"] = buffers
        request = Request(msg_id, msg_type, on_iopub, on_stdin)
        self._requests[msg_id] = request
        self.kc.shell_channel.send(msg)
        return request

    def expect(
        self,
        msg_id: str,
        msg_type: str,
        *,
        on_iopub: IOPubHook | None = None,
        on_stdin: StdinHook | None = None,
    ) -> Request:
        """Route what comes for a request sent before (by an earlier server process)."""
        request = Request(msg_id, msg_type, on_iopub, on_stdin)
        self._requests[msg_id] = request
        return request

    def forget(self, request: Request) -> None:
        """Stop routing for ``request``: later messages with its id go to ``on_unrouted``."""
        if self._requests.get(request.msg_id) is request:
            del self._requests[request.msg_id]
        request.fail(KernelGone("the request was given up"))

    def answer_input(self, text: str) -> None:
        self.kc.input(text)

    # -- readers -------------------------------------------------------------------------------
    async def _read(self, channel: Any, handle: Callable[[Message], None]) -> None:
        while True:
            try:
                msg = await channel.get_msg()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a closed socket or a message that does not parse
                if getattr(channel, "socket", None) is None or channel.socket.closed:
                    return
                log.warning("could not read a kernel message: %s", exc)
                continue
            try:
                handle(msg)
            except Exception:  # one bad message must not stop the router
                log.exception("could not route a kernel message")

    def _request_of(self, msg: Message) -> Request | None:
        parent = msg.get("parent_header") or {}
        return self._requests.get(str(parent.get("msg_id", "")))

    def _on_iopub(self, msg: Message) -> None:
        request = self._request_of(msg)
        if request is None:
            self.on_unrouted(msg)
            return
        if msg.get("msg_type") == "status":
            state = msg.get("content", {}).get("execution_state")
            if state == "busy":
                request.busy = True
            elif state == "idle" and not request.idle.done():
                request.idle.set_result(None)
                self._retire(request)
            return
        if request.on_iopub is not None:
            request.on_iopub(msg)
        else:
            self.on_unrouted(msg)

    def _on_shell(self, msg: Message) -> None:
        request = self._request_of(msg)
        if request is None:
            log.debug("a shell reply nobody waits for: %s", msg.get("msg_type"))
            return
        if not request.reply.done():
            request.reply.set_result(msg)
        self._retire(request)

    def _on_stdin(self, msg: Message) -> None:
        request = self._request_of(msg)
        if request is None or request.on_stdin is None:
            log.warning("an input request outside any run (%s)", msg.get("parent_header"))
            if self.on_stray_input is not None:
                self.on_stray_input()
            return
        task = asyncio.ensure_future(request.on_stdin(msg))
        self._stdin_tasks.add(task)
        task.add_done_callback(self._stdin_tasks.discard)

    def _retire(self, request: Request) -> None:
        """Routing ends once the request is idle and (if it has one) answered."""
        answered = request.reply.done() or not request.msg_type.endswith("_request")
        if request.idle.done() and answered and self._requests.get(request.msg_id) is request:
            del self._requests[request.msg_id]
            if not request.reply.done():
                request.reply.set_result({})
