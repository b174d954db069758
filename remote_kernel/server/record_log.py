"""``RecordLog``: the console records of one run, numbered, replayable, and bounded in memory.

Protocol §1.5 (merging), §2.3 (cursor, memory bound). A stream record counts its real Python
memory, long output is kept in pieces so the oldest can be dropped piece by piece, and dropped
records are remembered as ranges and reported as one stderr notice where they were. Merging
never copies what a record holds: a merged record keeps the texts it was made of
(:class:`Pieces`) and is joined only when it is read, so output nobody collects is never copied.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import deque

from .. import protocol as p
from ..protocol import Record

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
#: Texts merged into a record are kept as they came; consecutive ones shorter than this are
#: joined, so many tiny writes do not cost a str each.
SMALL_PIECE_CHARS = 4096


class Pieces(list[str]):
    """The text of a merged stream record not handed out yet, in the pieces it arrived in
    (``str(pieces)`` is the text). :attr:`chars` is its length, :attr:`size` its real memory
    (the list and each str)."""

    __slots__ = ("_strs", "chars")

    def __init__(self, first: str) -> None:
        super().__init__([first])
        self.chars = len(first)
        self._strs = sys.getsizeof(first)

    def add(self, text: str) -> None:
        last = self[-1]
        if len(last) + len(text) <= SMALL_PIECE_CHARS:
            joined = last + text
            self[-1] = joined
            self._strs += sys.getsizeof(joined) - sys.getsizeof(last)
        else:
            self.append(text)
            self._strs += sys.getsizeof(text)
        self.chars += len(text)

    @property
    def size(self) -> int:
        return self._strs + sys.getsizeof(self)

    def __str__(self) -> str:
        return "".join(self)


def _chars(data: str | Pieces) -> int:
    return data.chars if isinstance(data, Pieces) else len(data)


def record_size(rec: Record) -> int:
    """What a record counts against the bound, in bytes.

    A stream record (the bulk of any large output) counts its real Python memory: the str
    (``sys.getsizeof``: 2 or 4 bytes a character for non-ASCII text), or its :class:`Pieces`,
    plus ``RECORD_OVERHEAD``,
    so many small records cannot hold several times the bound. Other records count their JSON
    length plus 16.
    """
    data = rec[1]
    if isinstance(data, Pieces):
        return data.size + RECORD_OVERHEAD
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
      polls, or one huge write) becomes several records. A merged record keeps its texts as
      :class:`Pieces` (merging copies nothing), joined when it is first handed out.
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
        pos = 0  # data[:pos] is taken care of (merged, or dropped): slicing copies, so it is late
        merged = False
        if (
            self._kept
            and self._end - 1 >= max(self.sent, self.floor)
            and self._kept[-1][0] == kind
            and _chars(self._kept[-1][1]) < chunk
        ):
            last = self._kept[-1]
            pos = min(chunk - _chars(last[1]), len(data))
            if pos:
                if not isinstance(last[1], Pieces):
                    last[1] = Pieces(last[1])
                last[1].add(data if pos == len(data) else data[:pos])
            size = record_size(last)
            self.bytes += size - self._sizes[-1]
            self._sizes[-1] = size
            self._enforce_bound()
            merged = True
        rest = len(data) - pos
        skip = (rest - self.max_bytes) // chunk * chunk if rest > self.max_bytes else 0
        if skip:
            # One write larger than the bound: everything kept goes, and so do the whole chunks
            # of its head that would be dropped anyway (counted, never copied).
            self._enforce_bound(0)
            per_chunk = sys.getsizeof(data) * chunk // len(data) + RECORD_OVERHEAD
            for _ in range(skip // chunk):
                self._note_gap(self._end, per_chunk)
                self._end += 1
            self._oldest = self._end
            pos += skip
        if pos == 0 and len(data) <= chunk:
            if data or not merged:
                self._push([kind, data])
            return
        for start in range(pos, len(data), chunk):
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
                if isinstance(item[1], Pieces):  # joined once, when first handed out; it
                    item[1] = str(item[1])  # keeps counting its pieces' (larger) size
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
