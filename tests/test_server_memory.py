"""Server memory stays bounded: the per-run output cap, and downloads/uploads that stream.

In process (tracemalloc): a run's :class:`RecordLog` never keeps more than its bound, whatever
the shape of the output (one stream nobody polls, one huge write, many tiny records), and
dropped records cost nothing each; a download archive is made piece by piece (the same bytes as
``tarfile``) and an upload is written as it arrives. A real ipykernel asked by
:mod:`~remote_kernel.server.kernel_streams` publishes stream messages of bounded size, with
exactly the same text. Against a real server with a 2 MiB cap: a run writing 40 MB, not polled
until it is done, grows the server by far less than its output, ends with the dropped-records
notice and hands out an exact prefix and suffix of the output; a 20 MB file downloads correctly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import tarfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager

from remote_kernel.errors import RequestTooLargeError
from remote_kernel.server import files
from remote_kernel.server.kernel_streams import MAX_MESSAGE_CHARS, bound_stream_messages
from remote_kernel.server.record_log import RecordLog
from remote_kernel.server.runs import PAGE_BYTES, Run, RunTable

from .conftest import ServerProcess, start_server
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
CAP = 2 * MIB
NOTICE = re.compile(
    r"\[remote_kernel: (\d+) output record\(s\), about (\d+) bytes, were dropped .*\]\n", re.S
)


def _fill(log: RecordLog, total: int, size: int, kinds: tuple[str, ...] = ("stdout",)) -> None:
    for i in range(total // size):
        log.append([kinds[i % len(kinds)], "x" * (size - 1) + "\n"])


def _traced(fn: object) -> tuple[object, int, int]:
    """Run ``fn()`` under tracemalloc: (its result, memory still held, peak), in bytes."""
    tracemalloc.start()
    try:
        result = fn()  # type: ignore[operator]
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, current, peak


# -- the record log ----------------------------------------------------------------------------
def test_one_unpolled_stream_is_bounded_and_reported() -> None:
    def run() -> RecordLog:
        log = RecordLog(CAP)
        log.append(["stdout", "first\n"])
        log.read(0)  # the query's first response handed this out; the rest merges
        _fill(log, 3 * CAP, 64 * 1024)
        return log

    log, held, peak = _traced(run)
    assert isinstance(log, RecordLog)
    assert log.bytes <= CAP
    assert held <= CAP + 64 * 1024  # what the log really holds, measured
    assert peak <= CAP + 4 * 64 * 1024  # never a merged copy of the whole output
    records, cursor = log.read(1)
    assert records[0][0] == "stderr" and "were dropped" in records[0][1]
    assert all(kind == "stdout" for kind, _ in records[1:])
    kept = "".join(data for _, data in records[1:])
    assert CAP // 2 <= len(kept) <= CAP and kept.endswith("x\n")
    log.ack(cursor)
    assert log.bytes == 0 and log.dropped == 0


def test_one_write_larger_than_the_cap_keeps_its_tail() -> None:
    log = RecordLog(CAP)
    text = "".join(f"{i:09d}\n" for i in range(3 * CAP // 10))
    log.append(["stdout", text])
    assert log.bytes <= CAP
    records, _ = log.read(0)
    assert "were dropped" in records[0][1]
    kept = "".join(data for _, data in records[1:])
    assert text.endswith(kept) and len(kept) > CAP // 2


def test_a_long_write_is_cut_without_copying_it_whole() -> None:
    """A write merging into an open record and cut into many: its records are the only copy
    (no copy of its rest); longer than the bound, its head is dropped without being copied."""
    text = "".join(f"{i:09d}\n" for i in range(800_000))  # 8 MB, 8 chunks

    def cut() -> RecordLog:
        log = RecordLog(64 * MIB)
        log.append(["stdout", "first\n"])
        log.append(["stdout", text])
        return log

    log, held, peak = _traced(cut)
    assert isinstance(log, RecordLog)
    assert held <= len(text) + 64 * 1024 and peak <= held + 64 * 1024
    records, _ = log.read(0)
    assert all(len(data) == log.chunk for _, data in records[:-1])
    assert "".join(data for _, data in records) == "first\n" + text

    def over() -> RecordLog:
        log = RecordLog(CAP)
        log.append(["stdout", "first\n"])
        log.append(["stdout", text])
        return log

    log, held, peak = _traced(over)
    assert isinstance(log, RecordLog)
    assert held <= CAP and peak <= CAP + 2 * log.chunk
    records, _ = log.read(0)
    dropped = NOTICE.fullmatch(records[0][1])
    assert dropped and int(dropped[1]) == log.dropped
    kept = "".join(data for _, data in records[1:])
    assert ("first\n" + text).endswith(kept) and CAP // 2 < len(kept) <= CAP


def test_many_small_records_cost_what_they_count() -> None:
    """Alternating stdout/stderr writes never merge: each is a record. Their real memory,
    and the bookkeeping of the hundreds of thousands dropped, stay within the bound."""

    cap = CAP // 4

    def run() -> RecordLog:
        log = RecordLog(cap)
        _fill(log, 8 * cap, 16, kinds=("stdout", "stderr"))
        return log

    log, held, _ = _traced(run)
    assert isinstance(log, RecordLog)
    assert len(log) == 8 * cap // 16 and log.dropped > len(log) // 2
    assert log.bytes <= cap and held <= cap
    records, _ = log.read(0)
    assert records[0][1].startswith(f"[remote_kernel: {log.dropped} output record(s)")


def test_a_backlog_is_handed_out_in_pages() -> None:
    run = Run("r", jupyter=False, max_bytes=64 * MIB)
    run.emit([["stdout", "x" * (3 * PAGE_BYTES)]])
    run.finish(0)
    statuses, received, cursor = [], 0, 0
    while True:
        body = run.take(cursor)["result"]
        statuses.append(body["status"])
        received += sum(len(d) for _, d in body["console"])
        cursor = body["cursor"]
        if body["status"] == "finished":
            break
    assert received == 3 * PAGE_BYTES
    assert statuses[-1] == "finished" and set(statuses[:-1]) == {"continued"}
    assert len(statuses) >= 3


def test_older_runs_share_one_bound() -> None:
    table = RunTable()
    for i in range(5):
        run = Run(f"r{i}", jupyter=False, max_bytes=CAP)
        table.add(run)
        _fill(run.log, CAP, 64 * 1024)
        run.finish(0)
    total = sum(r.log.bytes for r in table._runs.values())
    assert total <= 2 * CAP


# -- downloads and uploads ---------------------------------------------------------------------
def _tree(root: Path) -> Path:
    top = root / "data"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "a.txt").write_text("a" * 1000)
    (top / "sub" / "b.bin").write_bytes(os.urandom(700_000))
    (top / "sub" / "deeper" / "empty").write_bytes(b"")
    os.symlink("/etc/hostname", top / "sub" / "link")
    return top


async def _streamed(target: Path, rel: str, limit: int) -> tuple[bytes, int]:
    """The archive ``tar_stream`` sends, and the largest piece it held."""
    budget = files.DownloadBudget(limit)
    out = io.BytesIO()
    largest = 0
    async for piece in files.tar_stream(target, rel, budget):
        largest = max(largest, len(piece))
        out.write(piece)
    return out.getvalue(), largest


async def test_tar_stream_is_tarfile_byte_for_byte(tmp_path: Path) -> None:
    top = _tree(tmp_path)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w") as tar:
        tar.add(top, arcname="data", recursive=True)
    data, largest = await _streamed(top, "data", 10 * MIB)
    assert data == expected.getvalue()
    assert largest <= 2 * files.READ_CHUNK
    assert files.tar_size(top) >= len(data) - tarfile.RECORDSIZE
    with pytest.raises(RequestTooLargeError):
        files.download_targets(tmp_path, ["data"], max_bytes=len(data) // 2)
    assert files.download_targets(tmp_path, ["data"], max_bytes=len(data) + 1) == [top]


async def test_download_and_upload_never_hold_a_whole_file(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        for _ in range(20):
            fh.write(os.urandom(MIB))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()

    tracemalloc.start()
    try:
        with open(tmp_path / "big.tar", "wb") as sink:
            async for piece in files.tar_stream(big, "big.bin", files.DownloadBudget(64 * MIB)):
                sink.write(piece)
        _, download_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        async def chunks() -> AsyncIterator[bytes]:
            block = b"u" * (256 * 1024)
            for _ in range(80):
                yield block

        await files.save_upload(tmp_path, "up/loaded.bin", chunks(), max_bytes=64 * MIB)
        _, upload_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert download_peak < 2 * MIB, download_peak  # a tenth of the file
    assert upload_peak < 2 * MIB, upload_peak
    assert (tmp_path / "up" / "loaded.bin").stat().st_size == 20 * MIB
    with tarfile.open(tmp_path / "big.tar") as tar:
        member = tar.extractfile("big.bin")
        assert member is not None
        assert hashlib.sha256(member.read()).hexdigest() == digest


# -- ipykernel's stream messages -------------------------------------------------------------
@contextlib.asynccontextmanager
async def _kernel() -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """A real ipykernel (the python3 kernelspec) and its connected client, as the server has."""
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        info = (await kc.kernel_info(reply=True, timeout=30))["content"]
        yield kc, info
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def _streams(kc: Any, code: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Run ``code``: the texts of its stream messages by stream name, and the reply content."""
    texts: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            texts[msg["content"]["name"]].append(msg["content"]["text"])
        assert msg["msg_type"] != "error", msg["content"]

    reply = await kc.execute_interactive(code, output_hook=hook, timeout=60)
    return texts, reply["content"]


