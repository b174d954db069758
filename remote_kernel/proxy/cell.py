"""``CellRun``: one ``execute_request``, from waiting for the session to the ``execute_reply``.

The run loop is :class:`~remote_kernel.runloop.RunState` driven by a transport (the push channel,
or HTTP polling, which takes over if the channel is lost mid-run). Around it:

* **output**: every record becomes an IOPub message (:func:`remote_kernel.iopub.iopub_from_record`),
  comm records (extension ``comms``) comm messages with their buffers; without comms, widget
  views and unshowable records are counted and explained once, at the end;
* **stdin**: a prompt becomes an ``input_request`` (cancelled by an interrupt);
* **the interrupt race**: an interrupt (Control thread, or SIGINT) is forwarded to the server,
  then the run is drained to its end; if it does not end within ``interrupt_grace`` the cell is
  answered and the run keeps being drained in the background (its output no longer published),
  never abandoned;
* **errors**: this is the one place where :mod:`remote_kernel.errors` become an IOPub ``error``
  and an ``execute_reply`` with status ``error`` (house style §3.4 item 6).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import protocol as p
from ..errors import RemoteKernelError, SessionNotFoundError, TransportError
from ..iopub import CommMessage, comm_from_record, iopub_from_record, without_widget_views
from ..protocol import RunResult
from ..runloop import RunState, Update
from . import replies
from .channel import ChannelLost
from .session import RemoteSession
from .transports import RunTransport

log = logging.getLogger(__name__)

SESSION_FAILED = (
    "Could not start the remote session (image {image!r} on {endpoint}): {error}\n"
    "Fix the cause, then run the cell again: the kernel retries."
)
SESSION_LOST = (
    "The remote session {name!r} is gone (it was destroyed, culled as idle, or the server "
    "restarted). Its state (variables, imports) was lost. Run the cell again: a new session "
    "will be started."
)
NEW_SESSION_NOTE = (
    "[remote_kernel] Started a new remote session: the previous one was lost, and with it all "
    "earlier state (variables, imports). Re-run earlier cells if this one needs them.\n"
)
#: A session start that takes longer than this (s) is announced in the cell that waits for it.
STARTING_NOTE_AFTER = 1.0


def starting_note(remote: RemoteSession) -> str:
    """Where the session is starting, with which image and resources."""
    spec = remote.spec
    resources = ", ".join(f"{k}={v}" for k, v in spec.resources.items()) or "the server's defaults"
    return (
        f"[remote_kernel] Starting a remote session on {remote.client.endpoint} "
        f"(image {spec.image or 'the default'}, resources {resources})...\n"
    )


UNSHOWN_NOTE = (
    "[remote_kernel] The remote sent {count} output(s) that Jupyter cannot show "
    "(record type(s): {types}); see the kernel log.\n"
)
WIDGET_NOTE = (
    "[remote_kernel] {count} interactive widget(s) shown as text: widgets (ipywidgets) talk to "
    "the kernel over comms, which the run-loop API does not carry. Use their text or static "
    "forms (e.g. tqdm.tqdm instead of tqdm.notebook) in remote sessions.\n"
)


class CellHost(Protocol):
    """What a cell needs from its kernel."""

    remote: RemoteSession
    counter: replies.ExecutionCounter
    interrupt_grace: float
    reconnect_timeout: float

    def publish(self, msg_type: str, content: dict[str, Any]) -> None: ...
    def ask(self, prompt: str, password: bool) -> Awaitable[str]: ...
    def publish_comm(self, comm: CommMessage) -> None: ...
    def remember(self, count: Any, code: str) -> None: ...


class _Interrupted(Exception):
    """The cell was interrupted before its run started."""


SHUT_DOWN = "the kernel shut down while this cell ran"


class KernelShuttingDown(Exception):
    """The kernel shut down (closing its channel and client) while the cell ran."""


@dataclass(eq=False)
class CellRun:
    """Everything about the cell being executed."""

    host: CellHost
    code: str
    silent: bool
    store_history: bool
    allow_stdin: bool
    options: dict[str, Any] = field(default_factory=dict)
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    forwarded: asyncio.Event = field(default_factory=asyncio.Event)
    state: RunState | None = None
    transport: RunTransport | None = None
    interrupt_sent: bool = False
    detached: bool = False  # the reply went out: later output is not published
    stderr: list[str] = field(default_factory=list)
    unshown: dict[str, int] = field(default_factory=dict)
    widgets: int = 0
    comms: bool = False  # comm messages travel (the server offers ``comms``, the channel is up)
    stdin_refused: bool = False
    lost_at: float | None = None  # when the server stopped answering mid-run (a restart?)
    on_detach: Callable[[asyncio.Future[Any]], None] | None = None

    # -- the race between the run and an interrupt -----------------------------------------------
    async def execute(self) -> dict[str, Any]:
        """The ``execute_reply`` content; never raises."""
        try:
            work = asyncio.ensure_future(self._execute())
            waiter = asyncio.ensure_future(self.interrupted.wait())
            done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                waiter.cancel()
                return work.result()
            if self.state is None:
                work.cancel()
                self.forwarded.set()
                return self.local_error("KeyboardInterrupt", "interrupted before the run")
            if not self.interrupt_sent:
                await self.forward_interrupt()
            self.forwarded.set()
            grace = self.host.interrupt_grace
            try:
                return await asyncio.wait_for(asyncio.shield(work), grace)
            except asyncio.TimeoutError:
                self.detached = True  # keep draining in the background, never abandon the run
                if self.on_detach is not None:
                    self.on_detach(work)
                return self.local_error(
                    "KeyboardInterrupt",
                    f"interrupted; the remote run did not stop within {grace:g} s and is being "
                    "drained in the background",
                )
        except RemoteKernelError as exc:
            return self.local_error(*self._describe(exc))
        except Exception as exc:  # a bug must still end the cell with a reply
            if self.host.remote.shutting_down:  # its client was closed under it: not a bug
                return self.local_error("KernelShuttingDown", SHUT_DOWN)
            log.exception("unexpected error while running a cell")
            return self.local_error(type(exc).__name__, f"remote_kernel failed: {exc}")

    def _describe(self, exc: RemoteKernelError) -> tuple[str, str]:
        if isinstance(exc, SessionNotFoundError):
            self.host.remote.forget()
            return "SessionLostError", SESSION_LOST.format(name=self.host.remote.spec.name)
        return type(exc).__name__, str(exc)

    async def forward_interrupt(self) -> None:
        """Tell the server to interrupt this run (over its transport, else over HTTP)."""
        state, transport = self.state, self.transport
        if state is None or transport is None or state.done:
            return
        self.interrupt_sent = True
        interrupt_id = state.new_interrupt()
        try:
            await transport.interrupt(state, interrupt_id)
            return
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.info("interrupt over %s failed (%s); trying HTTP", transport.name, exc)
        try:  # the same id: if the first attempt arrived after all, this one is a no-op
            await self.host.remote.polling().interrupt(state, interrupt_id)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.warning("could not forward the interrupt: %s", exc)

    # -- the run -----------------------------------------------------------------------------------
    async def _execute(self) -> dict[str, Any]:
        session = self.host.remote
        for attempt in (1, 2):
            try:
                await self._session_ready()
            except _Interrupted:
                return self.local_error("KeyboardInterrupt", "interrupted while starting")
            except (RemoteKernelError, asyncio.TimeoutError) as exc:
                timed_out = isinstance(exc, asyncio.TimeoutError)
                message = SESSION_FAILED.format(
                    image=session.spec.image, endpoint=session.client.endpoint,
                    error="timed out" if timed_out else exc,
                )  # fmt: skip
                ename = "TimeoutError" if timed_out else type(exc).__name__
                return self.local_error(ename, message)
            if session.lost:
                session.lost = False
                self.publish("stream", {"name": "stderr", "text": NEW_SESSION_NOTE})
            for note in session.take_notes():
                self.publish("stream", {"name": "stderr", "text": note})
            client = session.client
            jupyter = client.has(p.FEATURE_JUPYTER_CONSOLE)
            options = {"console": p.CONSOLE_JUPYTER, **self.options} if jupyter else {}
            self.comms = jupyter and session.comms
            if self.comms:
                options["comms"] = True
            self.state = state = RunState(
                self.code, options, cursors=client.has(p.FEATURE_OUTPUT_CURSOR),
                idempotent=client.has(p.FEATURE_IDEMPOTENT_RUNS),
            )  # fmt: skip
            self.transport = await session.transport()
            try:
                result = await self._drive(state, jupyter)
            except SessionNotFoundError:
                if attempt == 1 and not state.started and not self.interrupted.is_set():
                    session.forget()  # it never ran: run it in a new session, and say so
                    continue
                raise
            return self._reply(result)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _session_ready(self) -> str:
        """Wait for the background session creation, interruptibly; a start that takes longer
        than ``STARTING_NOTE_AFTER`` says where it starts and then how long it took."""
        remote = self.host.remote
        task = remote.start()
        waiter = asyncio.ensure_future(self.interrupted.wait())
        noted = False
        try:
            timeout = remote.spec.startup_timeout + 30
            if not task.done():
                wait = max(0.0, remote.started_at + STARTING_NOTE_AFTER - time.monotonic())
                await asyncio.wait({task, waiter}, timeout=wait, return_when="FIRST_COMPLETED")
                if not task.done() and not self.interrupted.is_set():
                    self.publish("stream", {"name": "stderr", "text": starting_note(remote)})
                    noted = True
            await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self.interrupted.is_set() and not task.done():
            raise _Interrupted
        if not task.done():
            raise asyncio.TimeoutError
        session_id = task.result()
        if noted:
            took = time.monotonic() - remote.started_at
            ready = f"[remote_kernel] ready in {took:.1f} s\n"
            self.publish("stream", {"name": "stderr", "text": ready})
        return session_id

    async def _drive(self, state: RunState, jupyter: bool) -> RunResult:
        assert self.transport is not None
        while True:
            try:
                update = await self.transport.next(state)
            except ChannelLost as exc:
                if self.host.remote.shutting_down:  # the kernel closes it: the cell ends here
                    raise KernelShuttingDown() from exc
                log.warning("push channel lost mid-run (%s); continuing over HTTP polling", exc)
                self.transport = self.host.remote.polling()
                continue
            except TransportError as exc:
                if not await self._ride_out(state, exc):
                    raise
                continue
            if self.lost_at is not None:
                took = time.monotonic() - self.lost_at
                self.lost_at = None
                text = f"[remote_kernel] The server answers again (after {took:.0f} s).\n"
                self.publish("stream", {"name": "stderr", "text": text})
            prompt = self._publish_update(update, jupyter)
            if update.new_prompt:
                text = await self._answer(update.result, prompt)
                await self.transport.answer(state, text)
            elif update.terminal:
                self._note_unshown()
                return update.result

    async def _ride_out(self, state: RunState, exc: TransportError) -> bool:
        """The server stopped answering mid-run (it may be restarting, and then re-adopts the
        session and this run): ask again, with backoff, up to ``reconnect_timeout`` s. False:
        give up (the error stands). A run the server might not know is asked again only when
        the server treats a repeated query as the same run."""
        timeout = self.host.reconnect_timeout
        if timeout <= 0 or self.interrupted.is_set() or not (state.started or state.idempotent):
            return False
        now = time.monotonic()
        if self.lost_at is None:
            self.lost_at = now
            text = (
                f"[remote_kernel] Lost the server ({exc}); trying again for up to "
                f"{timeout:g} s (a restarted server picks this cell up again)...\n"
            )
            self.publish("stream", {"name": "stderr", "text": text})
        waited = now - self.lost_at
        if waited >= timeout:
            return False
        try:  # an interrupt ends the wait
            await asyncio.wait_for(self.interrupted.wait(), min(1.0, 0.2 + waited / 4))
            return False
        except asyncio.TimeoutError:
            return True

    # -- output ------------------------------------------------------------------------------------
    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        if not (self.silent or self.detached):
            self.host.publish(msg_type, content)

    def _publish_update(self, update: Update, jupyter: bool) -> str:
        """Publish the new records; return the held-back base-layer input prompt."""
        shown = RunResult(update.result.run_id, update.result.status, update.records)
        records, prompt = replies.split_base_prompt(shown, jupyter)
        for rec in records:
            if rec[0] == p.STDERR and isinstance(rec[1], str):
                if self.stdin_refused:
                    continue  # the traceback of our own interrupt: the cell's error is ours
                self.stderr.append(rec[1])
            if self.comms and rec[0] in p.COMM_RECORD_TYPES:
                comm = comm_from_record(rec)
                if comm is not None:  # widget state: published even for a silent cell
                    self.host.publish_comm(comm)
                    continue
            msg = iopub_from_record(rec)
            if msg is None:
                kind = str(rec[0])
                self.unshown[kind] = self.unshown.get(kind, 0) + 1
                log.warning("cannot show a remote %r record: %.200r", kind, rec[1])
                continue
            msg_type, content = msg
            if not self.comms and msg_type in (
                p.DISPLAY_DATA, p.EXECUTE_RESULT, p.UPDATE_DISPLAY_DATA
            ):  # fmt: skip
                content, dropped = without_widget_views(content)
                self.widgets += dropped
            self.publish(msg_type, content)
        return prompt

    def _note_unshown(self) -> None:
        if self.widgets:
            text = WIDGET_NOTE.format(count=self.widgets)
            self.publish("stream", {"name": "stderr", "text": text})
        if self.unshown:
            text = UNSHOWN_NOTE.format(
                count=sum(self.unshown.values()), types=", ".join(sorted(self.unshown))
            )
            self.publish("stream", {"name": "stderr", "text": text})

    # -- stdin -------------------------------------------------------------------------------------
    async def _answer(self, result: RunResult, prompt: str) -> str:
        """The line for a new prompt; "" when interrupted or stdin is refused."""
        if self.interrupted.is_set():
            return await self._after_interrupt()
        if not self.allow_stdin:
            # Only a base-layer server gets here (the jupyter console passes allow_stdin): the
            # remote cannot be told, so it is interrupted (its input() raises, the code stops,
            # as ipykernel's would), then given an empty line, which a Backend.AI runner still
            # waits for; the user gets the usual StdinNotImplementedError.
            self.stdin_refused = True
            await self.forward_interrupt()
            return ""
        options = result.options or {}
        request = asyncio.ensure_future(
            self.host.ask(str(options.get("prompt", prompt)), bool(options.get("is_password")))
        )
        waiter = asyncio.ensure_future(self.interrupted.wait())
        try:
            await asyncio.wait({request, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not request.done():
            request.cancel()
            return await self._after_interrupt()
        try:
            return request.result()
        except EOFError:
            return ""

    async def _after_interrupt(self) -> str:
        """Answer an interrupted prompt with "" once the remote has been told to interrupt,
        so the empty line cannot run on before the interrupt lands (never abandon the run)."""
        try:
            await asyncio.wait_for(self.forwarded.wait(), 5)
        except asyncio.TimeoutError:
            pass
        return ""

    # -- the reply ---------------------------------------------------------------------------------
    def _reply(self, result: RunResult) -> dict[str, Any]:
        reply = replies.execute_reply(
            result, self.host.counter, store_history=self.store_history,
            stderr="".join(self.stderr),
        )  # fmt: skip
        if self.store_history:
            self.host.remember(reply["execution_count"], self.code)
        if self.stdin_refused:
            return self.local_error(
                "StdinNotImplementedError", replies.STDIN_REFUSED, reply["execution_count"]
            )
        return reply

    def local_error(self, ename: str, evalue: str, count: int | None = None) -> dict[str, Any]:
        """An error the proxy reports (transport, session, stdin): one IOPub error, the reply."""
        if count is None:
            count = self.host.counter.advance(self.store_history)
        self.publish("error", replies.error_content(ename, evalue))
        return replies.error_reply(ename, evalue, count)
