"""The run record log and poll policy, without a kernel (pure asyncio state)."""

from __future__ import annotations

import asyncio
import random
import sys

import pytest

from remote_kernel.protocol import merge_console
from remote_kernel.server.record_log import SMALL_PIECE_CHARS, Pieces, RecordLog
from remote_kernel.server.runs import Run

pytestmark = pytest.mark.timeout(10)


def test_streams_merge_until_handed_out() -> None:
    log = RecordLog(10_000)
    log.append(["stdout", "a"])
    log.append(["stdout", "b"])
    log.append(["stderr", "c"])
    log.append(["stdout", "d"])
    records, cursor = log.read(0)
    assert (records, cursor) == ([["stdout", "ab"], ["stderr", "c"], ["stdout", "d"]], 3)
    log.append(["stdout", "e"])  # the handed-out "d" is frozen: "e" is a new record
    assert log.read(0) == ([["stdout", "ab"], ["stderr", "c"], ["stdout", "d"], ["stdout", "e"]], 4)
    assert log.read(3) == ([["stdout", "e"]], 4)


def test_stream_output_below_the_bound_is_lossless_and_in_order() -> None:
    """Writes of every size (merged into pieces, cut at the chunk size, ASCII or not),
    interleaved with reads, replays and acks: what is read is exactly what was written."""
    rng = random.Random(9)
    log = RecordLog(64 * 1024 * 1024)
    written: list[list[str]] = []
    got: list[list[str]] = []
    cursor = 0
    for i in range(400):
        kind = "stdout" if rng.random() < 0.8 else "stderr"
        size = rng.choice([0, 1, 10, 100, SMALL_PIECE_CHARS - 5, 5000, 70_000, 300_000])
        text = f"<{i}>" + "xé\U0001f600\n"[i % 4] * size
        log.append([kind, text])
        written.append([kind, text])
        if rng.random() < 0.1:
            records, end = log.read(cursor)
            assert log.read(cursor) == (records, end)  # a replay hands out the same records
            got += records
            cursor = end
            if rng.random() < 0.5:
                log.ack(cursor)
    records, cursor = log.read(cursor)
    got += records
    assert cursor == len(log) and log.dropped == 0
    assert all(type(data) is str and len(data) <= log.chunk for _, data in got)
    assert merge_console(got) == merge_console(written)


def test_merged_pieces_count_their_memory() -> None:
    """Tiny writes merge into pieces of a few KiB (not a str each, not one copy per write);
    what a merged record counts is at least what it holds."""
    log = RecordLog(64 * 1024 * 1024)
    for _ in range(20_000):
        log.append(["stdout", "y" * 50 + "\n"])
    [[_, data]] = list(log._kept)
    assert isinstance(data, Pieces) and data.chars == 20_000 * 51
    assert len(data) == -(-20_000 * 51 // (SMALL_PIECE_CHARS // 51 * 51))
    held = sys.getsizeof(data) + sum(sys.getsizeof(piece) for piece in data)
    assert held == data.size <= log.bytes
    records, _ = log.read(0)
    assert records == [["stdout", ("y" * 50 + "\n") * 20_000]]
    assert type(log._kept[0][1]) is str  # joined once, when handed out


def test_ack_frees_and_bound_drops_with_one_notice() -> None:
    log = RecordLog(200)
    for i in range(6):
        log.append(["display_data", {"data": {"text/plain": str(i) * 40}}])
    records, cursor = log.read(0)
    assert cursor == 6
    assert records[0][0] == "stderr"
    assert "were dropped" in records[0][1] and records[0][1].startswith("[remote_kernel: 4 ")
    assert [r[1]["data"]["text/plain"][0] for r in records[1:]] == ["4", "5"]
    log.ack(6)
    assert log.bytes == 0
    assert log.read(6) == ([], 6)


async def test_poll_returns_at_once_when_finished_and_holds_otherwise() -> None:
    run = Run("r1", jupyter=True, max_bytes=10_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = (await run.poll(None, hold=0.2, coalesce=0.0))["result"]
    assert (body["status"], body["console"], body["cursor"]) == ("continued", [], 0)
    assert 0.19 <= loop.time() - started < 0.5
    loop.call_later(0.05, run.emit, [["stdout", "x"]])
    started = loop.time()
    body = (await run.poll(0, hold=2.0, coalesce=0.01))["result"]
    assert body["console"] == [["stdout", "x"]] and loop.time() - started < 0.5
    run.finish(0, {"status": "ok"})
    body = (await run.poll(body["cursor"], hold=2.0, coalesce=0.0))["result"]
    assert (body["status"], body["exitCode"], body["reply"]) == ("finished", 0, {"status": "ok"})


async def test_input_hand_off_and_repeat_seq_ignored() -> None:
    run = Run("r2", jupyter=False, max_bytes=10_000)
    asker = asyncio.ensure_future(run.ask_input("name? ", False))
    await asyncio.sleep(0)
    body = (await run.poll(None, hold=1.0, coalesce=0.0))["result"]
    assert body["console"] == [["stdout", "name? "]]
    assert (body["status"], body["options"]) == ("waiting-input", {"is_password": False})
    assert run.give_input("bob", 1) is True
    assert await asker == "bob"
    assert run.give_input("bob", 1) is False


async def test_batch_steps_are_reported_once_each_with_their_own_output() -> None:
    run = Run("r3", jupyter=False, max_bytes=10_000)
    run.emit([["stdout", "cleaning\n"]])
    run.step_done("clean-finished", 0)
    run.emit([["stdout", "building\n"]])
    run.step_done("build-finished", 2)
    run.emit([["stdout", "late\n"]])
    run.finish(127)
    statuses = []
    for _ in range(3):
        body = (await run.poll(None, hold=1.0, coalesce=0.0))["result"]
        statuses.append((body["status"], body["exitCode"], body["console"]))
    assert statuses == [
        ("clean-finished", 0, [["stdout", "cleaning\n"]]),
        ("build-finished", 2, [["stdout", "building\n"]]),
        ("finished", 127, [["stdout", "late\n"]]),
    ]
