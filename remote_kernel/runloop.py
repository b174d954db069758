"""``RunState``: one run's client-side state machine, pure (no sockets, no event loop, no clock).

Both transports drive it: HTTP polling (``query`` → ``continue``/``input`` calls, each built by
:meth:`RunState.next_call`) and the push channel (frames built by :meth:`RunState.run_frame` and
friends). Whatever comes back goes through :meth:`RunState.accept`, which hands out every record
exactly once, in order, however often a response is repeated or a channel resumed. So a lost
request is simply sent again (docs/protocol.md, "Exactly once"):

* the ``query`` is retried with the same ``runId`` (a server with ``idempotent-runs`` treats it
  as the same run, never a second execution);
* ``continue`` and ``input`` carry the cursor of the last record held, and ``input`` the number of
  the prompt it answers (``input_seq``), so a repeat neither loses, repeats nor feeds twice;
* an interrupt carries the run's id and its own id, so a repeat never interrupts twice or hits
  the next cell.

Against a base-layer server (a real Backend.AI manager) there is no cursor: records are handed
out once by the server, and a query whose response was lost cannot be retried safely.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from . import frames
from . import protocol as p
from .protocol import Record, RunResult


@dataclass(frozen=True)
class Call:
    """One HTTP execute request of the run (``POST /session/{id}``)."""

    mode: str
    code: str
    options: dict[str, Any]
    cursor: int | None
    #: Safe to send again when its response was lost.
    idempotent: bool


@dataclass(frozen=True)
class Update:
    """What one accepted result means for the kernel."""

    result: RunResult
    #: Records not handed out before, in order.
    records: list[Record]
    #: A prompt the user has not been asked yet: ask, then :meth:`RunState.answer`.
    new_prompt: bool = False
    #: The result skipped records (a channel frame past our cursor): resume from the cursor.
    gap: bool = False

    @property
    def terminal(self) -> bool:
        return self.result.terminal


@dataclass
class RunState:
    """The run ``run_id`` of ``code``: cursor, prompts and answers, status."""

    code: str
    options: dict[str, Any] = field(default_factory=dict)
    #: The server replays records from a cursor (``output-cursor``).
    cursors: bool = True
    #: The server treats a repeated query as the same run (``idempotent-runs``).
    idempotent: bool = True
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    cursor: int = 0
    started: bool = False  # a result of this run came back: the server knows it
    prompt: int = 0  # number of the latest prompt seen
    answered: int = 0  # number of the latest prompt answered (sent, maybe not yet delivered)
    pending: str | None = None  # the answer to prompt ``answered`` while not known delivered
    last: RunResult | None = None
    interrupt_ids: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.terminal

    @property
    def waiting(self) -> bool:
        """The run waits for an answer the user has not given yet."""
        return (
            self.last is not None
            and self.last.status == p.WAITING_INPUT
            and (self.prompt > self.answered)
        )

    # -- HTTP polling --------------------------------------------------------------------------
    def next_call(self) -> Call:
        """The request to send now; after a lost response, the same request again."""
        if not self.started:
            return Call("query", self.code, dict(self.options), self._cursor(), self.idempotent)
        if self.pending is not None:
            options = {"input_seq": self.answered} if self.cursors else {}
            return Call("input", self.pending, options, self._cursor(), self.cursors)
        return Call("continue", "", {}, self._cursor(), self.cursors)

    def _cursor(self) -> int | None:
        return self.cursor if self.cursors else None

    # -- push channel --------------------------------------------------------------------------
    def run_frame(self) -> dict[str, Any]:
        """Start the run or, when the server knows it, resume it from our cursor."""
        return frames.run(self.run_id, self.code, dict(self.options), self.cursor)

    def input_frame(self) -> dict[str, Any] | None:
        """The answer not yet known delivered (sent again after a reconnect), if any."""
        if self.pending is None:
            return None
        return frames.input_(self.run_id, self.answered, self.pending)

    def ack_frame(self) -> dict[str, Any]:
        return frames.ack(self.run_id, self.cursor)

    def input_accepted(self, seq: int) -> None:
        """The server confirmed it has the answer to prompt ``seq``."""
        if seq == self.answered:
            self.pending = None

    # -- both -------------------------------------------------------------------------------
    def accept(self, result: RunResult, start: int | None) -> Update:
        """Take a result whose records begin at record ``start`` (None: handed out once)."""
        records = list(result.console)
        if self.cursors and start is not None:
            if start > self.cursor:
                return Update(result, [], gap=True)
            records = records[self.cursor - start :]
            end = result.cursor if result.cursor is not None else start + len(result.console)
            self.cursor = max(self.cursor, end)
        self.started = True
        self.last = result
        if self.pending is not None and not self.cursors:
            self.pending = None  # base layer: the input call's own response proves delivery
        new_prompt = False
        if result.status == p.WAITING_INPUT:
            seq = result.options.get("input_seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                if seq > self.answered:
                    self.pending = None  # an earlier answer was delivered: this is a new prompt
                self.prompt = max(self.prompt, seq)
            elif self.pending is None and self.prompt <= self.answered:
                self.prompt = self.answered + 1
            new_prompt = self.prompt > self.answered
        elif self.pending is not None:
            self.pending = None  # the run moved on: the answer was delivered
        return Update(result, records, new_prompt=new_prompt)

    def answer(self, text: str) -> None:
        """The user's answer to the current prompt; sent by the next call or frame."""
        self.answered = self.prompt
        self.pending = text

    def new_interrupt(self) -> str:
        """An id for a new interrupt of this run (a retry reuses it)."""
        interrupt_id = uuid.uuid4().hex
        self.interrupt_ids.append(interrupt_id)
        return interrupt_id