BOUNDED_CELL = """\
import sys, threading
for i in range(3000):
    print(f"{i:05d}" + "a" * 94)
sys.stdout.write("B" * 35_000)
sys.stdout.write("\\n")
print("\u00e9" * 25_000, file=sys.stderr)
t = threading.Thread(target=lambda: print("c" * 12_000))
t.start(); t.join()
try:
    sys.stdout.write(b"bytes")
except TypeError:
    print("TypeError")
own = sys.stdout.write
sys.stdout.write = lambda text: own(text.upper())
print("abc" * 5000)
sys.stdout.write = own
print(sorted(k for k in globals() if "bound" in k or "remote" in k),
      sum("remote_kernel_limit" in vars(c) for c in type(sys.stdout).__mro__))
"""
BOUNDED_STDOUT = (
    "".join(f"{i:05d}" + "a" * 94 + "\n" for i in range(3000)) + "B" * 35_000 + "\n"
    + "c" * 12_000 + "\n" + "TypeError\n" + "ABC" * 5000 + "\n" + "[] 1\n"
)  # fmt: skip


async def test_ipykernel_publishes_bounded_stream_messages() -> None:
    """Every stream message holds at most the bound; the text of each stream is exactly what
    was written (long lines, one long write, another thread, a user's own ``write``); the
    request left no name, no execution count and no second wrapper (asked twice)."""
    limit = 10_000
    async with _kernel() as (kc, info):
        assert await bound_stream_messages(kc, info, limit=limit)
        assert await bound_stream_messages(kc, info, limit=limit)  # already bounded: no-op
        texts, reply = await _streams(kc, BOUNDED_CELL)
    assert reply["status"] == "ok" and reply["execution_count"] == 1
    assert "".join(texts["stdout"]) == BOUNDED_STDOUT
    assert "".join(texts["stderr"]) == "\u00e9" * 25_000 + "\n"
    sizes = [len(t) for name in texts for t in texts[name]]
    assert max(sizes) <= limit and len(texts["stdout"]) >= len(BOUNDED_STDOUT) // limit


