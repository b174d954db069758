"""One execution ("run") of a compute session: its record log, status and input hand-off.

Pure asyncio state, no kernel I/O: :class:`~remote_kernel.server.runner.SessionRunner` feeds a
:class:`Run` from the kernel's IOPub and stdin, and the HTTP handlers read it back with
:meth:`Run.read`. Protocol §1.5 (statuses, merging), §2.3 (cursor, memory bound), §2.4 (input).
A session's runs by id, bounded, are a :class:`RunTable`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import protocol as p
from ..protocol import Record

RUNNING = "running"
#: Finished runs kept per session, so a client that lost a final response can replay it.
KEEP_FINISHED_RUNS = 4
#: Ids of runs no longer kept, remembered so that a late retried query is refused, not re-run.
REMEMBER_RUN_IDS = 4096
#: Most bytes of records (as :attr:`RecordLog.bytes` counts them) in one response body.
PAGE_BYTES = 4 * 1024 * 1024


#: Python's memory for one kept stream record besides its str (``sys.getsizeof``): the
#: ``[kind, data]`` list (72 bytes), its slots in the two deques and its size (an int). About
#: 90 bytes measured with tracemalloc; counted with a margin (``tests/test_server_memory.py``
#: checks that the records kept never take more than the bound).
RECORD_OVERHEAD = 128
#: Most dropped-record ranges remembered separately (older ones merge; their bytes get approximate).
MAX_GAPS = 256
#: Largest stream record: longer output is kept as several records of at most this many
#: characters (at most 1/16 of the bound), so the oldest output can be dropped piece by piece.
MAX_CHUNK_CHARS = 1024 * 1024
MIN_CHUNK_CHARS = 1024


def record_size(rec: Record) -> int:
    """What a record counts against the bound, in bytes.

    A stream record (the bulk of any large output) counts its real Python memory: the str
    (``sys.getsizeof``: 2 or 4 bytes a character for non-ASCII text) plus ``RECORD_OVERHEAD``,
    so many small records cannot hold several times the bound. Other records count their JSON
    length plus 16.
    """
    data = rec[1]
    if isinstance(data, str) and rec[0] in (p.STDOUT, p.STDERR):
        return sys.getsizeof(data) + RECORD_OVERHEAD
    if isinstance(data, str):
        return len(data) + 16
    return len(json.dumps(data, default=str)) + 16


class RecordLog:
    """The console records of one run, numbered from 0, holding at most ``max_bytes``.

    * Consecutive stdout (or stderr) records merge while the last one has not been handed out;
      a record handed out is never changed again, so replaying a cursor returns the same prefix.
      A stream record holds at most :attr:`chunk` characters: longer output (a long run nobody
      polls, or one huge write) becomes several records.
    * ``read(n)`` returns records ``n..end`` and the new cursor ``end``; ``ack(n)`` frees the
      records before ``n`` (the client confirmed them by sending cursor ``n``).
    * :attr:`bytes` is the size of the records kept (:func:`record_size`) and never exceeds
      ``max_bytes`` once ``append`` returns: the oldest records are dropped (also the newest,
      when it alone is larger than the bound), and a read reports them as one stderr record
      saying how much was dropped. Dropped records cost no memory each: they are remembered
      as ranges ``[start, stop, bytes]``.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.chunk = max(MIN_CHUNK_CHARS, min(MAX_CHUNK_CHARS, max_bytes // 16))
        self._kept: deque[Record] = deque()  # records [_oldest, _end)
        self._sizes: deque[int] = deque()
        self._end = 0
        self._oldest = 0  # first index not yet freed or dropped
        # dropped records as [start, stop, bytes], covering [acked, _oldest)
        self._gaps: deque[list[int]] = deque()
        self._cuts: set[int] = set()  # cursors handed out at or after _oldest: gaps split there
        self.sent = 0  # records [0, sent) were handed out at least once
        self.floor = 0  # records before this never merge with later ones (batch step ends)
        self.acked = 0  # records [0, acked) are freed
        self.bytes = 0

    def __len__(self) -> int:
        return self._end

    @property
    def dropped(self) -> int:
        """Records dropped and not yet acknowledged."""
        return self._oldest - self.acked

    def append(self, rec: Record) -> None:
        kind, data = rec[0], rec[1]
        if kind not in (p.STDOUT, p.STDERR) or not isinstance(data, str):
            self._push([kind, data])
            return
        chunk = self.chunk
        merged = False
        if (
            self._kept
            and self._end - 1 >= max(self.sent, self.floor)
            and self._kept[-1][0] == kind
            and len(self._kept[-1][1]) < chunk
        ):
            last = self._kept[-1]
            room = chunk - len(last[1])
            head, data = (data, "") if len(data) <= room else (data[:room], data[room:])
            last[1] = last[1] + head
            size = sys.getsizeof(last[1]) + RECORD_OVERHEAD
            self.bytes += size - self._sizes[-1]
            self._sizes[-1] = size
            self._enforce_bound()
            merged = True
        skip = (len(data) - self.max_bytes) // chunk * chunk if len(data) > self.max_bytes else 0
        if skip:
            # One write larger than the bound: everything kept goes, and so do the whole chunks
            # of its head that would be dropped anyway (counted, never copied).
            self._enforce_bound(0)
            per_chunk = sys.getsizeof(data) * chunk // len(data) + RECORD_OVERHEAD
            for _ in range(skip // chunk):
                self._note_gap(self._end, per_chunk)
                self._end += 1
            self._oldest = self._end
            data = data[skip:]
        if len(data) <= chunk:
            if data or not merged:
                self._push([kind, data])
            return
        for start in range(0, len(data), chunk):
            self._push([kind, data[start : start + chunk]])

    def _push(self, rec: Record) -> None:
        size = record_size(rec)
        self._kept.append(rec)
        self._sizes.append(size)
        self._end += 1
        self.bytes += size
        self._enforce_bound()

    def _enforce_bound(self, limit: int | None = None) -> None:
        limit = self.max_bytes if limit is None else limit
        while self.bytes > limit and self._kept:
            self._kept.popleft()
            size = self._sizes.popleft()
            self.bytes -= size
            self._note_gap(self._oldest, size)
            self._oldest += 1

    def _note_gap(self, index: int, size: int) -> None:
        gaps = self._gaps
        if gaps and gaps[-1][1] == index and index not in self._cuts:
            gaps[-1][1] += 1
            gaps[-1][2] += size
        else:
            gaps.append([index, index + 1, size])
            self._cuts.discard(index)
            if len(gaps) > MAX_GAPS:  # merge the two oldest (adjacent) ranges
                first = gaps.popleft()
                gaps[0][0], gaps[0][2] = first[0], gaps[0][2] + first[2]

    def shrink(self, max_bytes: int) -> None:
        """Lower the bound (older runs of a session share one), dropping the oldest records."""
        self.max_bytes = max(0, min(self.max_bytes, max_bytes))
        self._enforce_bound()

    def read(
        self, start: int, stop: int | None = None, *, budget: int | None = None
    ) -> tuple[list[Record], int]:
        """Records ``start..stop`` (dropped ones summarised), and the cursor after them.

        With ``budget``, the records kept stop once they reach ``budget`` bytes (at least one
        is returned); the cursor says where the next read goes on.
        """
        end = self._end if stop is None else min(stop, self._end)
        start = min(start, end)
        out: list[Record] = []
        lo, hi = max(start, self.acked), min(end, self._oldest)
        if lo < hi:
            count = size = 0
            for first, last, nbytes in self._gaps:
                a, z = max(first, lo), min(last, hi)
                if a < z:
                    count += z - a
                    size += nbytes * (z - a) // (last - first)
            if count:
                out.append(_dropped_notice(count, size))
        i = max(start, self._oldest)
        if i < end:
            taken = 0
            offset = i - self._oldest
            kept = itertools.islice(
                zip(self._kept, self._sizes, strict=True), offset, end - self._oldest
            )
            for item, size in kept:
                if budget is not None and taken and taken + size > budget:
                    break
                out.append([item[0], item[1]])
                taken += size
                i += 1
            end = i
        self.sent = max(self.sent, end)
        if end >= self._oldest:
            self._cuts.add(end)
        return out, end

    def mark_step(self) -> None:
        """A batch step ended: what follows never merges with what came before."""
        self.floor = self._end
        self._cuts.add(self._end)

    def ack(self, upto: int) -> None:
        """Free records before ``upto`` (never past what was handed out)."""
        upto = min(upto, self.sent)
        if upto <= self.acked:
            return
        while self._oldest < upto and self._kept:
            self._kept.popleft()
            self.bytes -= self._sizes.popleft()
            self._oldest += 1
        self._oldest = max(self._oldest, upto)
        gaps = self._gaps
        while gaps and gaps[0][1] <= upto:
            gaps.popleft()
        if gaps and gaps[0][0] < upto:
            first, last, nbytes = gaps[0]
            gaps[0] = [upto, last, nbytes * (last - upto) // (last - first)]
        self.acked = upto
        self._cuts = {c for c in self._cuts if c > upto}


def _dropped_notice(count: int, size: int) -> Record:
    return p.record(
        p.STDERR,
        f"[remote_kernel: {count} output record(s), about {size} bytes, were dropped because "
        "the client did not collect them in time (ServerApp.max_run_output_bytes).]\n",
    )


class Run:
    """The state of one execution, shared by the kernel side and the HTTP side."""

    def __init__(self, run_id: str, *, jupyter: bool, max_bytes: int) -> None:
        self.run_id = run_id
        self.jupyter = jupyter
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

    # -- kernel side ------------------------------------------------------------------------
    def emit(self, records: list[Record]) -> None:
        for rec in records:
            self.log.append(rec)
        if records:
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
