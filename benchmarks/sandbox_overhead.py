"""What the sandbox costs: session start and a trivial cell, with and without bubblewrap.

Runs the server's own session machinery in this process (SessionManager → SessionRunner →
jupyter_client), so the figures are the kernel's start and its ZMQ round trip, not HTTP:

    python benchmarks/sandbox_overhead.py [--starts 5] [--cells 300]

Modes: ``none`` (a plain kernel process), ``bubblewrap`` (sandbox, cgroup limits when the
server may create cgroups), ``bubblewrap-offline`` (no network: ZMQ over IPC sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import percentile

from remote_kernel.server.isolation import Isolation
from remote_kernel.server.limits import Resources
from remote_kernel.server.sessions import SessionManager

MODES = {
    "none": {"sandbox": "none", "network": True},
    "bubblewrap": {"sandbox": "bubblewrap", "network": True},
    "bubblewrap-offline": {"sandbox": "bubblewrap", "network": False},
}


def _quiet(msg: dict[str, Any]) -> None:
    """Drop the cell's output (execute_interactive would print it)."""


async def measure(mode: str, starts: int, cells: int) -> dict[str, float]:
    opts = MODES[mode]
    with tempfile.TemporaryDirectory(prefix="rk-bench-") as tmp:
        state = Path(tmp)
        iso = Isolation.configure(
            str(opts["sandbox"]), state_dir=state, network=bool(opts["network"]),
            default=Resources(mem=2 << 30, pids=1024),
        )  # fmt: skip
        manager = SessionManager(state, isolation=iso)
        start_times = []
        session = None
        try:
            for i in range(starts):
                t0 = time.perf_counter()
                session, _ = await manager.create(
                    "bench", name=f"bench-{i}", image="python", config={}, reuse=False
                )
                await session.runner.kc.execute_interactive("pass", timeout=30, output_hook=_quiet)
                start_times.append(time.perf_counter() - t0)
                if i < starts - 1:
                    await manager.destroy(session)
            assert session is not None
            kc = session.runner.kc
            for _ in range(20):
                await kc.execute_interactive("1", timeout=30, output_hook=_quiet)
            lat = []
            for _ in range(cells):
                t0 = time.perf_counter()
                await kc.execute_interactive("1", timeout=30, output_hook=_quiet)
                lat.append(time.perf_counter() - t0)
        finally:
            await manager.shutdown_all()
    return {
        "start_median_ms": statistics.median(start_times) * 1000,
        "cell_median_ms": statistics.median(lat) * 1000,
        "cell_p95_ms": percentile(lat, 0.95) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    results = {}
    for mode in args.modes.split(","):
        results[mode] = asyncio.run(measure(mode, args.starts, args.cells))
    base = results.get("none")
    print(f"{'mode':<20} {'start (median)':>15} {'cell (median)':>14} {'cell p95':>9}  ratio")
    for mode, r in results.items():
        ratio = ""
        if base and mode != "none":
            ratio = (f"start {r['start_median_ms'] / base['start_median_ms']:.2f}x, "
                     f"cell {r['cell_median_ms'] / base['cell_median_ms']:.2f}x")  # fmt: skip
        print(f"{mode:<20} {r['start_median_ms']:>12.0f} ms {r['cell_median_ms']:>11.2f} ms "
              f"{r['cell_p95_ms']:>6.2f} ms  {ratio}")  # fmt: skip


if __name__ == "__main__":
    main()
