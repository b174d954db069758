"""The warm pool: concurrent creates with and without it, and what an idle pooled kernel costs.

    python benchmarks/pool.py [--creates 50] [--pools 2,0] [--sandbox auto]

In process (SessionManager, real kernels, the server's sandbox setting): ``--creates`` sessions
are created at once, each followed by its first cell; reported per pool size: the total, and
p50/p95 of one create + first cell. Then the resident memory of each idle pooled kernel (every
process of it: bwrap, the sandbox's init, the kernel).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import percentile  # benchmarks/stats.py

from remote_kernel import protocol as p
from remote_kernel.server.isolation import Isolation
from remote_kernel.server.limits import Resources
from remote_kernel.server.sessions import SessionManager


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, []))
    return found


async def creates(pool_size: int, count: int, sandbox: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rk-pool-") as tmp:
        state = Path(tmp)
        iso = Isolation.configure(sandbox, state_dir=state, default=Resources(pids=1024))
        manager = SessionManager(
            state, isolation=iso, pool_size=pool_size, max_sessions_per_key=count + 1
        )
        manager.start_pool()
        try:
            if manager.pool is not None:
                while len(manager.pool) < pool_size:
                    await asyncio.sleep(0.05)

            async def one(i: int) -> float:
                t0 = time.perf_counter()
                session, _ = await manager.create(
                    "bench", name=f"bench-{i}", image="python", config={}, reuse=False
                )
                # the first cell, on the server's own run path (as a client's first query)
                run = session.runner.run_for(
                    p.ExecuteRequest("query", "1", None, {"console": "jupyter"})
                )
                assert run.task is not None
                await asyncio.wait_for(asyncio.shield(run.task), 120)
                if run.reply is None or run.reply.get("status") != "ok":
                    raise RuntimeError(f"the first cell of bench-{i} failed: {run.reply}")
                return time.perf_counter() - t0

            t0 = time.perf_counter()
            times = await asyncio.gather(*(one(i) for i in range(count)))
            total = time.perf_counter() - t0
        finally:
            await manager.shutdown_all()
    return {"total": total, "p50": statistics.median(times), "p95": percentile(times, 0.95),
            "first": min(times)}  # fmt: skip


async def idle_cost(pool_size: int, sandbox: str) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="rk-pool-") as tmp:
        state = Path(tmp)
        iso = Isolation.configure(sandbox, state_dir=state, default=Resources(pids=1024))
        manager = SessionManager(state, isolation=iso, pool_size=pool_size)
        manager.start_pool()
        try:
            assert manager.pool is not None
            while len(manager.pool) < pool_size:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2)  # settled
            return [
                sum(rss_kb(p) for p in tree(pooled.runner.km.provisioner.process.pid)) / 1024
                for q in manager.pool.ready.values() for pooled in q
            ]  # fmt: skip
        finally:
            await manager.shutdown_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--pools", default="2,0")
    parser.add_argument("--sandbox", default="auto")
    args = parser.parse_args()
    print(f"{args.creates} concurrent creates (each to its first result), sandbox {args.sandbox}:")
    for size in (int(s) for s in args.pools.split(",")):
        r = asyncio.run(creates(size, args.creates, args.sandbox))
        print(f"  pool {size}: total {r['total']:.2f} s, per create p50 {r['p50']:.2f} s, "
              f"p95 {r['p95']:.2f} s, fastest {r['first'] * 1000:.0f} ms")  # fmt: skip
    costs = asyncio.run(idle_cost(2, args.sandbox))
    print("idle pooled kernel RSS (all its processes): "
          + ", ".join(f"{c:.1f} MB" for c in costs))  # fmt: skip


if __name__ == "__main__":
    main()