async def test_other_kernels_are_left_alone() -> None:
    async with _kernel() as (kc, info):
        assert not await bound_stream_messages(kc, {**info, "implementation": "xeus-python"})
        texts, _ = await _streams(
            kc, "import sys; print(hasattr(sys.stdout, 'remote_kernel_limit'))"
        )
    assert texts["stdout"] == ["False\n"]


# -- against a real server ---------------------------------------------------------------------
@contextlib.contextmanager
def _peak_rss(pid: int) -> Iterator[dict[str, float]]:
    """The peak RSS (MB) of process ``pid`` while the block runs: sampled every 20 ms."""

    def rss() -> float:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024

    out = {"start": rss(), "peak": rss()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            out["peak"] = max(out["peak"], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], rss())


@pytest.fixture(scope="module")
def small_cap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("small-cap"),
                       f"--ServerApp.max_run_output_bytes={CAP}")  # fmt: skip
    yield srv
    srv.stop()


OUTPUT_CELL = """\
import sys
for i in range({lines}):
    print(f"{{i:09d}}" + "x" * 990)
sys.stdout.flush()
open({marker!r}, "w").close()
"""
OUTPUT_LINES = 40_000  # 40 MB in 1000-character lines: 20 times the cap
BOUND_CHECK = "import sys; print(type(sys.stdout).remote_kernel_limit)"


