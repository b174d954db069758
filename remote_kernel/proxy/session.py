"""``RemoteSession``: the life of the kernel's remote compute session.

Created in the background as soon as the kernel starts (the first cell waits for it), kept
alive by a heartbeat while idle, replaced when found gone, destroyed at shutdown. It also owns
how runs travel: the push channel when the server offers it and it can be opened, else HTTP
polling (:meth:`RemoteSession.transport`).

Threads: everything here runs on the kernel's main (shell) event loop, except :meth:`destroy`,
which the Control thread calls with a client of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as p
from ..client import RunLoopClient
from ..errors import NotFoundError, RemoteKernelError, SessionNotFoundError
from .channel import ChannelTransport, OutputHandler
from .early import EarlySession
from .transports import PollingTransport, RunTransport

log = logging.getLogger(__name__)

#: Events on the push channel after which the session is gone.
GONE_EVENTS = ("session_terminated",)


@dataclass(frozen=True)
class SessionSpec:
    """What to ask the server for (from the kernel's traits)."""

    image: str
    name: str
    resources: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 120.0
    shutdown_timeout: float = 2.0
    transport: str = "auto"  # "auto" | "channel" | "polling"
    reattach: bool = False  # an existing session of this name is adopted, with a note


class RemoteSession:
    """The session's id (once created), the remote kernel's info, and the run transport."""

    def __init__(self, spec: SessionSpec, client: Callable[[], RunLoopClient]) -> None:
        self.spec = spec
        self._client = client
        self.id: str | None = None
        self.generation = 0  # bumped for every new session (history sessions follow it)
        self.lost = False  # the previous session vanished: the next cell says so
        self.kernel_info: dict[str, Any] = {}
        self.channel: ChannelTransport | None = None
        self._task: asyncio.Task[str] | None = None
        self._closing: asyncio.Future[None] | None = None
        self.shutting_down = False
        #: Awaited with each new session's id before it counts as started (a failure of its
        #: own is its business: it should leave a note instead of raising).
        self.after_create: Callable[[str], Awaitable[None]] | None = None
        self.started_at = time.monotonic()  # when the current creation began
        self.notes: list[str] = []  # stderr notes for the next cell (e.g. a failed start sync)
        #: Set: comms are wanted; gets what the kernel sends outside any run (with its parent).
        self.on_output: OutputHandler | None = None
        self.leased = False  # the server destroys the session if we are gone (``leases``)
        #: A session created while the kernel process started (proxy/early.py): the first
        #: creation takes it instead of asking the server.
        self.early: EarlySession | None = None

    @property
    def client(self) -> RunLoopClient:
        return self._client()

    # -- creation ------------------------------------------------------------------------------
    def start(self) -> asyncio.Task[str]:
        """The creation task (started now unless one is running or succeeded)."""
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            self.started_at = time.monotonic()
            task = self._task = asyncio.ensure_future(self._create())
        return task

    @property
    def creating(self) -> asyncio.Task[str] | None:
        return self._task

    async def _create(self) -> str:
        client = self.client
        spec = self.spec
        early, self.early = self.early, None
        ref = await early.take(client) if early is not None else None
        if ref is None:
            await client.probe()
            ref = await client.create_session(
                spec.image, spec.name, resources=dict(spec.resources), environ=dict(spec.environ),
                max_wait=spec.startup_timeout,
            )  # fmt: skip
        self.id = ref.id
        if not ref.created and spec.reattach:
            await self._note_reattached(client, ref.id)
        self.generation += 1
        log.info("remote session %s (%s) on %s", ref.name, ref.id, client.endpoint)
        if self.shutting_down:
            await self.destroy(client)
            raise RemoteKernelError("the kernel is shutting down")
        if ref.kernel_info is not None:  # the create answer carried it
            self.kernel_info = ref.kernel_info
        elif client.has(p.FEATURE_KERNEL_INFO):
            try:
                info = await client.session_info(ref.id)
                remote = info.get("kernelInfo")
                self.kernel_info = remote if isinstance(remote, dict) else {}
            except RemoteKernelError as exc:
                log.warning("could not read the remote kernel info: %s", exc)
        await self._open_channel(ref.id)
        if self.after_create is not None:
            await self.after_create(ref.id)
        return ref.id

    async def _note_reattached(self, client: RunLoopClient, session_id: str) -> None:
        """The first cell says that it runs in a session that was already there."""
        try:
            info = await client.session_info(session_id, timeout=10)
        except RemoteKernelError:
            info = {}
        started = str(info.get("creationTime") or "")[:19].replace("T", " ")
        running = (
            "A cell started earlier is still running in it; this cell runs after it."
            if info.get("statusInfo") == "busy"
            else "No cell is running in it."
        )
        since = f" (started {started} UTC)" if started else ""
        self.notes.append(
            f"[remote_kernel] Re-attached to the remote session {self.spec.name!r}{since}: "
            f"its variables and imports are as they were. {running}\n"
        )

    def take_notes(self) -> list[str]:
        """The notes left for the next cell (and forgets them)."""
        notes, self.notes = self.notes, []
        return notes

    async def _open_channel(self, session_id: str) -> None:
        if self.spec.transport == "polling" or not self.client.has(p.FEATURE_PUSH_CHANNEL):
            return
        on_output = self.on_output if self.client.has(p.FEATURE_COMMS) else None
        channel = ChannelTransport(
            self.client, session_id, on_event=self._on_event, on_output=on_output
        )
        try:
            await channel.open()
        except RemoteKernelError as exc:
            log.warning("push channel unavailable (%s); polling over HTTP instead", exc)
            return
        self.channel = channel
        # an open channel holds a lease on the session (``leases``): renew it while we live
        self.leased = self.client.has(p.FEATURE_LEASES)

    @property
    def comms(self) -> bool:
        """Comm messages travel both ways: wanted, offered, and the push channel is up."""
        channel = self.channel
        return channel is not None and channel.on_output is not None and channel.broken is None

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        log.info("session event %s %s", name, data)
        if name in GONE_EVENTS and not self.shutting_down:
            self.forget()

    def forget(self) -> None:
        """The remote session vanished: the next cell creates a new one and says so."""
        self.id = None
        self._task = None
        self.lost = True
        channel, self.channel = self.channel, None
        if channel is not None:
            self._closing = asyncio.ensure_future(channel.aclose())

    # -- runs --------------------------------------------------------------------------------------
    async def transport(self) -> RunTransport:
        """How the next run travels: the channel (reopened if it broke), else polling."""
        assert self.id is not None
        channel = self.channel
        if channel is not None and channel.broken is not None:
            try:
                await channel.open()
            except RemoteKernelError as exc:
                log.info("push channel still unavailable: %s", exc)
        if channel is not None and channel.broken is None:
            return channel
        return self.polling()

    def polling(self) -> PollingTransport:
        assert self.id is not None
        return PollingTransport(self.client, self.id)

    # -- keep-alive and the end --------------------------------------------------------------------
    async def heartbeat_forever(self, interval: float, busy: Callable[[], bool]) -> None:
        """Keep an idle session alive and renew our lease (``leases``: also while a cell runs,
        at least every third of the server's ``orphanTimeout``); notice early when it has
        vanished."""
        while True:
            server = self.client.server
            orphan = server.orphan_timeout if server is not None and self.leased else 0.0
            await asyncio.sleep(min(interval, orphan / 3) if orphan > 0 else interval)
            sid = self.id
            if sid is None or self.shutting_down or (busy() and not orphan):
                continue
            try:
                await self.client.session_info(sid, timeout=10)
            except SessionNotFoundError:
                if self.id == sid and not busy():
                    log.warning("remote session %s is gone", sid)
                    self.forget()
            except Exception as exc:  # the next cell reports real problems
                log.debug("heartbeat failed: %s", exc)

    async def destroy(self, client: RunLoopClient) -> None:
        """Destroy the session (by id, else by name); quietly if it is already gone."""
        target = self.id or self.spec.name
        timeout = self.spec.shutdown_timeout
        try:
            await asyncio.wait_for(client.destroy_session(target, timeout=timeout), timeout)
            log.info("destroyed remote session %s", target)
        except (NotFoundError, SessionNotFoundError):
            pass
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.warning("could not destroy remote session %s: %s", target, exc)

    async def close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.aclose()
