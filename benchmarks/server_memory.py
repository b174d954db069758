"""Peak memory (RSS) of the ``remote-kernel serve`` process through large transfers and output.

Run: ``.venv/bin/python benchmarks/server_memory.py [--mb-file 200] [--mb-output 250]``

It starts a real server (subprocess, loopback, fresh state dir, download/upload limits raised
to 1 GiB), creates a session with raw HMAC-signed HTTP, and samples the server process's
``VmRSS`` every 50 ms (and its ``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before each
scenario) while it goes through:

(a) a download of a ``--mb-file`` MB file made inside the session by a cell (the response is
    read in chunks and thrown away: the client never holds it);
(b) an upload of a ``--mb-file`` MB file, streamed from a generator (multipart, one part);
(c) a run that writes ``--mb-output`` MB to stdout (1000-character lines; with ``--flush-mb N``
    it flushes every N MB) without being polled: the query's first response comes back at
    once; then nothing is asked until the cell has written a marker file at its end (in its
    work dir, which the benchmark finds under the server's state dir, sandboxed or not) and the
    server is quiet, then the run is polled to its end (its output is read and thrown away) with
    ``continue`` + cursor. The server has its ipykernel publish stream messages of at most 256 Ki
    characters (``remote_kernel/server/kernel_streams.py``); with ``--unbounded`` the cell undoes
    that first, so ipykernel sends what it buffers in 0.2 s (about 50 MB a message here): what a
    kernel the server does not bound costs it (for the rest of the session: (c) comes last).

Printed: baseline RSS (session created, idle), the peak RSS of each scenario and its growth,
and the target (peak < 150 MB). Targets are printed, not enforced. Everything started here is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from server_roundtrip import VERSION, Client, isolated_jupyter_env  # benchmarks/

from remote_kernel.auth import Keypair, sign_headers
from remote_kernel.demo import DemoServer

MB = 1000 * 1000
MIB = 1024 * 1024
TARGET_MB = 150
IMAGE = "python:3.11"


# -- memory of the server process --------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """The peak RSS of ``pid`` over a stretch of time: sampled every 50 ms, and VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def __enter__(self) -> RssSampler:
        try:  # reset the kernel's high-water mark (Linux >= 4.0, our own process)
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")
            self.hwm_ok = True
        except OSError:
            self.hwm_ok = False
        self.peak_kb = self.start_kb = _status_kb(self.pid, "VmRSS")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
        if self.hwm_ok:
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmHWM"))

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    @property
    def start_mb(self) -> float:
        return self.start_kb / 1024