def _line(i: int) -> str:
    return f"{i:09d}" + "x" * 990 + "\n"


async def test_unpolled_run_keeps_at_most_the_cap(small_cap_server: ServerProcess) -> None:
    srv = small_cap_server
    assert srv.proc is not None
    async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
        sid = await api.create(f"t-{uuid.uuid4().hex[:8]}")
        try:
            # the server had the kernel bound its stream messages
            records, _ = await api.run(sid, BOUND_CHECK)
            assert records == [["stdout", f"{MAX_MESSAGE_CHARS}\n"]]
            # the cell's marker is in its work dir (which the server has on the host, sandboxed
            # or not): it says the cell is done, without asking the server anything
            marker = srv.state_dir / "sessions" / sid / "work" / "done"
            run_id = uuid.uuid4().hex
            code = OUTPUT_CELL.format(lines=OUTPUT_LINES, marker=marker.name)
            with _peak_rss(srv.proc.pid) as rss:
                result = await api.execute(sid, "query", code, run_id)  # returns at once
                deadline = time.monotonic() + 40
                while not marker.exists():
                    assert time.monotonic() < deadline, "the cell did not finish"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the last output reaches the server
            # 40 MB went through; the server held the 2 MiB cap and one bounded message at a
            # time (a whole ipykernel message, about 40 MB here, would cost it 4 times that)
            assert rss["peak"] - rss["start"] < 30, rss
            console = list(result["console"])
            while result["status"] != "finished":
                result = await api.execute(sid, "continue", "", run_id, cursor=result["cursor"])
                console += result["console"]
            assert result["exitCode"] == 0
            # stdout up to one notice, then stdout: an exact prefix and an exact suffix
            [at] = [n for n, (kind, _) in enumerate(console) if kind != "stdout"]
            notice = NOTICE.fullmatch(console[at][1])
            assert console[at][0] == "stderr" and notice, console[at]
            head = "".join(data for _, data in console[:at])
            tail = "".join(data for _, data in console[at + 1 :])
            full = "".join(_line(i) for i in range(OUTPUT_LINES))
            assert full.startswith(head) and full.endswith(tail)
            assert CAP // 2 <= len(tail) <= CAP  # the newest output, up to the cap
            # the notice counts what is missing: its text, plus a little memory per record
            dropped, about = int(notice[1]), int(notice[2])
            missing = len(full) - len(head) - len(tail)
            assert missing <= about <= missing + dropped * 1024
            # a restarted kernel is bounded again
            status, _ = await api.call("PATCH", f"/session/{sid}")
            assert status == 204
            records, _ = await api.run(sid, BOUND_CHECK)
            assert records == [["stdout", f"{MAX_MESSAGE_CHARS}\n"]]
            # the session still works, and a 20 MB file downloads in one streamed archive
            await api.run(sid, "open('big.bin', 'wb').write(bytes(range(256)) * 80000)")
            status, parts = await api.download(sid, "big.bin")
            assert status == 200 and len(parts) == 1
            with tarfile.open(fileobj=io.BytesIO(parts[0])) as tar:
                member = tar.extractfile("big.bin")
                assert member is not None
                assert member.read() == bytes(range(256)) * 80000
        finally:
            await api.destroy(sid)
