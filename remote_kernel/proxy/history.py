"""The cells this kernel ran, answered to ``history_request`` (tail, range, search). Pure.

The remote kernel keeps its own history, but the run-loop API has no way to ask for it, so
the proxy remembers what it executed: one entry per stored cell, numbered by execution count,
in "sessions" that start over when the remote session is replaced.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    session: int
    line: int
    source: str
    output: str | None = None


class CellHistory:
    """An append-only list of executed cells with the queries of the Jupyter protocol."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []

    def add(self, session: int, line: int, source: str) -> None:
        self._entries.append(Entry(session, line, source))

    def query(
        self,
        access: str,
        *,
        current: int,
        output: bool = False,
        session: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
    ) -> list[list[Any]]:
        """``history`` of a ``history_reply``: ``[session, line, source]`` (or ``[source, out]``).

        ``range`` reads one session (``session`` 0 or None: the current one; negative: counted
        back from it) from line ``start`` up to, not including, ``stop``; ``search`` matches a
        glob, keeping only the last of equal sources with ``unique``; ``n`` keeps the last n.
        """
        entries = list(self._entries)
        if access == "tail":
            entries = entries[-n:] if n else entries
        elif access == "range":
            wanted = current if not session else (session if session > 0 else current + session)
            entries = [
                e
                for e in entries
                if e.session == wanted
                and (start is None or e.line >= start)
                and (stop is None or e.line < stop)
            ]
        elif access == "search":
            entries = [e for e in entries if fnmatch.fnmatchcase(e.source, pattern or "*")]
            if unique:
                seen: set[str] = set()
                kept = []
                for e in reversed(entries):
                    if e.source not in seen:
                        seen.add(e.source)
                        kept.append(e)
                entries = kept[::-1]
            if n:
                entries = entries[-n:]
        else:
            entries = []
        return [[e.session, e.line, [e.source, e.output] if output else e.source] for e in entries]
