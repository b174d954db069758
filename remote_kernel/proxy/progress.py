"""``Progress``: the in-place progress display of a ``%remote`` transfer.

A transfer that is still running ``after`` seconds (about one) shows a ``display_data`` with a
``display_id`` (transient), then updates it in place with ``update_display_data`` at most every
``every`` seconds, and once more at the end, at 100 %. A quicker transfer shows nothing (its
one-line report is enough). Each display carries ``text/html`` (a progress bar) and
``text/plain`` (one line, for terminal frontends such as jupyter console, which show the first
display and ignore its updates; the report line that follows says how it ended).
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Callable
from typing import Any

Publish = Callable[[str, dict[str, Any]], None]


def format_size(size: float) -> str:
    """``512 B``, ``1.5 KiB``, ``200.0 MiB``..."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def percent(done: int, total: int | None) -> int | None:
    """Whole percent done, never 100 before the end; None when the total is unknown."""
    if total is None:
        return None
    if total <= 0:
        return 100
    value = int(done * 100 // total)
    return max(0, min(value, 100 if done >= total else 99))


def progress_bundle(label: str, done: int, total: int | None, rate: float | None) -> dict[str, str]:
    """The MIME bundle of one state: ``text/plain`` and ``text/html``."""
    pct = percent(done, total)
    amount = format_size(done) if total is None else f"{format_size(done)} of {format_size(total)}"
    speed = f", {format_size(rate)}/s" if rate else ""
    head = f"{label}: {pct}%" if pct is not None else label
    text = f"{head} ({amount}{speed})"
    bar = (
        f'<progress value="{pct}" max="100" style="width: 20em"></progress>'
        if pct is not None
        else '<progress style="width: 20em"></progress>'
    )
    return {"text/plain": text, "text/html": f"<div>{bar} {html.escape(text)}</div>"}


class Progress:
    """One transfer's display. Call :meth:`update` as bytes move, :meth:`finish` at the end."""

    def __init__(
        self,
        publish: Publish | None,
        label: str,
        total: int | None,
        *,
        after: float = 1.0,
        every: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publish = publish
        self.label = label
        self.total = total
        self.after = after
        self.every = every
        self.clock = clock
        self.display_id = f"remote-transfer-{uuid.uuid4().hex}"
        self.done = 0
        self.started = clock()
        self.shown = False
        self._last = 0.0

    def add(self, count: int) -> None:
        self.update(self.done + count)

    def update(self, done: int) -> None:
        """``done`` bytes so far; shows or refreshes the display when it is due."""
        self.done = done
        now = self.clock()
        if self.publish is None:
            return
        if not self.shown:
            if now - self.started >= self.after:
                self._send("display_data", now)
        elif now - self._last >= self.every:
            self._send("update_display_data", now)

    def finish(self) -> None:
        """The end: a shown display goes to 100 % (the total, if the total was unknown)."""
        if self.total is None or self.done > self.total:
            self.total = self.done
        self.done = self.total
        if self.shown:
            self._send("update_display_data", self.clock())

    def _send(self, msg_type: str, now: float) -> None:
        assert self.publish is not None
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0.2 else None
        content = {
            "data": progress_bundle(self.label, self.done, self.total, rate),
            "metadata": {},
            "transient": {"display_id": self.display_id},
        }
        self.publish(msg_type, content)
        self.shown = True
        self._last = now
