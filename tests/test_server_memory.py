"""Server memory stays bounded: the per-run output cap, and downloads/uploads that stream.

In process (tracemalloc): a run's :class:`RecordLog` never keeps more than its bound, whatever
the shape of the output (one stream nobody polls, one huge write, many tiny records), and
dropped records cost nothing each; a download archive is made piece by piece (the same bytes as
``tarfile``) and an upload is written as it arrives. Against a real server with a 2 MiB cap: a
run writing 3 times the cap, not polled until it is done, ends with the dropped-records notice and
hands out at most the cap; a 20 MB file downloads correctly.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from remote_kernel.errors import RequestTooLargeError
from remote_kernel.server import files
from remote_kernel.server.record_log import RecordLog
from remote_kernel.server.runs import PAGE_BYTES, Run, RunTable

from .conftest import ServerProcess, start_server
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
CAP = 2 * MIB


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


# -- against a real server ---------------------------------------------------------------------
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


async def test_unpolled_run_keeps_at_most_the_cap(
    small_cap_server: ServerProcess, tmp_path: Path
) -> None:
    srv = small_cap_server
    async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
        sid = await api.create(f"t-{uuid.uuid4().hex[:8]}")
        try:
            marker = tmp_path / "done"
            lines = 3 * CAP // 1000  # 3x the cap, in 1000-byte lines
            run_id = uuid.uuid4().hex
            code = OUTPUT_CELL.format(lines=lines, marker=str(marker))
            result = await api.execute(sid, "query", code, run_id)  # returns at once
            deadline = time.monotonic() + 30
            while not marker.exists():
                assert time.monotonic() < deadline, "the cell did not finish"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the last output reaches the server
            console = list(result["console"])
            while result["status"] != "finished":
                result = await api.execute(sid, "continue", "", run_id, cursor=result["cursor"])
                console += result["console"]
            assert result["exitCode"] == 0
            notices = [d for k, d in console if k == "stderr" and "were dropped" in d]
            assert len(notices) == 1, console[:3]
            stdout = "".join(d for k, d in console if k == "stdout")
            assert len(stdout) <= CAP + 2000  # what the first response carried, plus the cap
            assert stdout.endswith(f"{lines - 1:09d}" + "x" * 990 + "\n")  # the newest are kept
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
