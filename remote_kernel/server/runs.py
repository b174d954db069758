"""One execution ("run") of a compute session: its record log, status and input hand-off.

Pure asyncio state, no kernel I/O: :class:`~remote_kernel.server.runner.SessionRunner` feeds a
:class:`Run` from the kernel's IOPub and stdin, and the HTTP handlers read it back with
:meth:`Run.read`. Protocol §1.5 (statuses, merging), §2.3 (cursor, memory bound), §2.4 (input).
A session's runs by id, bounded, are a :class:`RunTable`; a run's records are a
:class:`~remote_kernel.server.record_log.RecordLog`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import protocol as p
from ..protocol import Record
from .record_log import RecordLog

RUNNING = "running"
#: The stand-in for a record that a killed server delivered (see :meth:`Run.resume`).
RECOVERED = "recovered"
#: Finished runs kept per session, so a client that lost a final response can replay it.
KEEP_FINISHED_RUNS = 4
#: Ids of runs no longer kept, remembered so that a late retried query is refused, not re-run.
REMEMBER_RUN_IDS = 4096
#: Most bytes of records (as :attr:`RecordLog.bytes` counts them) in one response body. A
#: response costs the server a few times its records while it is sent (its JSON text, its bytes,
#: the socket's buffer): 2 MiB (one full stream record a response) keeps that small; 4 MiB
#: added 12 MB to the peak of ``benchmarks/server_memory.py`` (c).
PAGE_BYTES = 2 * 1024 * 1024


class Run:
    """The state of one execution, shared by the kernel side and the HTTP side."""

    def __init__(self, run_id: str, *, jupyter: bool, max_bytes: int) -> None:
        self.run_id = run_id
        self.jupyter = jupyter
        self.comms = False  # comm messages of the run are records too (extension ``comms``)
        self.msg_id: str | None = None  # of its execute_request in the kernel
        #: Re-adopted by a restarted server: its records are numbered on from the cursor of the
        #: client's first request (:meth:`resume`), which knows how many it already holds.
        self.recovering = False
        self.log = RecordLog(max_bytes)
        self.status = RUNNING
        self.exit_code: int | None = None
        self.reply: dict[str, Any] | None = None
        self.input_options: dict[str, Any] | None = None
        self.last_input_seq: int | None = None
        self.abandoned = False
        self.created = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.steps: deque[tuple[str, int, int]] = deque()  # batch: (status, exit code, log end)
        self.prompts = 0  # input prompts so far; the answer to prompt k carries input_seq k
        self.interrupts: set[str] = set()  # interrupt ids already acted on (a repeat is a no-op)
        self._input: asyncio.Future[str | None] | None = None
        self._changed = asyncio.Event()
        self._held: list[Record] = []

    # -- kernel side ------------------------------------------------------------------------
    def emit(self, records: list[Record]) -> None:
        if self.recovering:
            self._held.extend(records)
            return
        for rec in records:
            self.log.append(rec)
        if records:
            self._notify()

    def resume(self, cursor: int | None) -> None:
        """A recovered run's first request: number its records on from ``cursor`` (the
        records before it were delivered by the server that was killed)."""
        if not self.recovering:
            return
        self.recovering = False
        for _ in range(cursor or 0):
            self.log.append([RECOVERED, None])  # never handed out: acknowledged at once
        self.log.ack(cursor or 0)
        held, self._held = self._held, []
        self.emit(held)
        self._notify()

    async def ask_input(self, prompt: str, password: bool) -> str | None:
        """Enter ``waiting-input`` and wait for the client's line (None: give up, don't answer)."""
        self.prompts += 1
        if self.jupyter:
            self.input_options = {"is_password": password, "prompt": prompt,
                                  "input_seq": self.prompts}  # fmt: skip
        else:
            if prompt:
                self.log.append(p.record(p.STDOUT, prompt))
            self.input_options = {"is_password": password}
        self._input = asyncio.get_running_loop().create_future()
        self.status = p.WAITING_INPUT
        self._notify()
        try:
            return await self._input
        finally:
            self._input = None
            self.input_options = None
            if self.status == p.WAITING_INPUT:
                self.status = RUNNING
            self._notify()

    def step_done(self, status: str, exit_code: int) -> None:
        """A batch step ended: one response will report ``status`` after the step's output."""
        self.log.mark_step()
        self.steps.append((status, exit_code, len(self.log)))
        self._notify()

    def finish(self, exit_code: int, reply: dict[str, Any] | None = None) -> None:
        if self.status == p.FINISHED:
            return
        self.cancel_input()
        self.status = p.FINISHED
        self.exit_code = exit_code
        self.reply = reply
        self._notify()

    def fail(self, ename: str, evalue: str) -> None:
        """End with an error of the server's (not of the code): an error record (Jupyter
        console) or ``evalue`` on stderr (base layer), exit code 1 and an error reply."""
        if self.jupyter:
            self.emit([p.record(p.ERROR, {"ename": ename, "evalue": evalue,
                                          "traceback": [f"{ename}: {evalue}"]})])  # fmt: skip
        else:
            self.emit([p.record(p.STDERR, evalue + "\n")])
        self.finish(1, self.error_reply(ename, evalue))

    @staticmethod
    def error_reply(ename: str, evalue: str) -> dict[str, Any]:
        """The ``execute_reply`` content of an error of the server's."""
        return {"status": "error", "ename": ename, "evalue": evalue,
                "traceback": [f"{ename}: {evalue}"], "execution_count": None}  # fmt: skip

    # -- client side ------------------------------------------------------------------------
    @property
    def waiting_input(self) -> bool:
        return self.status == p.WAITING_INPUT and self._input is not None

    def give_input(self, text: str, seq: int | None) -> bool:
        """Hand the client's line to the waiting kernel.

        With an ``input_seq`` the line answers exactly prompt number ``seq``: a repeat (a retried
        request) or an answer to another prompt is ignored, so a kernel is never fed twice.
        A line the kernel could not be sent (a lone surrogate) is refused with
        :class:`~remote_kernel.errors.InvalidAPIParamsError` before anything changes: the run
        keeps waiting, and a valid answer to the same prompt still works.
        """
        p.check_text(text, "The input answer")
        if seq is not None and (seq == self.last_input_seq or seq != self.prompts):
            return False
        if not self.waiting_input or self._input is None or self._input.done():
            return False
        self.last_input_seq = seq
        self.status = RUNNING
        self._input.set_result(text)
        return True

    def cancel_input(self) -> None:
        """Stop waiting for a line (interrupt, abandon, restart); the kernel is not answered."""
        if self._input is not None and not self._input.done():
            self._input.set_result(None)

    @property
    def settled(self) -> bool:
        """Finished or waiting for input: a poll returns at once."""
        return self.status in (p.FINISHED, p.WAITING_INPUT) or bool(self.steps)

    async def wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` holds or ``timeout`` passes (None: no limit)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not predicate():
            event = self._changed
            if deadline is None:
                await event.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return predicate()
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def poll(self, cursor: int | None, *, hold: float, coalesce: float) -> dict[str, Any]:
        """Wait per the poll-return policy (§1.5); return the response body (``cursor`` always).

        At once when settled; else as soon as output exists past ``start`` plus ``coalesce``
        seconds (cut short when the run settles); else after ``hold`` seconds.
        """
        self.resume(cursor)
        if cursor is not None:
            self.log.ack(cursor)
            start = cursor
        else:  # handed out once; what the last response held is kept until this request
            self.log.ack(self.log.sent)
            start = self.log.sent
        has_news = await self.wait(lambda: self.settled or len(self.log) > start, hold)
        if has_news and not self.settled and coalesce > 0:
            await self.wait(lambda: self.settled, coalesce)
        return self.take(start)

    async def follow(self, cursor: int, *, coalesce: float) -> AsyncIterator[dict[str, Any]]:
        """Every change of the run from ``cursor`` on, as response bodies, until the terminal one.

        A body is produced when records exist past the last one produced (after up to
        ``coalesce`` seconds for more), when a batch step ends, and when the status or the
        prompt changes (so ``waiting-input`` is reported once per prompt). The push channel
        sends each; records are freed only by :meth:`RecordLog.ack` (the client's ``ack``).
        """
        self.resume(cursor)
        reported = (RUNNING, 0)  # a run just started has nothing to report until it does

        def news() -> bool:
            return len(self.log) > cursor or bool(self.steps) or self._mark() != reported

        while True:
            await self.wait(news, None)
            if not self.settled and coalesce > 0:
                await self.wait(lambda: self.settled, coalesce)
            reported = self._mark()
            body = self.take(cursor)
            cursor = body["result"]["cursor"]
            yield body
            if body["result"]["status"] not in p.NON_TERMINAL:
                return

    def _mark(self) -> tuple[str, int]:
        return self.status, self.prompts

    def take(self, start: int) -> dict[str, Any]:
        """The response body for records ``start..`` now (a pending batch step first).

        One body carries at most ``PAGE_BYTES`` of records (at least one record): when more
        remain, it says ``continued`` and the client's next request gets the rest, so a large
        backlog is never serialised into one huge response.
        """
        if self.steps:
            status, exit_code, upto = self.steps[0]
            records, end = self.log.read(start, upto, budget=PAGE_BYTES)
            if end < min(upto, len(self.log)):
                return self.result(records, end, more=True)
            self.steps.popleft()
            return p.run_result(self.run_id, status, records, exit_code=exit_code, cursor=end)
        records, end = self.log.read(start, budget=PAGE_BYTES)
        return self.result(records, end, more=end < len(self.log))

    def result(
        self, records: list[Record], cursor: int | None, *, more: bool = False
    ) -> dict[str, Any]:
        """The execute response body for this run's current state (``continued`` while
        ``more`` records are waiting to be handed out)."""
        if more:
            status, exit_code, options = p.CONTINUED, None, None
        elif self.status == p.FINISHED:
            status, exit_code, options = p.FINISHED, self.exit_code, None
        elif self.status == p.WAITING_INPUT:
            status, exit_code, options = p.WAITING_INPUT, None, dict(self.input_options or {})
        else:
            status, exit_code, options = p.CONTINUED, None, None
        reply = self.reply if (self.jupyter and status == p.FINISHED) else None
        return p.run_result(
            self.run_id, status, records, exit_code=exit_code, options=options,
            cursor=cursor, reply=reply,
        )  # fmt: skip


class RunTable:
    """A session's runs by id, bounded.

    Only the last ``KEEP_FINISHED_RUNS`` finished runs are kept; the ids of the runs dropped are
    remembered (up to ``REMEMBER_RUN_IDS``), so a retried query for one is refused instead of
    running its code a second time.
    """

    def __init__(self) -> None:
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._past: OrderedDict[str, None] = OrderedDict()  # ids of runs no longer kept

    def get(self, run_id: str | None) -> Run | None:
        return self._runs.get(run_id or "")

    def forgotten(self, run_id: str | None) -> bool:
        """``run_id`` ran in this session, but its run is no longer kept."""
        return bool(run_id) and run_id in self._past

    def add(self, run: Run) -> None:
        """Keep ``run``; drop the oldest finished runs past the bound."""
        self._runs[run.run_id] = run
        finished = [rid for rid, r in self._runs.items() if r.status == p.FINISHED]
        for rid in finished[:-KEEP_FINISHED_RUNS]:
            del self._runs[rid]
            self._past[rid] = None
        # The runs kept besides the new one share one bound (the newest keep the most), so a
        # session holds at most two runs' worth of output however many runs nobody collected.
        budget = run.log.max_bytes
        for older in reversed(self._runs.values()):
            if older is not run:
                older.log.shrink(budget)
                budget -= older.log.bytes
        while len(self._past) > REMEMBER_RUN_IDS:
            self._past.popitem(last=False)
