"""The proxy kernel's local cell history (pure)."""

from __future__ import annotations

import pytest

from remote_kernel.proxy.history import CellHistory


@pytest.fixture
def history() -> CellHistory:
    h = CellHistory()
    for session, line, source in [(1, 1, "a = 1"), (1, 2, "print(a)"), (1, 3, "a = 1"),
                                  (2, 1, "b = 2"), (2, 2, "print(b)")]:  # fmt: skip
        h.add(session, line, source)
    return h


@pytest.mark.parametrize(
    ("access", "kw", "expected"),
    [
        ("tail", {"n": 2}, [[2, 1, "b = 2"], [2, 2, "print(b)"]]),
        ("tail", {"n": 2, "output": True}, [[2, 1, ["b = 2", None]], [2, 2, ["print(b)", None]]]),
        ("range", {"start": 2}, [[2, 2, "print(b)"]]),
        ("range", {"session": -1, "start": 2, "stop": 3}, [[1, 2, "print(a)"]]),
        ("range", {"session": 1}, [[1, 1, "a = 1"], [1, 2, "print(a)"], [1, 3, "a = 1"]]),
        ("search", {"pattern": "print*"}, [[1, 2, "print(a)"], [2, 2, "print(b)"]]),
        ("search", {"pattern": "a*", "unique": True}, [[1, 3, "a = 1"]]),
        ("search", {"pattern": "*", "n": 1}, [[2, 2, "print(b)"]]),
        ("bogus", {}, []),
    ],
)
def test_queries(history: CellHistory, access: str, kw: dict, expected: list) -> None:
    assert history.query(access, current=2, **kw) == expected
