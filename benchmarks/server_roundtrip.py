"""Round-trip cost of the run-loop server against a local kernel, and output lag while polling.

Run: ``.venv/bin/python benchmarks/server_roundtrip.py [--cells 50]``

In one run, it starts a real ``remote-kernel serve`` (subprocess, loopback, fresh state dir),
creates a keypair and a session with raw HMAC-signed HTTP (aiohttp + ``remote_kernel.auth``), and
measures:

(a) ``1+1`` cells (``mode: query``, ``options: {"console": "jupyter"}``) round trip over HTTP,
    against the same cell sent straight to a local ipykernel with jupyter_client
    (``execute_interactive``); prints both medians and their ratio (target ≤ 1.3).
(b) the lag from a remote ``print`` to its arrival at a client polling with ``continue`` (and the
    ``output-cursor`` extension): a cell prints ``time.time()`` stamps every 100 ms for ~3 s; for
    each stamp received, lag = arrival time - stamp. Prints median and p90 (target median ≤ 20 ms).

Targets are printed, not enforced. Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from jupyter_client.manager import AsyncKernelManager
from stats import percentile  # benchmarks/stats.py

from remote_kernel.auth import Keypair, sign_headers
from remote_kernel.demo import DemoServer

IMAGE = "python:3.9-ubuntu20.04"
VERSION = "v9.20250722"
TERMINAL = ("finished", "exec-timeout")
STAMP_CELL = (
    "import time\n"
    "for i in range(30):\n"
    "    print(f'T{time.time():.6f}', flush=True)\n"
    "    time.sleep(0.1)\n"
)
_STAMP = re.compile(r"T(\d+\.\d+)")


# -- a minimal signed client ---------------------------------------------------------------------
class Client:
    """Raw signed HTTP to the run-loop API (no remote_kernel client code involved)."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: str, keypair: Keypair) -> None:
        self.http = http
        self.endpoint = endpoint
        self.host = endpoint.split("://", 1)[1]
        self.keypair = keypair

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        content_type = "application/json" if data is not None else ""
        headers = sign_headers(
            self.keypair,
            method=method,
            path_qs=path,
            host=self.host,
            content_type=content_type,
            version=VERSION,
        )
        if content_type:
            headers["Content-Type"] = content_type
        async with self.http.request(
            method, self.endpoint + path, data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None)

    async def execute(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        status, payload = await self.request("POST", f"/session/{sid}", body)
        if status != 200:
            raise RuntimeError(f"execute {body.get('mode')} → {status}: {payload}")
        result: dict[str, Any] = payload["result"]
        return result


async def run_cell_http(client: Client, sid: str, code: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex
    body: dict[str, Any] = {"mode": "query", "code": code, "runId": run_id, "run_id": run_id,
                            "options": {"console": "jupyter"}}  # fmt: skip
    result = await client.execute(sid, body)
    while result["status"] not in TERMINAL:
        body = {"mode": "continue", "code": "", "runId": run_id, "run_id": run_id}
        if "cursor" in result:
            body["cursor"] = result["cursor"]
        result = await client.execute(sid, body)
    return result


# -- measurements ---------------------------------------------------------------------------------
async def time_cells(client: Client, sid: str, n: int, warmup: int = 5) -> tuple[list, list]:
    """Time ``1+1`` over HTTP and on a local kernel, alternating, so both see the same load."""
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    http_times: list[float] = []
    local_times: list[float] = []
    try:
        await kc.wait_for_ready(timeout=60)
        for i in range(warmup + n):
            t0 = time.perf_counter()
            result = await run_cell_http(client, sid, "1+1")
            t1 = time.perf_counter()
            reply = await kc.execute_interactive("1+1", output_hook=lambda msg: None, timeout=30)
            t2 = time.perf_counter()
            if result["status"] != "finished" or result.get("exitCode") != 0:
                raise RuntimeError(f"1+1 over HTTP did not finish cleanly: {result}")
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"1+1 on the local kernel failed: {reply['content']}")
            if i >= warmup:
                http_times.append(t1 - t0)
                local_times.append(t2 - t1)
        return http_times, local_times
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def measure_lag(client: Client, sid: str) -> tuple[list[float], int]:
    """Lags (s) of every stamp received while polling with continue + cursor; and poll count."""
    run_id = uuid.uuid4().hex
    body: dict[str, Any] = {"mode": "query", "code": STAMP_CELL, "runId": run_id,
                            "run_id": run_id, "options": {"console": "jupyter"}}  # fmt: skip
    lags: list[float] = []
    polls = 0
    while True:
        result = await client.execute(sid, body)
        arrived = time.time()
        polls += 1
        for kind, data in result.get("console") or []:
            if kind == "stdout":
                lags += [arrived - float(m.group(1)) for m in _STAMP.finditer(data)]
        if result["status"] in TERMINAL:
            break
        body = {"mode": "continue", "code": "", "runId": run_id, "run_id": run_id}
        if "cursor" in result:
            body["cursor"] = result["cursor"]
    return lags, polls


# -- main ----------------------------------------------------------------------------------------
@contextmanager
def isolated_jupyter_env() -> Iterator[tuple[Path, dict[str, str]]]:
    """A temp dir, and Jupyter/IPython dirs inside it for both this process and the server."""
    base = Path(tempfile.mkdtemp(prefix="rk-bench-"))
    overrides = {
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_CONFIG_DIR": str(base / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"),
        "IPYTHONDIR": str(base / "ipython"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield base, dict(os.environ)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(base, ignore_errors=True)


async def amain(cells: int) -> int:
    with isolated_jupyter_env() as (base, _env):
        (base / "server").mkdir()
        server = DemoServer(base / "server")  # inherits the isolated Jupyter environment
        server.start(timeout=60)
        keypair = Keypair(server.access_key, server.secret_key)
        print(f"server: {server.endpoint}")
        try:
            async with aiohttp.ClientSession() as http:
                client = Client(http, server.endpoint, keypair)
                status, hello = await client.request("GET", "/")
                features = (hello or {}).get("remote_kernel", {}).get("features", [])
                print(f"server version {hello.get('version')}, extensions: {features}")
                status, created = await client.request(
                    "POST",
                    "/session",
                    {"image": IMAGE, "name": f"bench-{uuid.uuid4().hex[:8]}", "config": {}},
                )
                if status not in (200, 201):
                    raise RuntimeError(f"create session → {status}: {created}")
                sid = created["sessionId"]
                try:
                    http_times, local_times = await time_cells(client, sid, cells)
                    lags, polls = await measure_lag(client, sid)
                finally:
                    await client.request("DELETE", f"/session/{sid}")
        finally:
            server.stop()

    http_med = statistics.median(http_times) * 1000
    local_med = statistics.median(local_times) * 1000
    ratio = http_med / local_med
    print(
        f"\n(a) {cells} cells of 1+1 (medians; alternating HTTP and local, after 5 warm-up cells)"
    )
    print(f"    over HTTP (query, jupyter console):   {http_med:8.2f} ms")
    print(f"    local ipykernel (execute_interactive): {local_med:8.2f} ms")
    ok = "ok" if ratio <= 1.3 else "ABOVE TARGET"
    print(f"    ratio HTTP/local: {ratio:.2f}  (target <= 1.3: {ok})")
    print(f"\n(b) output lag while polling with continue + cursor ({polls} requests)")
    if len(lags) != 30:
        print(f"    WARNING: received {len(lags)} of 30 stamps")
    if lags:
        med, p90 = statistics.median(lags) * 1000, percentile(lags, 0.9) * 1000
        ok = "ok" if med <= 20 else "ABOVE TARGET"
        print(f"    stamps: {len(lags)}, median lag {med:.1f} ms, p90 {p90:.1f} ms, "
              f"max {max(lags) * 1000:.1f} ms  (target median <= 20 ms: {ok})")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cells", type=int, default=50, help="cells to time (default 50)")
    args = parser.parse_args()
    return asyncio.run(amain(args.cells))


if __name__ == "__main__":
    raise SystemExit(main())
