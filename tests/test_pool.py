"""The warm pool: kernels started ahead, each handed to exactly one session, refilled, cleaned up.

In process: a SessionManager with a sandbox and real kernels (no HTTP: what is tested is
what the manager does with the pool).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remote_kernel import protocol as p
from remote_kernel.server.isolation import Isolation
from remote_kernel.server.limits import Resources
from remote_kernel.server.sessions import Session, SessionManager

pytestmark = pytest.mark.timeout(90)

MIB = 1024 * 1024


async def run(session: Session, code: str) -> str:
    """Run ``code`` as a cell of the session (the server's own run path); its stdout."""
    run_ = session.runner.run_for(p.ExecuteRequest("query", code, None, {"console": "jupyter"}))
    assert run_.task is not None
    await asyncio.wait_for(asyncio.shield(run_.task), 30)
    assert run_.reply is not None and run_.reply["status"] == "ok", run_.reply
    console = run_.take(0)["result"]["console"]
    return "".join(str(data) for kind, data in console if kind == "stdout")


async def until(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def kernel_pid(session_or_runner: Any) -> int:
    runner = getattr(session_or_runner, "runner", session_or_runner)
    return int(runner.km.provisioner.process.pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    iso = Isolation.configure("bubblewrap", state_dir=tmp_path, default=Resources(pids=512))
    m = SessionManager(tmp_path, isolation=iso, pool_size=2)
    m.start_pool()
    assert m.pool is not None
    await until(lambda: len(m.pool) == 2)
    yield m
    await m.shutdown_all()


async def test_a_pooled_kernel_is_the_sessions_own(manager: SessionManager, tmp_path: Path) -> None:
    assert manager.pool is not None
    ready = {p.session_id for q in manager.pool.ready.values() for p in q}
    t0 = time.monotonic()
    session, created = await manager.create(
        "AKEY", name="pooled-1", image="python:3.11", reuse=False,
        config={"environ": {"RK_FROM": "the request"}, "resources": {"mem": "300m"}},
    )  # fmt: skip
    took = time.monotonic() - t0
    assert created and session.id in ready and manager.pool.served == 1
    assert took < 0.3, took  # no kernel start on the way
    # its environment, work directory and limits are the session's
    out = await run(session, "import os\nprint(os.environ['RK_FROM'], os.getcwd())\n"
                             "open('mine.txt', 'w').write('x')")  # fmt: skip
    assert out == "the request /home/work\n"
    assert (tmp_path / "sessions" / session.id / "work" / "mine.txt").read_text() == "x"
    assert session.runner.environ == {"RK_FROM": "the request"}
    assert session.runner.km.transport == "ipc"  # sandboxed: Unix sockets, no TCP port race
    assert session.runner.isolation.resources == Resources(mem=300 * MIB, pids=512)
    cgroup = session.runner.isolation.cgroup
    assert cgroup is not None
    assert (cgroup.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(300 * MIB)
    assert session.info(kernel_info=False)["occupiedSlots"] == {"mem": str(300 * MIB), "pids": 512}
    # and the pool fills up again behind it, with other kernels
    await until(lambda: len(manager.pool) == 2)
    assert session.id not in {p.session_id for q in manager.pool.ready.values() for p in q}


async def test_concurrent_creates_never_share_a_kernel(manager: SessionManager) -> None:
    sessions = await asyncio.gather(
        *(manager.create(f"K{i % 2}", name=f"many-{i}", image="python", config={}, reuse=False)
          for i in range(4))
    )  # fmt: skip
    assert manager.pool is not None and manager.pool.served == 2 and manager.pool.missed >= 2
    ids = {s.id for s, _ in sessions}
    pids = {kernel_pid(s) for s, _ in sessions}
    assert len(ids) == 4 and len(pids) == 4
    for i, (session, _) in enumerate(sessions):
        await run(session, f"marker = {i}")
    outs = [await run(s, "print(marker)") for s, _ in sessions]
    assert outs == [f"{i}\n" for i in range(4)]


async def test_creates_the_pool_cannot_serve_start_their_own(
    manager: SessionManager, tmp_path: Path
) -> None:
    assert manager.pool is not None
    manager.vfolders.create("AKEY", "data")
    for config in ({"environ": {"PYTHONPATH": "/x"}}, {"mounts": ["data"]}):
        session, _ = await manager.create("AKEY", name=None, image="python", config=config,
                                          reuse=False)  # fmt: skip
        assert manager.pool.served == 0 and len(manager.pool) == 2
        await manager.destroy(session)
    out = await run(
        (await manager.create("AKEY", name=None, image="python", config={
            "environ": {"PYTHONPATH": "/x"}}, reuse=False))[0],
        "import sys\nprint('/x' in sys.path)",
    )  # fmt: skip
    assert out == "True\n"  # a startup variable did take effect: a fresh kernel


async def test_shutdown_leaves_no_pooled_kernel(tmp_path: Path) -> None:
    iso = Isolation.configure("bubblewrap", state_dir=tmp_path)
    m = SessionManager(tmp_path, isolation=iso, pool_size=2)
    m.start_pool()
    assert m.pool is not None
    await until(lambda: len(m.pool) == 2)
    session, _ = await m.create("AKEY", name=None, image="python", config={}, reuse=False)
    pids = [kernel_pid(p.runner) for q in m.pool.ready.values() for p in q]
    pids.append(kernel_pid(session))
    await asyncio.sleep(0.2)  # a refill is starting now
    await m.shutdown_all()
    await asyncio.sleep(0.5)
    assert not [pid for pid in pids if alive(pid)]
    assert list((tmp_path / "sessions").iterdir()) == []


async def test_an_empty_pool_falls_back_and_a_dead_pooled_kernel_is_skipped(
    tmp_path: Path,
) -> None:
    iso = Isolation.configure("bubblewrap", state_dir=tmp_path)
    m = SessionManager(tmp_path, isolation=iso, pool_size=1)
    m.start_pool()
    pool = m.pool
    assert pool is not None
    try:
        await until(lambda: len(pool) == 1)
        victim = next(iter(pool.ready["python3"]))
        os.killpg(victim.runner.km.provisioner.pgid, 9)
        await asyncio.sleep(0.3)
        session, _ = await m.create("AKEY", name=None, image="python", config={}, reuse=False)
        assert session.id != victim.session_id and pool.served == 0
        assert await run(session, "print('fresh')") == "fresh\n"
        assert not (tmp_path / "sessions" / victim.session_id).exists()
    finally:
        await m.shutdown_all()
