"""``MagicCell``: a cell with ``%remote`` lines, from its first step to the ``execute_reply``.

The cell's steps (:func:`~remote_kernel.proxy.magics.plan_cell`) run in order: each chunk of
code as a :class:`~remote_kernel.proxy.cell.CellRun` (the remote runs it), each magic line as a
:class:`~remote_kernel.proxy.commands.RemoteCommands` command (the proxy runs it). The first
step that fails ends the cell with its error (status ``error``, so nbclient and papermill
stop); an interrupt ends the running step and the cell.

**One execution count.** The first code chunk is run with the cell's ``store_history``, the
others without (so the remote counts the cell once), and their ``execute_result`` carry the
cell's count. A cell with no code takes its count from a remote run of its magic lines as
comments when the remote counts cells (a Python kernel behind the lossless console), or else
from the proxy's counter, as every base-layer cell does.

To the kernel it looks like a :class:`CellRun` (``execute``, ``local_error``, the interrupt
events, ``forward_interrupt``, ``on_detach``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import protocol as p
from ..errors import RemoteKernelError, SessionNotFoundError
from ..iopub import CommMessage
from . import replies
from .cell import NEW_SESSION_NOTE, SESSION_FAILED, SESSION_LOST, CellRun
from .commands import MagicHost, RemoteCommands
from .magics import CodeChunk, MagicError, MagicLine, MagicUsageError, history_stub, plan_cell
from .session import RemoteSession

log = logging.getLogger(__name__)


class _ChunkHost:
    """The kernel as seen by one code chunk of a magic cell: its ``execute_result`` carry the
    cell's count, and the history gets the whole cell."""

    def __init__(self, cell: MagicCell, publish: bool = True) -> None:
        self.cell = cell
        self.host = cell.host
        self.remote: RemoteSession = cell.host.remote
        self.counter: replies.ExecutionCounter = cell.host.counter
        self.interrupt_grace: float = cell.host.interrupt_grace
        self.reconnect_timeout: float = cell.host.reconnect_timeout
        self._publish = publish
        self.printed: list[str] = []

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        if not self._publish:
            if msg_type == "stream" and content.get("name") == "stdout":
                self.printed.append(str(content.get("text", "")))
            return
        if msg_type == p.EXECUTE_RESULT and self.cell.count is not None:
            content = {**content, "execution_count": self.cell.count}
        self.host.publish(msg_type, content)

    def ask(self, prompt: str, password: bool) -> Awaitable[str]:
        return self.host.ask(prompt, password)

    def publish_comm(self, comm: CommMessage) -> None:
        self.host.publish_comm(comm)

    def remember(self, count: Any, code: str) -> None:
        if self._publish:
            self.host.remember(count, self.cell.code)


