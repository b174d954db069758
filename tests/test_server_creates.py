"""Session creates run concurrently: no global lock across kernel start, limits still hold.

Real kernels, in process: the concurrency assertions call ``SessionManager.create`` directly (two
owners without signing), the same-name race also goes through the app via ``aiohttp_client``.
Kernelspecs that start slowly or not at all are installed into a temporary JUPYTER_PATH.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from remote_kernel.errors import InternalServerError, TooManySessionsError
from remote_kernel.server.app import make_app
from remote_kernel.server.keystore import KeyStore
from remote_kernel.server.sessions import SessionManager
from remote_kernel.server.settings import ServerSettings

pytestmark = pytest.mark.timeout(180)

SLOW_START = 4.0
SLOW_ARGV = [
    sys.executable,
    "-c",
    f"import time, runpy, sys; time.sleep({SLOW_START}); "
    "sys.argv=['ipykernel_launcher','-f',sys.argv[1]]; "
    "runpy.run_module('ipykernel_launcher', run_name='__main__')",
    "{connection_file}",
]
FAILING_ARGV = [sys.executable, "-c", "raise SystemExit(3)"]

MakeManager = Callable[..., SessionManager]


@pytest.fixture
def kernelspecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``slowpython`` (sleeps before starting ipykernel) and ``deadpython`` (exits at once)."""
    share = tmp_path / "jupyter"
    for name, argv in (("slowpython", SLOW_ARGV), ("deadpython", FAILING_ARGV)):
        spec = share / "kernels" / name
        spec.mkdir(parents=True)
        body = {"argv": argv, "display_name": name, "language": "python"}
        (spec / "kernel.json").write_text(json.dumps(body))
    monkeypatch.setenv("JUPYTER_PATH", str(share))
    return share


@pytest.fixture
async def make_manager(tmp_path: Path, kernelspecs: Path) -> AsyncIterator[MakeManager]:
    """Session managers on ``tmp_path/state``; every one is shut down at the end."""
    made: list[SessionManager] = []

    def make(**kwargs: Any) -> SessionManager:
        manager = SessionManager(tmp_path / "state", **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.shutdown_all()
        assert len(manager) == 0


def session_dirs(manager: SessionManager) -> set[str]:
    if not manager.sessions_dir.is_dir():
        return set()
    return {p.name for p in manager.sessions_dir.iterdir()}


async def timed_create(
    manager: SessionManager, owner: str, image: str, name: str | None = None
) -> float:
    t0 = time.monotonic()
    await manager.create(owner, name=name, image=image, config={}, reuse=True)
    return time.monotonic() - t0


async def test_another_keys_create_is_not_queued_behind_twelve(make_manager: MakeManager) -> None:
    manager = make_manager(max_sessions_per_key=32)
    a_creates = asyncio.gather(*(timed_create(manager, "key-a", "python:3") for _ in range(12)))
    await asyncio.sleep(0.2)  # A's twelve are starting their kernels
    b_latency = await timed_create(manager, "key-b", "python:3")
    a_latencies = await a_creates
    print(f"\nB's create while A creates 12: {b_latency:.2f} s; A's: {max(a_latencies):.2f} s")
    assert b_latency < 3.0, (b_latency, a_latencies)
    assert len(manager.owned_by("key-a")) == 12
    assert len(manager.owned_by("key-b")) == 1
    assert len(session_dirs(manager)) == 13


async def test_a_slow_kernel_does_not_block_another_create(make_manager: MakeManager) -> None:
    manager = make_manager()
    slow = asyncio.ensure_future(timed_create(manager, "key-a", "slowpython"))
    await asyncio.sleep(0.2)  # the slow kernel is starting
    fast = await timed_create(manager, "key-a", "python:3")
    assert not slow.done()
    slow_latency = await slow
    print(f"\npython:3 while slowpython starts: {fast:.2f} s; slowpython: {slow_latency:.2f} s")
    assert fast < 3.0
    assert slow_latency >= SLOW_START
    assert sorted(s.kernel_name for s in manager.owned_by("key-a")) == ["python3", "slowpython"]


async def test_same_name_twice_at_once_gives_one_session(
    aiohttp_client: Any, tmp_path: Path, make_manager: MakeManager
) -> None:
    manager = make_manager()
    app = make_app(manager, KeyStore(tmp_path / "state"), ServerSettings(auth_required=False))
    client = await aiohttp_client(app)
    body = {"image": "python:3", "name": "twin", "reuseIfExists": True}

    async def post(body: dict[str, Any]) -> tuple[int, Any]:
        resp = await client.post("/session", json=body)
        return resp.status, await resp.json()

    (s1, b1), (s2, b2) = await asyncio.gather(post(body), post(body))
    assert (s1, s2) == (201, 201)
    assert b1["sessionId"] == b2["sessionId"]
    assert sorted([b1["created"], b2["created"]]) == [False, True]
    assert len(manager) == 1 and len(session_dirs(manager)) == 1
    # The same race with another image: one session, the loser is told it exists.
    other = {"image": "slowpython", "name": "twin2"}
    results = await asyncio.gather(post({**other}), post({**other, "image": "python:3"}))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 400], results
    lost = next(b for status, b in results if status == 400)
    assert lost["type"].endswith("session-already-exists")
    assert len(manager) == 2 and len(session_dirs(manager)) == 2
    await client.close()


async def test_concurrent_creates_respect_the_per_key_limit(make_manager: MakeManager) -> None:
    manager = make_manager(max_sessions_per_key=2)
    results = await asyncio.gather(
        *(
            manager.create("key-a", name=f"limit-{i}", image="python:3", config={}, reuse=True)
            for i in range(4)
        ),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(created) == 2 and len(refused) == 2, results
    assert all(isinstance(r, TooManySessionsError) for r in refused)
    assert session_dirs(manager) == {s.id for s, _ in created}
    # Another key is not limited by key-a's sessions.
    await manager.create("key-b", name="limit-b", image="python:3", config={}, reuse=True)
    assert len(manager) == 3


async def test_a_failed_start_frees_its_slot_and_directory(make_manager: MakeManager) -> None:
    manager = make_manager(max_sessions_per_key=1, runner_options={"start_timeout": 5})
    t0 = time.monotonic()
    with pytest.raises(InternalServerError, match="did not start"):
        await manager.create("key-a", name="dead", image="deadpython", config={}, reuse=True)
    assert time.monotonic() - t0 < 10
    assert len(manager) == 0 and session_dirs(manager) == set()
    # The slot is free again: the one session this key may have starts.
    session, created = await manager.create(
        "key-a", name="dead", image="python:3", config={}, reuse=True
    )
    assert created and session.name == "dead"
    assert session_dirs(manager) == {session.id}


async def test_a_start_that_straddles_shutdown_all_is_shut_down(make_manager: MakeManager) -> None:
    manager = make_manager()
    create = asyncio.ensure_future(
        manager.create("key-a", name="late", image="slowpython", config={}, reuse=True)
    )
    await asyncio.sleep(0.5)  # the kernel is starting
    await manager.shutdown_all()  # returns once the half-started session is gone
    assert create.done()
    with pytest.raises(InternalServerError) as exc:
        create.result()
    assert exc.value.status == 503
    assert len(manager) == 0 and session_dirs(manager) == set()
