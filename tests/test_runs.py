"""The run record log and poll policy, without a kernel (pure asyncio state)."""

from __future__ import annotations

import asyncio

import pytest

from remote_kernel.server.runs import RecordLog, Run

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
    records, cursor = await run.poll(None, hold=0.2, coalesce=0.0)
    assert (records, cursor) == ([], 0)
    assert 0.19 <= loop.time() - started < 0.5
    loop.call_later(0.05, run.emit, [["stdout", "x"]])
    started = loop.time()
    records, cursor = await run.poll(0, hold=2.0, coalesce=0.01)
    assert records == [["stdout", "x"]] and loop.time() - started < 0.5
    run.finish(0, {"status": "ok"})
    result = run.result(*(await run.poll(cursor, hold=2.0, coalesce=0.0)))
    assert result["result"]["status"] == "finished" and result["result"]["reply"] == {
        "status": "ok"
    }


async def test_input_hand_off_and_repeat_seq_ignored() -> None:
    run = Run("r2", jupyter=False, max_bytes=10_000)
    asker = asyncio.ensure_future(run.ask_input("name? ", False))
    await asyncio.sleep(0)
    records, _ = await run.poll(None, hold=1.0, coalesce=0.0)
    assert records == [["stdout", "name? "]]
    assert run.result(records, None)["result"]["options"] == {"is_password": False}
    assert run.give_input("bob", 1) is True
    assert await asker == "bob"
    assert run.give_input("bob", 1) is False
