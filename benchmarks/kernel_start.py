"""Kernel start-up through jupyter_client: local ipykernel, the proxy's first start (no fork
server yet: it runs in-process and starts one), the proxy started cold (no fork server, none
started), the proxy forked from its fork server; and what each costs in memory.

    python benchmarks/kernel_start.py [--starts 9]

A throwaway ``remote-kernel serve`` (default settings: a warm pool of 2) on loopback. The three
kinds are started in turn, ``--starts`` times each: start -> kernel_info answered (and its
IOPub status seen, asked again every 50 ms as a frontend does) -> ``1+1``'s execute_result,
in seconds (median, min, max). Then three kernels of each kind are kept running at once and
their memory read from ``/proc/<pid>/smaps_rollup``: RSS, PSS (shared pages split among the
processes sharing them) and USS (pages of their own); for the forked proxy, its launcher
(the process jupyter_client started) is counted with it, and the fork server is reported on its
own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from remote_kernel.demo import DemoServer
from remote_kernel.kernelspec import install
from remote_kernel.proxy import launch
from remote_kernel.proxy.forkserver import kernel_of, servers_in, stop_servers

SPEC = "remote-start-bench"
KINDS = {"local": ("python3", {}), "proxy first": (SPEC, {}),
         "proxy cold": (SPEC, {launch.SWITCH_ENV: "0"}), "proxy forked": (SPEC, {})}  # fmt: skip
MEASURED_FOR_MEMORY = ("local", "proxy cold", "proxy forked")


async def start(kernel_name: str, env: dict[str, str]) -> tuple[AsyncKernelManager, Any, float]:
    km = AsyncKernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    await km.start_kernel(env={**os.environ, **env})
    kc = km.client()
    kc.start_channels()
    asked: set[str] = set()
    answered = False
    while not answered:
        asked.add(kc.kernel_info())
        until = time.perf_counter() + 0.05
        while not answered and time.perf_counter() < until:
            try:
                msg = await kc.get_iopub_msg(timeout=max(0.001, until - time.perf_counter()))
            except Exception:
                break
            answered = msg["parent_header"].get("msg_id") in asked
        if time.perf_counter() - t0 > 60:
            raise TimeoutError(f"{kernel_name}: no kernel_info within 60 s")
    msg_id = kc.execute("1+1")
    while True:
        msg = await kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_result":
            return km, kc, time.perf_counter() - t0


async def stop(km: AsyncKernelManager, kc: Any) -> None:
    kc.stop_channels()
    await km.shutdown_kernel(now=False)


def memory(pid: int) -> dict[str, int]:
    """kB of RSS, PSS and USS (private clean + dirty) of one process."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}  # fmt: skip


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=9)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rk-start-"))
    fs_dir = Path(tempfile.mkdtemp(prefix="rkfs-"))
    os.environ[launch.DIR_ENV] = str(fs_dir)
    server = DemoServer(workdir, [])
    server.start(timeout=60)
    try:
        prefix = workdir / "prefix"
        install(kernel_name=SPEC, prefix=str(prefix), endpoint=server.endpoint)
        os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
        os.environ["BACKEND_ACCESS_KEY"] = server.access_key
        os.environ["BACKEND_SECRET_KEY"] = server.secret_key
        km, kc, _ = await start(SPEC, {})  # starts the fork server
        await stop(km, kc)
        while not list(fs_dir.glob("*.sock")):
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)  # the server's pool refilled
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(args.starts):
            for kind, (name, env) in KINDS.items():
                first_dir = (
                    Path(tempfile.mkdtemp(prefix="rkfs-")) if kind == "proxy first" else None
                )
                if first_dir is not None:  # no fork server there: one is started beside the kernel
                    env = {**env, launch.DIR_ENV: str(first_dir)}
                km, kc, took = await start(name, env)
                times[kind].append(took)
                await stop(km, kc)
                if first_dir is not None:
                    stop_servers(first_dir)
                    shutil.rmtree(first_dir, ignore_errors=True)
                await asyncio.sleep(0.7)  # let the server's pool refill
        print(f"start -> first result, {args.starts} starts each (s): median [min, max]")
        for kind, values in times.items():
            print(f"  {kind:13} {statistics.median(values):.3f} "
                  f"[{min(values):.3f}, {max(values):.3f}]")  # fmt: skip
        local = statistics.median(times["local"])
        for kind in ("proxy first", "proxy cold", "proxy forked"):
            print(f"  {kind} / local: {statistics.median(times[kind]) / local:.2f}x")

        print("\nmemory with three kernels of each kind running (MB per kernel: RSS / PSS / USS)")
        for kind in MEASURED_FOR_MEMORY:
            name, env = KINDS[kind]
            running = [await start(name, env) for _ in range(3)]
            try:
                per: list[dict[str, int]] = []
                for km, _, _ in running:
                    launcher = km.provisioner.process.pid  # type: ignore[attr-defined]
                    pids = [launcher]
                    kernel = kernel_of(fs_dir, launcher) if kind == "proxy forked" else None
                    if kernel is not None:
                        pids.append(kernel)
                    got = [memory(p) for p in pids]
                    per.append({k: sum(g[k] for g in got) for k in ("rss", "pss", "uss")})
                avg = {k: statistics.mean(p[k] for p in per) / 1024 for k in per[0]}
                extra = " (launcher included)" if kind == "proxy forked" else ""
                print(f"  {kind:13} {avg['rss']:5.1f} / {avg['pss']:5.1f} / {avg['uss']:5.1f}"
                      f"{extra}")  # fmt: skip
            finally:
                for km, kc, _ in running:
                    await stop(km, kc)
        for pid in servers_in(fs_dir):
            m = memory(pid)
            print(f"  fork server   {m['rss'] / 1024:5.1f} / {m['pss'] / 1024:5.1f} / "
                  f"{m['uss'] / 1024:5.1f} (one per user and installation, idle)")  # fmt: skip
    finally:
        server.stop()
        stop_servers(fs_dir)
        shutil.rmtree(fs_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
