"""Latency of the remote kernel against a local ipykernel, both started through jupyter_client.

    python benchmarks/kernel_latency.py [--runs 30] [--lines 100000] [--local-kernel python3]

Starts a throwaway ``remote-kernel serve`` on loopback, installs a temporary kernelspec for it,
and measures on both kernels:

* trivial cell: median time of ``1+1`` (request sent -> reply and idle received) over N runs;
* bulk output: ``for i in range(100000): print(i)`` until the reply and every line arrived;
* streaming lag: a cell prints ``time.time()`` every 100 ms for 3 s; lag = receive time - stamp
  (median and p90), i.e. how late output shows up while a cell is still running.

Targets (printed, not asserted): trivial <= 1.5x local, 100k lines <= 1.5x local,
lag median <= 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.manager import start_new_kernel
from stats import percentile  # benchmarks/stats.py

from remote_kernel.demo import DemoServer
from remote_kernel.kernelspec import install

REMOTE_SPEC = "remote-python-bench"
FLOOR_SPEC = "answer-at-once-bench"
#: A kernel that does nothing: what any ipykernel-based wrapper costs per cell, before its work.
FLOOR_KERNEL = """\
from ipykernel.kernelbase import Kernel
from ipykernel.kernelapp import IPKernelApp

class AnswerAtOnce(Kernel):
    implementation = "answer-at-once"
    implementation_version = "1"
    banner = ""
    language_info = {"name": "python", "mimetype": "text/x-python", "file_extension": ".py"}

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, **kw):
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

IPKernelApp.launch_instance(kernel_class=AnswerAtOnce)
"""
LAG_CODE = """\
import sys, time
for _ in range(30):
    print(repr(time.time()), flush=True)
    time.sleep(0.1)
"""


def run_cell(kc: Any, code: str, hook: Callable[[dict[str, Any]], None] | None = None) -> float:
    """Seconds from sending ``code`` until its reply and the idle status both arrived."""
    t0 = time.perf_counter()
    reply = kc.execute_interactive(code, output_hook=hook or (lambda msg: None), timeout=300)
    elapsed = time.perf_counter() - t0
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {reply['content']}")
    return elapsed


def measure(kernel_name: str, runs: int, lines: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=120)
    startup = time.perf_counter() - t0
    try:
        for _ in range(3):  # warm up (remote: session creation, first round trips)
            run_cell(kc, "1+1")
        trivial = [run_cell(kc, "1+1") for _ in range(runs)]

        received: list[str] = []

        def collect(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                received.append(msg["content"]["text"])

        bulk = run_cell(kc, f"for i in range({lines}): print(i)", collect)
        got = "".join(received).splitlines()
        if len(got) != lines or got[-1] != str(lines - 1):
            raise RuntimeError(f"bulk output incomplete: {len(got)} of {lines} lines")

        lags: list[float] = []

        def stamp(msg: dict[str, Any]) -> None:
            now = time.time()
            if msg["msg_type"] == "stream":
                for line in msg["content"]["text"].splitlines():
                    try:
                        lags.append((now - float(line)) * 1000)
                    except ValueError:
                        pass

        run_cell(kc, LAG_CODE, stamp)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    return {
        "startup": startup,
        "trivial": statistics.median(trivial) * 1000,
        "trivial_p90": percentile(trivial, 0.9) * 1000,
        "bulk": bulk,
        "lag_median": statistics.median(lags) if lags else float("nan"),
        "lag_p90": percentile(lags, 0.9),
        "lag_n": len(lags),
    }


def floor_trivial(workdir: Path, prefix: Path, runs: int) -> float:
    """Median trivial-cell time (ms) of a wrapper kernel that answers at once."""
    from jupyter_client.kernelspec import KernelSpecManager

    src = workdir / "floor"
    src.mkdir()
    (src / "answer_at_once.py").write_text(FLOOR_KERNEL)
    spec = {"argv": [sys.executable, str(src / "answer_at_once.py"), "-f", "{connection_file}"],
            "display_name": "answer at once", "language": "python"}  # fmt: skip
    (src / "kernel.json").write_text(json.dumps(spec))
    KernelSpecManager().install_kernel_spec(str(src), FLOOR_SPEC, prefix=str(prefix))
    km, kc = start_new_kernel(kernel_name=FLOOR_SPEC, startup_timeout=60)
    try:
        for _ in range(3):
            run_cell(kc, "1+1")
        return statistics.median(run_cell(kc, "1+1") for _ in range(runs)) * 1000
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--local-kernel", default="python3")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `remote-kernel serve` argument"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rk-bench-"))
    server = DemoServer(workdir, args.server_arg)
    try:
        server.start(timeout=60)
        prefix = workdir / "prefix"
        install(kernel_name=REMOTE_SPEC, prefix=str(prefix), endpoint=server.endpoint)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p
        )
        os.environ["BACKEND_ENDPOINT"] = server.endpoint
        os.environ["BACKEND_ACCESS_KEY"] = server.access_key
        os.environ["BACKEND_SECRET_KEY"] = server.secret_key
        print(f"server {server.endpoint}; {args.runs} trivial runs; {args.lines} lines", flush=True)
        local = measure(args.local_kernel, args.runs, args.lines)
        print(f"local  ({args.local_kernel}) done", flush=True)
        remote = measure(REMOTE_SPEC, args.runs, args.lines)
        print("remote done", flush=True)
        floor = floor_trivial(workdir, prefix, args.runs)
        print("answer-at-once kernel done\n", flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def ratio(key: str) -> str:
        return f"{remote[key] / local[key]:5.2f}x" if local[key] else "   n/a"

    rows = [
        ("kernel startup (s)", "startup", "{:9.2f}", None),
        ("trivial cell median (ms)", "trivial", "{:9.2f}", "<= 1.5x"),
        ("trivial cell p90 (ms)", "trivial_p90", "{:9.2f}", None),
        (f"{args.lines} lines (s)", "bulk", "{:9.2f}", "<= 1.5x"),
        ("stream lag median (ms)", "lag_median", "{:9.1f}", "<= 30 ms"),
        ("stream lag p90 (ms)", "lag_p90", "{:9.1f}", None),
    ]
    print(f"{'':28}{'local':>9}  {'remote':>9}  {'ratio':>6}  target")
    for label, key, fmt, target in rows:
        print(
            f"{label:28}{fmt.format(local[key])}  {fmt.format(remote[key])}  {ratio(key)}  "
            f"{target or ''}"
        )
    checks = {
        "trivial": remote["trivial"] <= 1.5 * local["trivial"],
        "100k lines": remote["bulk"] <= 1.5 * local["bulk"],
        "lag median": remote["lag_median"] <= 30,
    }
    print("\n" + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in checks.items()))
    print(f"(lag samples: local {local['lag_n']}, remote {remote['lag_n']})")
    least = floor + local["trivial"]
    print(
        f"\nWhere a trivial cell's time goes: a wrapper kernel that answers at once costs "
        f"{floor:.2f} ms per cell; the remote cell itself is a local kernel's "
        f"{local['trivial']:.2f} ms; so no ipykernel-based proxy can take less than about "
        f"{least:.2f} ms ({least / local['trivial']:.2f}x). The remote kernel took "
        f"{remote['trivial']:.2f} ms: {remote['trivial'] - least:.2f} ms more (HTTP, signing, "
        "the server)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