# -- the scenarios -------------------------------------------------------------------------------
async def run_cell(client: Client, sid: str, code: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex
    body: dict[str, Any] = {"mode": "query", "code": code, "runId": run_id, "run_id": run_id}
    result = await client.execute(sid, body)
    stdout = "".join(d for k, d in result["console"] if k == "stdout")
    while result["status"] not in ("finished", "exec-timeout"):
        body = {"mode": "continue", "code": "", "runId": run_id, "run_id": run_id}
        result = await client.execute(sid, body)
        stdout += "".join(d for k, d in result["console"] if k == "stdout")
    if result.get("exitCode") != 0:
        raise RuntimeError(f"cell failed: {result}")
    return {**result, "stdout": stdout}


def _signed(client: Client, method: str, path: str, content_type: str) -> dict[str, str]:
    return sign_headers(
        client.keypair, method=method, path_qs=path, host=client.host,
        content_type=content_type, version=VERSION,
    )  # fmt: skip


async def download(client: Client, sid: str, name: str) -> int:
    """Download ``name``; return the bytes of its tar part (read in chunks, not kept)."""
    path = f"/session/{sid}/download?files={name}"
    headers = _signed(client, "POST", path, "text/plain")
    headers["Content-Type"] = "text/plain"
    size = 0
    async with client.http.post(client.endpoint + path, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"download → {resp.status}: {await resp.text()}")
        reader = aiohttp.MultipartReader.from_response(resp)
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            while chunk := await part.read_chunk(MIB):
                size += len(chunk)
    return size


async def upload(client: Client, sid: str, name: str, size: int) -> None:
    """Upload ``size`` bytes as ``name``, produced by a generator 1 MiB at a time."""

    async def chunks() -> AsyncIterator[bytes]:
        block = b"u" * MIB
        left = size
        while left > 0:
            yield block[: min(left, MIB)]
            left -= MIB

    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(chunks(), {"Content-Type": "application/octet-stream"})
    part.set_content_disposition("form-data", name="src", filename=name)
    path = f"/session/{sid}/upload"
    headers = _signed(client, "POST", path, "multipart/form-data")
    headers["Content-Type"] = writer.content_type
    async with client.http.post(client.endpoint + path, data=writer, headers=headers) as resp:
        if resp.status != 204:
            raise RuntimeError(f"upload → {resp.status}: {await resp.text()}")


UNBOUND = """\
import sys
for stream in (sys.stdout, sys.stderr):  # the class ipykernel made, before the server's bound
    stream.__class__ = next(c for c in type(stream).__mro__
                            if not hasattr(c, "remote_kernel_limit"))
"""

OUTPUT_CELL = """\
import sys
line = "x" * 999
for i in range({lines}):
    print(line)
    if {flush_every} and i % {flush_every} == 0:
        sys.stdout.flush()
sys.stdout.flush()
open({marker!r}, "w").close()
"""


async def unpolled_output(
    client: Client,
    sid: str,
    sampler: RssSampler,
    mb: int,
    marker: Path,
    flush_mb: int,
    unbounded: bool,
) -> dict[str, Any]:
    """Run a cell printing ``mb`` MB, poll only once it is done; what the client received."""
    run_id = uuid.uuid4().hex
    code = (UNBOUND if unbounded else "") + OUTPUT_CELL.format(
        lines=mb * MB // 1000, marker=marker.name, flush_every=flush_mb * MB // 1000
    )
    body: dict[str, Any] = {"mode": "query", "code": code, "runId": run_id, "run_id": run_id}
    result = await client.execute(sid, body)  # returns at once (first output or poll_hold)
    started = time.monotonic()
    while not marker.exists():
        if time.monotonic() - started > 600:
            raise RuntimeError(f"the output cell did not finish: {marker} never appeared")
        await asyncio.sleep(0.1)
    written = time.monotonic() - started
    # the kernel is done writing; let the server take in what is still on its way
    quiet_since, last = time.monotonic(), sampler.rss_mb()
    while time.monotonic() - quiet_since < 2.0:
        await asyncio.sleep(0.2)
        now = sampler.rss_mb()
        if abs(now - last) > 1:
            quiet_since, last = time.monotonic(), now
    before_poll = sampler.peak_mb
    received = polls = 0
    notices = []
    while result["status"] not in ("finished", "exec-timeout"):
        body = {"mode": "continue", "code": "", "runId": run_id, "run_id": run_id,
                "cursor": result["cursor"]}  # fmt: skip
        result = await client.execute(sid, body)
        polls += 1
        for kind, data in result["console"]:
            if kind == "stderr" and "were dropped" in data:
                notices.append(data.strip())
            elif kind == "stdout":
                received += len(data)
    return {"written_s": written, "peak_before_poll": before_poll, "received": received,
            "polls": polls, "notices": notices}  # fmt: skip


# -- main ----------------------------------------------------------------------------------------
async def amain(mb_file: int, mb_output: int, flush_mb: int, unbounded: bool) -> int:
    limits = [f"--ServerApp.max_download_bytes={1024 * MIB}",
              f"--ServerApp.max_upload_bytes={1024 * MIB}"]  # fmt: skip
    rows: list[tuple[str, float, float]] = []
    with isolated_jupyter_env() as (base, _env):
        (base / "server").mkdir()
        server = DemoServer(base / "server", extra_args=limits)
        server.start(timeout=60)
        assert server.proc is not None
        keypair = Keypair(server.access_key, server.secret_key)
        print(f"server: {server.endpoint} (pid {server.proc.pid})")
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                client = Client(http, server.endpoint, keypair)
                status, created = await client.request(
                    "POST", "/session", {"image": IMAGE, "name": f"mem-{uuid.uuid4().hex[:8]}"}
                )
                if status not in (200, 201):
                    raise RuntimeError(f"create session → {status}: {created}")
                sid = created["sessionId"]
                pid = server.proc.pid
                try:
                    await run_cell(client, sid, "1+1")
                    await asyncio.sleep(1.0)
                    baseline = RssSampler(pid).rss_mb()
                    print(f"baseline RSS (session idle): {baseline:.1f} MB")

                    code = (f"with open('big.bin', 'wb') as f:\n"
                            f"    for _ in range({mb_file}):\n"
                            f"        f.write(b'd' * {MB})\n")  # fmt: skip
                    await run_cell(client, sid, code)
                    with RssSampler(pid) as s:
                        t0 = time.monotonic()
                        size = await download(client, sid, "big.bin")
                        took = time.monotonic() - t0
                    rows.append((f"(a) download {mb_file} MB", s.peak_mb, s.peak_mb - baseline))
                    print(f"(a) download: {size / MB:.1f} MB of tar in {took:.1f} s, "
                          f"RSS {s.start_mb:.1f} MB before, peak {s.peak_mb:.1f} MB")  # fmt: skip
                    await run_cell(client, sid, "import os; os.remove('big.bin')")

                    with RssSampler(pid) as s:
                        t0 = time.monotonic()
                        await upload(client, sid, "up.bin", mb_file * MB)
                        took = time.monotonic() - t0
                    code = "import os; print(os.path.getsize('up.bin'))"
                    got = int((await run_cell(client, sid, code))["stdout"])
                    rows.append((f"(b) upload {mb_file} MB", s.peak_mb, s.peak_mb - baseline))
                    print(f"(b) upload: {got / MB:.1f} MB arrived in {took:.1f} s, "
                          f"RSS {s.start_mb:.1f} MB before, peak {s.peak_mb:.1f} MB")  # fmt: skip
                    await run_cell(client, sid, "import os; os.remove('up.bin')")

                    work = server.state_dir / "sessions" / sid / "work"
                    marker = work / f"done-{uuid.uuid4().hex[:8]}"
                    with RssSampler(pid) as s:
                        out = await unpolled_output(
                            client, sid, s, mb_output, marker, flush_mb, unbounded
                        )
                    label = (
                        f"(c) {mb_output} MB output, unpolled"
                        + (f", flush/{flush_mb} MB" if flush_mb else "")
                        + (", unbounded" if unbounded else "")
                    )
                    rows.append((label, s.peak_mb, s.peak_mb - baseline))
                    print(f"(c) output: RSS {s.start_mb:.1f} MB before; written in "
                          f"{out['written_s']:.1f} s; peak RSS before the "
                          f"first poll {out['peak_before_poll']:.1f} MB, overall "
                          f"{s.peak_mb:.1f} MB; then {out['polls']} polls received "
                          f"{out['received'] / MB:.1f} MB of stdout")  # fmt: skip
                    for notice in out["notices"]:
                        print(f"    notice: {notice[:160]}")
                    print(f"after the scenarios: RSS {RssSampler(pid).rss_mb():.1f} MB")
                finally:
                    await client.request("DELETE", f"/session/{sid}")
        finally:
            server.stop()

    print(f"\n{'scenario':44s} {'peak RSS':>10s} {'growth':>10s}   target peak < {TARGET_MB} MB")
    print(f"{'baseline':44s} {baseline:8.1f} MB")
    for label, peak, growth in rows:
        ok = "ok" if peak < TARGET_MB else "ABOVE TARGET"
        print(f"{label:44s} {peak:8.1f} MB {growth:+8.1f} MB   {ok}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb-file", type=int, default=200, help="download/upload size (MB)")
    parser.add_argument("--mb-output", type=int, default=250, help="unpolled output (MB)")
    parser.add_argument(
        "--flush-mb", type=int, default=0,
        help="(c): the cell also flushes stdout every this many MB (default 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--unbounded", action="store_true",
        help="(c): the cell first undoes the server's bound on its stream messages",
    )  # fmt: skip
    args = parser.parse_args()
    return asyncio.run(amain(args.mb_file, args.mb_output, args.flush_mb, args.unbounded))


if __name__ == "__main__":
    raise SystemExit(main())
