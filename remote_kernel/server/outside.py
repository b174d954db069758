"""``OutsideLog``: what a session's kernel sends that belongs to no run, numbered and bounded.

A widget callback's output and comm messages (parent: the frontend's ``comm_msg``), a thread
printing after its cell ended (parent: that cell's request), and the end of each forwarded
frontend message (``done``, with its reply) are kept here in kernel order, each item with the
``msg_id`` of its parent, and pushed to the session's channel (extension ``comms``). A client
that reconnects names the item it got to and misses nothing still kept. Items past the bound
(count and bytes) are dropped oldest first; a client that asks for dropped items learns how many.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from ..protocol import Record

#: Items and bytes kept (what a channel client that went away for a while can still get).
MAX_ITEMS = 10_000
MAX_BYTES = 16 * 1024 * 1024


class OutsideLog:
    """Items ``{"parent", "record"}`` or ``{"parent", "done"}``, numbered from 0."""

    def __init__(self, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.start = 0  # number of the oldest item kept
        self.bytes = 0
        self._items: deque[tuple[dict[str, Any], int]] = deque()
        self._changed = asyncio.Event()

    @property
    def end(self) -> int:
        """The number the next item gets (the cursor of a client that has everything)."""
        return self.start + len(self._items)

    def add_records(self, parent: str | None, records: list[Record]) -> None:
        for rec in records:
            self._add({"parent": parent, "record": rec})

    def add_done(self, parent: str, reply: dict[str, Any] | None = None) -> None:
        """The forwarded frontend message ``parent`` is finished in the kernel."""
        self._add({"parent": parent, "done": reply or {}})

    def _add(self, item: dict[str, Any]) -> None:
        size = len(json.dumps(item, separators=(",", ":"))) + 16
        self._items.append((item, size))
        self.bytes += size
        while len(self._items) > 1 and (
            len(self._items) > self.max_items or self.bytes > self.max_bytes
        ):
            _, dropped = self._items.popleft()
            self.bytes -= dropped
            self.start += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def read(self, cursor: int, limit: int = 1000) -> tuple[list[dict[str, Any]], int, int]:
        """Items from ``cursor`` on (at most ``limit``): ``(items, first, dropped)`` where
        ``first`` is the number of the first item given and ``dropped`` how many wanted items
        are no longer kept."""
        cursor = max(0, min(cursor, self.end))
        dropped = max(0, self.start - cursor)
        first = max(cursor, self.start)
        offset = first - self.start
        items = [self._items[i][0] for i in range(offset, min(len(self._items), offset + limit))]
        return items, first, dropped

    async def wait_past(self, cursor: int) -> None:
        """Until an item numbered ``cursor`` or later exists."""
        while self.end <= cursor:
            await self._changed.wait()