@dataclass(eq=False)
class MagicCell:
    """A cell whose ``%remote`` lines the proxy runs, in order with its code."""

    host: MagicHost
    code: str
    silent: bool
    store_history: bool
    allow_stdin: bool
    options: dict[str, Any] = field(default_factory=dict)
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    forwarded: asyncio.Event = field(default_factory=asyncio.Event)
    on_detach: Callable[[asyncio.Future[Any]], None] | None = None
    cwd: Path | None = None
    count: int | None = None  # the cell's execution count, once a run has taken it
    _run: CellRun | None = None

    # -- as a CellRun --------------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        """The ``execute_reply`` content; never raises."""
        try:
            return await self._execute()
        except Exception as exc:  # a bug must still end the cell with a reply
            log.exception("unexpected error while running a %remote cell")
            return self.local_error(type(exc).__name__, f"remote_kernel failed: {exc}")

    def local_error(self, ename: str, evalue: str, count: int | None = None) -> dict[str, Any]:
        if count is None:
            count = self.host.counter.advance(self.store_history)
        self.publish("error", replies.error_content(ename, evalue))
        return replies.error_reply(ename, evalue, count)

    async def forward_interrupt(self) -> None:
        if self._run is not None:
            await self._run.forward_interrupt()

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        if not self.silent:
            self.host.publish(msg_type, content)

    # -- the steps -----------------------------------------------------------------------------
    async def _execute(self) -> dict[str, Any]:
        commands = RemoteCommands(self.host, self.publish, self._session, self._hidden, self.cwd)
        reply: dict[str, Any] | None = None
        failure: tuple[str, str] | None = None
        try:
            steps = plan_cell(self.code)
        except MagicUsageError as exc:
            steps, failure = [], (exc.ename, str(exc))
        code_steps = [s for s in steps if isinstance(s, CodeChunk)]
        last_code = code_steps[-1] if code_steps else None
        for step in steps:
            if isinstance(step, CodeChunk):
                reply = await self._run_code(step.code, last=step is last_code)
                if reply.get("status") != "ok":
                    break
            else:
                reply = None
                failure = await self._run_magic(commands, step)
                if failure is not None:
                    break
        count = await self._settle_count()
        if failure is not None:
            self.publish("error", replies.error_content(*failure))
            return replies.error_reply(*failure, count)
        if reply is None:
            reply = {"status": "ok", "payload": [], "user_expressions": {}}
        return {**reply, "execution_count": count}

    async def _run_code(self, code: str, *, last: bool) -> dict[str, Any]:
        store = self.store_history and self.count is None
        options = {
            **self.options,
            "store_history": store,
            "user_expressions": self.options.get("user_expressions", {}) if last else {},
        }
        run = CellRun(
            _ChunkHost(self), code, self.silent, store, self.allow_stdin, options,
            interrupted=self.interrupted, forwarded=self.forwarded, on_detach=self.on_detach,
        )  # fmt: skip
        self._run = run
        try:
            reply = await run.execute()
        finally:
            self._run = None
        if store and isinstance(reply.get("execution_count"), int):
            self.count = reply["execution_count"]
        return reply

    async def _run_magic(self, commands: RemoteCommands, step: MagicLine) -> tuple[str, str] | None:
        """Run one magic line, interruptibly; its (ename, evalue) if it failed."""
        if self.interrupted.is_set():
            return ("KeyboardInterrupt", "interrupted")
        work = asyncio.ensure_future(commands.run(step.command))
        waiter = asyncio.ensure_future(self.interrupted.wait())
        try:
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)  # its clean-up (partial files)
            self.forwarded.set()
            return ("KeyboardInterrupt", f"interrupted: {step.line}")
        try:
            work.result()
        except MagicError as exc:
            return (exc.ename, str(exc))
        except SessionNotFoundError:
            self.host.remote.forget()
            return ("SessionLostError", SESSION_LOST.format(name=self.host.remote.spec.name))
        except RemoteKernelError as exc:
            return (type(exc).__name__, str(exc))
        except OSError as exc:
            return (type(exc).__name__, str(exc))
        return None

    async def _settle_count(self) -> int:
        """The cell's execution count (see the module docstring)."""
        if self.count is not None:
            return self.count
        if not self.store_history:
            return self.host.counter.advance(False)
        if self._remote_counts() and not self.interrupted.is_set():
            stub = history_stub(self.code)
            options = {**self.options, "store_history": True, "user_expressions": {}}
            run = CellRun(
                _ChunkHost(self, publish=False), stub, False, True, False, options,
            )  # fmt: skip
            reply = await run.execute()
            count = reply.get("execution_count")
            if isinstance(count, int):  # also after a failure: the run took a count
                self.count = count
                self.host.remember(count, self.code)
                return count
        count = self.host.counter.advance(True)
        self.host.remember(count, self.code)
        return count

    def _remote_counts(self) -> bool:
        remote = self.host.remote
        if remote.id is None:
            return False
        language = (remote.kernel_info.get("language_info") or {}).get("name")
        return language == "python" and remote.client.has(p.FEATURE_JUPYTER_CONSOLE)

    # -- for the commands ----------------------------------------------------------------------
    async def _session(self) -> str:
        """The session's id, once it runs (a failure to start is the command's error)."""
        remote = self.host.remote
        task = remote.start()
        try:
            await asyncio.wait_for(asyncio.shield(task), remote.spec.startup_timeout + 30)
        except asyncio.TimeoutError:
            raise MagicError("TimeoutError", SESSION_FAILED.format(
                image=remote.spec.image, endpoint=remote.client.endpoint, error="timed out"
            )) from None  # fmt: skip
        except RemoteKernelError as exc:
            raise MagicError(type(exc).__name__, SESSION_FAILED.format(
                image=remote.spec.image, endpoint=remote.client.endpoint, error=exc
            )) from None  # fmt: skip
        if remote.lost:
            remote.lost = False
            self.publish("stream", {"name": "stderr", "text": NEW_SESSION_NOTE})
        for note in remote.take_notes():
            self.publish("stream", {"name": "stderr", "text": note})
        return task.result()

    async def _hidden(self, code: str) -> str:
        """Run ``code`` remotely without output, history or count; what it printed."""
        host = _ChunkHost(self, publish=False)
        options = {**self.options, "silent": True, "store_history": False, "user_expressions": {}}
        run = CellRun(host, code, False, False, False, options)
        self._run = run
        try:
            reply = await run.execute()
        finally:
            self._run = None
        return "".join(host.printed) if reply.get("status") == "ok" else ""
