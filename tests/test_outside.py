"""``OutsideLog``: numbering, bounds, reading from a cursor, waiting (pure asyncio)."""

from __future__ import annotations

import asyncio

from remote_kernel.server.outside import OutsideLog


def test_items_are_numbered_and_read_from_a_cursor() -> None:
    log = OutsideLog()
    log.add_records("p1", [["stdout", "a"], ["stdout", "b"]])
    log.add_done("p1", {"status": "ok"})
    assert log.end == 3
    items, first, dropped = log.read(1)
    assert (first, dropped) == (1, 0)
    assert items == [{"parent": "p1", "record": ["stdout", "b"]},
                     {"parent": "p1", "done": {"status": "ok"}}]  # fmt: skip
    assert log.read(3) == ([], 3, 0)
    assert log.read(99) == ([], 3, 0)  # a cursor from the future reads nothing
    assert log.read(0, limit=1)[0] == [{"parent": "p1", "record": ["stdout", "a"]}]


def test_the_bound_drops_the_oldest_and_says_how_many() -> None:
    log = OutsideLog(max_items=3)
    for i in range(5):
        log.add_records(None, [["stdout", str(i)]])
    assert (log.start, log.end) == (2, 5)
    items, first, dropped = log.read(0)
    assert (first, dropped) == (2, 2)
    assert [i["record"][1] for i in items] == ["2", "3", "4"]
    by_bytes = OutsideLog(max_bytes=200)
    for _ in range(10):
        by_bytes.add_records("p", [["stdout", "x" * 50]])
    assert by_bytes.bytes <= 200 and by_bytes.end == 10 and by_bytes.start > 0


async def test_wait_past_returns_when_an_item_arrives() -> None:
    log = OutsideLog()
    waiter = asyncio.ensure_future(log.wait_past(0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    log.add_records("p", [["stdout", "x"]])
    await asyncio.wait_for(waiter, 1)
