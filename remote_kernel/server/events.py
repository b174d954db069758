"""Session and kernel lifecycle events, fanned out to SSE listeners (protocol §1.8)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

SERVER_CLOSE = "server_close"


@dataclass(frozen=True)
class Event:
    """One lifecycle event: ``session_*`` or ``kernel_*``, or ``server_close``."""

    name: str
    owner: str
    session_id: str = ""
    session_name: str = ""
    reason: str = ""
    exit_code: int | None = None

    @property
    def scope(self) -> str:
        return "kernel" if self.name.startswith("kernel_") else "session"

    def sse(self) -> bytes:
        data: dict[str, Any] = {
            "sessionId": self.session_id,
            "sessionName": self.session_name,
            "ownerAccessKey": self.owner,
            "reason": self.reason,
            "exitCode": self.exit_code,
        }
        if self.scope == "kernel":
            data.update({"kernelId": self.session_id, "clusterRole": "main", "clusterIdx": 0})
        return f"event: {self.name}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass(eq=False)
class Subscription:
    """One listener: the caller's own events, optionally of one session, within a scope."""

    owner: str
    session_id: str | None = None
    session_name: str | None = None
    scopes: frozenset[str] = frozenset({"session", "kernel"})
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def wants(self, event: Event) -> bool:
        if event.name == SERVER_CLOSE:
            return True
        if event.owner != self.owner or event.scope not in self.scopes:
            return False
        if self.session_id is not None:
            return event.session_id == self.session_id
        if self.session_name is not None:
            return event.session_name == self.session_name
        return True

    @property
    def bound(self) -> bool:
        """Follows one session: ends with ``server_close`` when that session ends."""
        return self.session_id is not None or self.session_name is not None


class EventHub:
    """Publishes events to every matching subscription."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, sub: Subscription) -> Subscription:
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            if sub.wants(event):
                sub.queue.put_nowait(event)
                if event.name == "session_terminated" and sub.bound:
                    sub.queue.put_nowait(Event(SERVER_CLOSE, event.owner, event.session_id,
                                               event.session_name, event.reason))  # fmt: skip

    def close_all(self, reason: str = "server-shutdown") -> None:
        for sub in list(self._subs):
            sub.queue.put_nowait(Event(SERVER_CLOSE, sub.owner, reason=reason))
